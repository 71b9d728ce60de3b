"""`AsyncClient`: the SDK on asyncio (httpx.AsyncClient), with `Client`'s methods as coroutines
(`iter_*` as async iterators). It sends the same `Call`s (`orchestrator.sdk.calls`) under the same
`RetryPolicy`; see `Client` for what each method returns."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx
from tenacity import AsyncRetrying

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

__all__ = ["AsyncClient"]

T = TypeVar("T")
DOWNLOAD_CHUNK_BYTES = 1 << 20
Dest = str | os.PathLike[str] | BinaryIO


class AsyncClient:
    """`Client` for asyncio: `async with AsyncClient(url, key) as client: job = await client.submit(...)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig.of(base_url, api_key, timeout_s, max_retries, retry)
        self.base_url = self.config.base_url
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.config.headers, timeout=self.config.timeout_s, transport=transport
        )
        self._bare = httpx.AsyncClient(timeout=self.config.timeout_s, transport=transport)

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncClient:
        return cls(*env_connection(), **kwargs)

    @property
    def retry(self) -> RetryPolicy:
        return self.config.retry

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._bare.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------- sending

    async def _once(self, call: Call[T]) -> T:
        response = await self._http.request(call.method, call.path, **call.request_kwargs())
        if response.status_code >= 400:
            raise error_of(response)
        return call.parse(response)

    async def run(self, call: Call[T], *, retry: RetryPolicy | None = None) -> T:
        return await self._retrying(lambda: self._once(call), idempotent=call.idempotent, retry=retry)

    async def _retrying(
        self, fn: Callable[[], Awaitable[T]], *, idempotent: bool, retry: RetryPolicy | None = None
    ) -> T:
        kwargs = (retry or self.retry).tenacity_kwargs(idempotent=idempotent)
        async for attempt in AsyncRetrying(sleep=asyncio.sleep, **kwargs):
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _pages(self, make: Callable[[str | None], Call[Paged[T]]]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self.run(make(cursor))
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def _poll(self, fetch: Callable[[], Awaitable[T]], wait: Wait[T], timeout_s: float, poll_s: float) -> T:
        poller = Poller(timeout_s, poll_s)
        while True:
            current = await fetch()
            if wait.done(current):
                return current
            await asyncio.sleep(poller.next_delay(wait, current))

    # ----------------------------------------------------------------------- jobs

    async def submit(self, spec: SpecLike | None = None, **fields: Any) -> JobView | WorkflowView:
        return await self.run(calls.submit(spec, fields))

    async def submit_batch(
        self, specs: Iterable[SpecLike | WorkflowSpec], *, idempotency_key: str | None = None
    ) -> BatchCreated:
        return await self.run(calls.submit_batch(specs, idempotency_key))

    async def status(self, job_id: str) -> JobView:
        return await self.run(calls.status(job_id))

    async def cancel(self, job_id: str) -> CancelView:
        return await self.run(calls.cancel(job_id))

    async def batch_status(self, batch_id: str, *, offset: int = 0, limit: int = 100) -> BatchView:
        return await self.run(calls.batch_status(batch_id, offset, limit))

    async def jobs(
        self,
        *,
        status: str | None = None,
        batch_id: str | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        return await self.run(calls.jobs(status, batch_id, created_after, limit, cursor))

    def iter_jobs(
        self,
        *,
        status: str | None = None,
        batch_id: str | None = None,
        created_after: float | None = None,
        page_size: int = 200,
    ) -> AsyncIterator[JobView]:
        return self._pages(lambda cursor: calls.jobs(status, batch_id, created_after, page_size, cursor))

    async def batches(
        self, *, created_after: float | None = None, limit: int = 50, cursor: str | None = None
    ) -> BatchPage:
        return await self.run(calls.batches(created_after, limit, cursor))

    def iter_batches(self, *, created_after: float | None = None, page_size: int = 200) -> AsyncIterator[BatchView]:
        return self._pages(lambda cursor: calls.batches(created_after, page_size, cursor))

    async def batch_results(self, batch_id: str, *, limit: int = 100, cursor: str | None = None) -> BatchResultsPage:
        return await self.run(calls.batch_results(batch_id, limit, cursor))

    def iter_batch_results(self, batch_id: str, *, page_size: int = 1000) -> AsyncIterator[BatchResultLine]:
        return self._pages(lambda cursor: calls.batch_results(batch_id, page_size, cursor))

    async def batch_report(self, batch_id: str, dest: str | os.PathLike[str], *, max_jobs: int = 500) -> Path:
        path = Path(dest)
        path.write_bytes(await self.run(calls.batch_report(batch_id, max_jobs)))
        return path

    async def wait(
        self, job_id: str, *, timeout_s: float = 600.0, poll_s: float = 1.0, raise_on_failure: bool = False
    ) -> JobView:
        job = await self._poll(lambda: self.status(job_id), job_wait(job_id, timeout_s), timeout_s, poll_s)
        if raise_on_failure and job.status.value != "succeeded":
            raise JobFailed(job)
        return job

    async def wait_batch(self, batch_id: str, *, timeout_s: float = 3600.0, poll_s: float = 2.0) -> BatchView:
        return await self._poll(lambda: self.batch_status(batch_id), batch_wait(batch_id), timeout_s, poll_s)

    # ----------------------------------------------------------------------- workflows

    async def submit_workflow(self, workflow: WorkflowLike, *, idempotency_key: str | None = None) -> WorkflowView:
        return await self.run(calls.submit_workflow(workflow, idempotency_key))

    async def workflow(self, workflow_id: str) -> WorkflowView:
        return await self.run(calls.workflow(workflow_id))

    async def cancel_workflow(self, workflow_id: str) -> WorkflowView:
        return await self.run(calls.cancel_workflow(workflow_id))

    async def wait_workflow(
        self, workflow_id: str, *, timeout_s: float = 1800.0, poll_s: float = 1.0, raise_on_failure: bool = False
    ) -> WorkflowView:
        wait = workflow_wait(workflow_id, timeout_s)
        wf = await self._poll(lambda: self.workflow(workflow_id), wait, timeout_s, poll_s)
        if raise_on_failure and wf.status.value != "succeeded":
            raise WorkflowFailed(wf)
        return wf

    # ----------------------------------------------------------------------- results and inputs

    async def result(self, job_id: str) -> ResultView:
        view = calls.result_view(await self.run(calls.result(job_id)))
        if view is None:
            raise ApiError(406, "not_json", "the server returned the result bytes; use download()")
        return view

    async def download(self, job_id: str, dest: Dest) -> int:
        return (await self._fetch(job_id, lambda suffix: dest))[1]

    async def save_result(self, job_id: str, directory: str | os.PathLike[str], *, stem: str | None = None) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path, _ = await self._fetch(job_id, lambda suffix: folder / f"{stem or job_id}{suffix}")
        assert isinstance(path, Path)
        return path

    async def _fetch(self, job_id: str, dest_for: Callable[[str], Dest]) -> tuple[Dest, int]:
        call = calls.result(job_id)
        sinks: dict[str, FileSink] = {}

        async def attempt() -> tuple[Dest, int]:
            response = await self._once(call)
            view = calls.result_view(response)
            suffix = Path(view.uri).suffix if view is not None else calls.attachment_suffix(response)
            sink = sinks.setdefault(suffix, FileSink(dest_for(suffix)))
            sink.open()
            digest = hashlib.sha256()
            try:
                if view is None:
                    sink.write(response.content)
                else:
                    async with self._bare.stream("GET", view.url) as remote:
                        if remote.status_code != 200:
                            await remote.aread()
                            raise store_error(remote)
                        async for chunk in remote.aiter_bytes(DOWNLOAD_CHUNK_BYTES):
                            digest.update(chunk)
                            sink.write(chunk)
                    check_digest(view, digest.hexdigest())
            except BaseException:
                sink.abort()
                raise
            return sink.dest, sink.commit()

        return await self._retrying(attempt, idempotent=True)

    async def upload(
        self, source: str | os.PathLike[str] | bytes, *, filename: str | None = None
    ) -> UploadView | VideoUploadView:
        data, name = upload_body(source, filename)
        return await self.run(calls.upload(data, name))

    async def run_jsonl(
        self, path: str | os.PathLike[str], out_dir: str | os.PathLike[str], **options: Any
    ) -> RunSummary:
        """`Client.run_jsonl` on a worker thread, with a `Client` of this one's URL, key and policy."""
        from orchestrator.sdk.bulk import run_jsonl
        from orchestrator.sdk.sync import Client

        def run() -> RunSummary:
            config = self.config
            with Client(config.base_url, config.api_key, timeout_s=config.timeout_s, retry=config.retry) as client:
                return run_jsonl(client, path, out_dir, **options)

        return await asyncio.to_thread(run)

    # ----------------------------------------------------------------------- operators and webhooks

    async def dead_letters(self, *, limit: int = 100, cursor: str | None = None) -> DeadLetterPage:
        return await self.run(calls.dead_letters(limit, cursor))

    def iter_dead_letters(self, *, page_size: int = 500) -> AsyncIterator[DeadLetterView]:
        return self._pages(lambda cursor: calls.dead_letters(page_size, cursor))

    async def requeue_dead_letter(self, job_id: str) -> JobView:
        return await self.run(calls.requeue_dead_letter(job_id))

    async def webhook_deliveries(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DeliveryPage:
        return await self.run(calls.webhook_deliveries(status, limit, cursor))

    async def health(self) -> HealthView:
        return await self.run(calls.health())
