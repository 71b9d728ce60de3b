"""`Client`: the synchronous SDK (httpx.Client). Every method is one `Call` of `orchestrator.sdk.calls`
sent under the client's `RetryPolicy`; `AsyncClient` sends the same calls."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx
from tenacity import Retrying

from orchestrator.api_errors import ApiError
from orchestrator.sdk import calls
from orchestrator.sdk.base import (
    ClientConfig,
    FileSink,
    Poller,
    Wait,
    batch_wait,
    check_digest,
    env_connection,
    job_wait,
    store_error,
    upload_body,
    workflow_wait,
)
from orchestrator.sdk.calls import Call, SpecLike, WorkflowLike
from orchestrator.sdk.errors import JobFailed, WorkflowFailed, error_of
from orchestrator.sdk.models import (
    BatchCreated,
    BatchPage,
    BatchResultLine,
    BatchResultsPage,
    BatchView,
    CancelView,
    DeadLetterPage,
    DeadLetterView,
    DeliveryPage,
    HealthView,
    JobPage,
    JobView,
    Paged,
    ResultView,
    UploadView,
    VideoUploadView,
    WorkflowView,
)
from orchestrator.sdk.retry import RetryPolicy
from orchestrator.workflows import WorkflowSpec

if TYPE_CHECKING:
    from orchestrator.sdk.bulk import RunSummary

__all__ = ["Client"]

T = TypeVar("T")
DOWNLOAD_CHUNK_BYTES = 1 << 20


class Client:
    """A client of one API deployment with one API key. Thread-safe (httpx.Client is).

    `timeout_s` bounds each request; `retry` (a `RetryPolicy`) says what is retried and how long
    to back off; `max_retries` overrides its count. `transport` is passed to httpx (tests, proxies)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig.of(base_url, api_key, timeout_s, max_retries, retry)
        self.base_url = self.config.base_url
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.config.headers, timeout=self.config.timeout_s, transport=transport
        )
        # Presigned result URLs are fetched without the API key (it must not leave for the store).
        self._bare = httpx.Client(timeout=self.config.timeout_s, transport=transport)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client of `AUDIO_OMNI_API_URL` with the key `AUDIO_OMNI_API_KEY`."""
        return cls(*env_connection(), **kwargs)

    @property
    def retry(self) -> RetryPolicy:
        return self.config.retry

    def close(self) -> None:
        self._http.close()
        self._bare.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- sending

    def _once(self, call: Call[T]) -> T:
        response = self._http.request(call.method, call.path, **call.request_kwargs())
        if response.status_code >= 400:
            raise error_of(response)
        return call.parse(response)

    def run(self, call: Call[T], *, retry: RetryPolicy | None = None) -> T:
        """Send one `Call` under `retry` (default: the client's policy) and return its parsed response."""
        return self._retrying(lambda: self._once(call), idempotent=call.idempotent, retry=retry)

    def _retrying(self, fn: Callable[[], T], *, idempotent: bool, retry: RetryPolicy | None = None) -> T:
        return Retrying(**(retry or self.retry).tenacity_kwargs(idempotent=idempotent))(fn)

    def _pages(self, make: Callable[[str | None], Call[Paged[T]]]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self.run(make(cursor))
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def _poll(self, fetch: Callable[[], T], wait: Wait[T], timeout_s: float, poll_s: float) -> T:
        poller = Poller(timeout_s, poll_s)
        while True:
            current = fetch()
            if wait.done(current):
                return current
            time.sleep(poller.next_delay(wait, current))

    # ----------------------------------------------------------------------- jobs

    def submit(self, spec: SpecLike | None = None, **fields: Any) -> JobView | WorkflowView:
        """Submit one job (a `JobSpec`, a mapping, or keyword fields). Returns its `JobView` (201
        new, 200 an earlier job with the same `idempotency_key`); a job the system runs as a
        built-in chain (`reasoning=True`; voice conversion of `input_audio_uri` without a
        transcript) returns its `WorkflowView`. Without an `idempotency_key` the SDK sends a fresh
        one, so its own retries never queue the job twice."""
        return self.run(calls.submit(spec, fields))

    def submit_batch(
        self, specs: Iterable[SpecLike | WorkflowSpec], *, idempotency_key: str | None = None
    ) -> BatchCreated:
        """Submit many jobs (and workflows: `{"steps": [...]}` or `WorkflowSpec` items) as one
        batch: `BatchCreated` (`batch_id`, `total`, `job_ids`, `workflows`). The same
        `idempotency_key` again returns the first batch (the SDK makes one when none is given)."""
        return self.run(calls.submit_batch(specs, idempotency_key))

    def status(self, job_id: str) -> JobView:
        """The job: status, stage, attempts, error and `error_code`, text answer, metadata."""
        return self.run(calls.status(job_id))

    def cancel(self, job_id: str) -> CancelView:
        """Cancel a job: a queued one at once (`cancelled`), a running one at its next stage
        (`running`, `cancel_requested`). A finished job is a 409 `ApiError`."""
        return self.run(calls.cancel(job_id))

    def batch_status(self, batch_id: str, *, offset: int = 0, limit: int = 100) -> BatchView:
        """Counts by status and the page `[offset, offset + limit)` of failed jobs."""
        return self.run(calls.batch_status(batch_id, offset, limit))

    def jobs(
        self,
        *,
        status: str | None = None,
        batch_id: str | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of the tenant's jobs, newest first, filtered by status, batch and submission
        time (unix seconds); `iter_jobs` follows the cursor for you."""
        return self.run(calls.jobs(status, batch_id, created_after, limit, cursor))

    def iter_jobs(
        self,
        *,
        status: str | None = None,
        batch_id: str | None = None,
        created_after: float | None = None,
        page_size: int = 200,
    ) -> Iterator[JobView]:
        """Every matching job, newest first, fetched a page at a time."""
        return self._pages(lambda cursor: calls.jobs(status, batch_id, created_after, page_size, cursor))

    def batches(self, *, created_after: float | None = None, limit: int = 50, cursor: str | None = None) -> BatchPage:
        """One page of the tenant's batches, newest first."""
        return self.run(calls.batches(created_after, limit, cursor))

    def iter_batches(self, *, created_after: float | None = None, page_size: int = 200) -> Iterator[BatchView]:
        return self._pages(lambda cursor: calls.batches(created_after, page_size, cursor))

    def batch_results(self, batch_id: str, *, limit: int = 100, cursor: str | None = None) -> BatchResultsPage:
        """One page of a batch's per-job results in batch order (status, custom_id, metadata,
        result URL, text, error, error_code)."""
        return self.run(calls.batch_results(batch_id, limit, cursor))

    def iter_batch_results(self, batch_id: str, *, page_size: int = 1000) -> Iterator[BatchResultLine]:
        return self._pages(lambda cursor: calls.batch_results(batch_id, page_size, cursor))

    def batch_report(self, batch_id: str, dest: str | os.PathLike[str], *, max_jobs: int = 500) -> Path:
        """Save the batch's report (one self-contained HTML page: players, spectrograms, timings,
        errors; `max_jobs` shown in full) as `dest`."""
        path = Path(dest)
        path.write_bytes(self.run(calls.batch_report(batch_id, max_jobs)))
        return path

    def wait(
        self, job_id: str, *, timeout_s: float = 600.0, poll_s: float = 1.0, raise_on_failure: bool = False
    ) -> JobView:
        """Poll until the job is final (succeeded, failed, cancelled, dead) and return it. Raises
        `WaitTimeout`; with `raise_on_failure`, `JobFailed` for anything but success."""
        job = self._poll(lambda: self.status(job_id), job_wait(job_id, timeout_s), timeout_s, poll_s)
        if raise_on_failure and job.status.value != "succeeded":
            raise JobFailed(job)
        return job

    def wait_batch(self, batch_id: str, *, timeout_s: float = 3600.0, poll_s: float = 2.0) -> BatchView:
        """Poll until every job of the batch is final and return the batch."""
        return self._poll(lambda: self.batch_status(batch_id), batch_wait(batch_id), timeout_s, poll_s)

    # ----------------------------------------------------------------------- workflows

    def submit_workflow(self, workflow: WorkflowLike, *, idempotency_key: str | None = None) -> WorkflowView:
        """Submit a workflow (a `WorkflowSpec`, `{"steps": [...], ...}` or the list of steps). A
        later step uses an earlier one's output as `{{<id>.text}}` or `{{<id>.audio}}`."""
        return self.run(calls.submit_workflow(workflow, idempotency_key))

    def workflow(self, workflow_id: str) -> WorkflowView:
        """The workflow's status and every step's (`id`, `task`, `job_id`, `status`, `text`, ...)."""
        return self.run(calls.workflow(workflow_id))

    def cancel_workflow(self, workflow_id: str) -> WorkflowView:
        """Cancel every step that has not finished (a running one stops at its next stage)."""
        return self.run(calls.cancel_workflow(workflow_id))

    def wait_workflow(
        self, workflow_id: str, *, timeout_s: float = 1800.0, poll_s: float = 1.0, raise_on_failure: bool = False
    ) -> WorkflowView:
        """Poll until the workflow has ended and none of its steps still runs. Raises
        `WaitTimeout`; with `raise_on_failure`, `WorkflowFailed` for anything but success."""
        wf = self._poll(lambda: self.workflow(workflow_id), workflow_wait(workflow_id, timeout_s), timeout_s, poll_s)
        if raise_on_failure and wf.status.value != "succeeded":
            raise WorkflowFailed(wf)
        return wf

    # ----------------------------------------------------------------------- results and inputs

    def result(self, job_id: str) -> ResultView:
        """Where to fetch the result (service mode): presigned `url`, `sha256`, `size_bytes`, ... An
        embedded-mode server sends the bytes instead: use `download` or `save_result` for both."""
        view = calls.result_view(self.run(calls.result(job_id)))
        if view is None:
            raise ApiError(406, "not_json", "the server returned the result bytes; use download()")
        return view

    def download(self, job_id: str, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """Write the job's result to `dest` (a path or a binary file) and return the bytes written.
        Follows the presigned URL (without the API key) and checks its sha256; a dropped transfer
        is retried from the start. A workflow step's result is its job's: pass the step's `job_id`."""
        return self._fetch(job_id, lambda suffix: dest)[1]

    def save_result(self, job_id: str, directory: str | os.PathLike[str], *, stem: str | None = None) -> Path:
        """Download the result into `directory` as `<stem or job_id><extension of the result>`."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path, _ = self._fetch(job_id, lambda suffix: folder / f"{stem or job_id}{suffix}")
        assert isinstance(path, Path)
        return path

    def _fetch(
        self, job_id: str, dest_for: Callable[[str], str | os.PathLike[str] | BinaryIO]
    ) -> tuple[str | os.PathLike[str] | BinaryIO, int]:
        call = calls.result(job_id)
        sinks: dict[str, FileSink] = {}

        def attempt() -> tuple[str | os.PathLike[str] | BinaryIO, int]:
            response = self._once(call)
            view = calls.result_view(response)
            suffix = Path(view.uri).suffix if view is not None else calls.attachment_suffix(response)
            sink = sinks.setdefault(suffix, FileSink(dest_for(suffix)))
            sink.open()
            digest = hashlib.sha256()
            try:
                if view is None:
                    sink.write(response.content)
                else:
                    with self._bare.stream("GET", view.url) as remote:
                        if remote.status_code != 200:
                            remote.read()
                            raise store_error(remote)
                        for chunk in remote.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                            digest.update(chunk)
                            sink.write(chunk)
                    check_digest(view, digest.hexdigest())
            except BaseException:
                sink.abort()
                raise
            return sink.dest, sink.commit()

        return self._retrying(attempt, idempotent=True)

    def upload(
        self, source: str | os.PathLike[str] | bytes, *, filename: str | None = None
    ) -> UploadView | VideoUploadView:
        """Upload a WAV/FLAC or MP4/MOV/MKV/WebM input; returns its view (pass `uri` as a job input)."""
        data, name = upload_body(source, filename)
        return self.run(calls.upload(data, name))

    def run_jsonl(self, path: str | os.PathLike[str], out_dir: str | os.PathLike[str], **options: Any) -> RunSummary:
        """Run a whole JSONL manifest and collect its results in `out_dir` (resumable): see
        `orchestrator.sdk.bulk.run_jsonl` for the options."""
        from orchestrator.sdk.bulk import run_jsonl

        return run_jsonl(self, path, out_dir, **options)

    # ----------------------------------------------------------------------- operators and webhooks

    def dead_letters(self, *, limit: int = 100, cursor: str | None = None) -> DeadLetterPage:
        """One page of dead-lettered jobs (operator keys only: a 403 `forbidden` otherwise)."""
        return self.run(calls.dead_letters(limit, cursor))

    def iter_dead_letters(self, *, page_size: int = 500) -> Iterator[DeadLetterView]:
        return self._pages(lambda cursor: calls.dead_letters(page_size, cursor))

    def requeue_dead_letter(self, job_id: str) -> JobView:
        """Queue a dead-lettered job again with its attempts reset (operator keys only)."""
        return self.run(calls.requeue_dead_letter(job_id))

    def webhook_deliveries(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DeliveryPage:
        """One page of the tenant's webhook deliveries (pending, delivered or failed)."""
        return self.run(calls.webhook_deliveries(status, limit, cursor))

    def health(self) -> HealthView:
        return self.run(calls.health())
