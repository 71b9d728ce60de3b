"""Python SDK of the HTTP API (httpx): submit jobs, batches and workflows, wait for them, fetch results.

    from orchestrator.client import Client

    with Client("https://audio.example.com", api_key="aok_...") as client:
        job = client.submit({"task": "text_to_audio", "prompt": "rain on a tin roof"})
        done = client.wait(job["job_id"], timeout_s=600)
        client.download(job["job_id"], "rain.wav")

        # a workflow: understand, then generate from the answer
        wf = client.submit_workflow([
            {"id": "describe", "task": "understand", "prompt": "Describe this scene.",
             "input_audio_uri": "s3://bucket/acme/inputs/clip.wav"},
            {"id": "score", "task": "text_to_music", "prompt": "music for: {{describe.text}}"},
        ])
        done = client.wait_workflow(wf["workflow_id"], timeout_s=900)
        client.download(done["steps"][-1]["job_id"], "score.wav")

`submit` of a job the system runs as a built-in chain (`reasoning: true`, or voice conversion from
source speech without a transcript) returns that workflow (it has `workflow_id` and `steps`).

Responses are the API's JSON objects as dicts (see `orchestrator.api` for their fields). An error
response raises `ApiError` (`orchestrator.api_errors`, the class the server raises too) carrying the
status, the error code, message, field and details. A 429 is
retried after its `Retry-After` (up to `max_retries` times) before it is raised.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from orchestrator.api_errors import ApiError
from orchestrator.jobs import FINAL_STATUSES, JobSpec
from orchestrator.workflows import WorkflowSpec

__all__ = ["ApiError", "Client", "JobFailed", "WaitTimeout", "WorkflowFailed"]

_FINAL = frozenset(s.value for s in FINAL_STATUSES)
_WORKFLOW_FINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_RETRY_AFTER_S = 60.0


class WaitTimeout(TimeoutError):
    """`wait` ran out of time before the job (or batch) finished."""


class JobFailed(Exception):
    """Raised by `wait(..., raise_on_failure=True)` for a job that ended other than succeeded."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        super().__init__(f"job {job.get('job_id')} ended {job.get('status')}: {job.get('error')}")
        self.job = dict(job)


class WorkflowFailed(Exception):
    """Raised by `wait_workflow(..., raise_on_failure=True)` for a workflow that did not succeed."""

    def __init__(self, workflow: Mapping[str, Any]) -> None:
        step = workflow.get("failed_step")
        where = f" at step {step!r}" if step else ""
        reason = f": {workflow.get('error')}" if workflow.get("error") else ""
        super().__init__(f"workflow {workflow.get('workflow_id')} ended {workflow.get('status')}{where}{reason}")
        self.workflow = dict(workflow)


def _workflow_json(
    workflow: WorkflowSpec | Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The request body of a workflow given as a `WorkflowSpec`, a `{"steps": [...]}` mapping or
    the list of steps itself."""
    if isinstance(workflow, WorkflowSpec):
        return workflow.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if isinstance(workflow, Mapping):
        return dict(workflow)
    if isinstance(workflow, Sequence) and not isinstance(workflow, str | bytes):
        return {"steps": [dict(step) for step in workflow]}
    raise ValueError(
        f"workflow of type {type(workflow).__name__} is invalid: expected a WorkflowSpec, "
        'a mapping {"steps": [...]} or a list of steps'
    )


def _spec_json(spec: JobSpec | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, JobSpec):
        return spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if not isinstance(spec, Mapping):
        raise ValueError(f"spec of type {type(spec).__name__} is invalid: expected a JobSpec or a mapping")
    return dict(spec)


class Client:
    """A client of one API deployment with one API key. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} is invalid: expected an http:// or https:// URL")
        if not isinstance(api_key, str) or not api_key or any(c.isspace() for c in api_key):
            raise ValueError("api_key is invalid: expected a non-empty key without whitespace")
        if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 3600:
            raise ValueError(f"timeout_s {timeout_s!r} is invalid: expected seconds in (0, 3600]")
        if not isinstance(max_retries, int) or not 0 <= max_retries <= 20:
            raise ValueError(f"max_retries {max_retries!r} is invalid: expected an integer in [0, 20]")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "audio-omni-client/1"},
            timeout=timeout_s,
            transport=transport,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client from `AUDIO_OMNI_API_URL` and `AUDIO_OMNI_API_KEY`."""
        url, key = os.environ.get("AUDIO_OMNI_API_URL"), os.environ.get("AUDIO_OMNI_API_KEY")
        if not url or not key:
            raise ValueError("set AUDIO_OMNI_API_URL and AUDIO_OMNI_API_KEY")
        return cls(url, key, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- transport

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = self._http.request(method, path, **kwargs)
            if response.status_code < 400:
                return response
            error = _error_of(response)
            if error.status == 429 and attempt < self.max_retries and error.retry_after_s is not None:
                attempt += 1
                time.sleep(min(error.retry_after_s, MAX_RETRY_AFTER_S))
                if "files" in kwargs:  # rewind uploads for the retry
                    for value in kwargs["files"].values():
                        handle = value[1] if isinstance(value, tuple) else value
                        if hasattr(handle, "seek"):
                            handle.seek(0)
                continue
            raise error

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._request(method, path, **kwargs).json()

    # ----------------------------------------------------------------------- jobs

    def submit(self, spec: JobSpec | Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Submit one job (a `JobSpec`, a mapping, or keyword fields) and return it. A job the
        system runs as a built-in chain (`reasoning=True`; voice conversion of `input_audio_uri`
        without a transcript) comes back as its workflow: `{"workflow_id", "status", "steps"}`."""
        body = {**(_spec_json(spec) if spec is not None else {}), **fields}
        return self._json("POST", "/v1/jobs", json=body)

    def submit_batch(
        self,
        specs: Iterable[JobSpec | WorkflowSpec | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit many jobs as one batch: `{"batch_id", "total", "job_ids", "workflows"}`. An item
        may be a workflow (`{"steps": [...]}` or a `WorkflowSpec`); `total` and `job_ids` count its
        steps, `workflows` lists each one's `index`, `workflow_id` and step `job_ids`. With an
        `idempotency_key`, sending the same batch again returns the first one."""
        jobs = [_workflow_json(s) if isinstance(s, WorkflowSpec) else _spec_json(s) for s in specs]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json("POST", "/v1/batches", json={"jobs": jobs}, headers=headers)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job as the API reports it (status, stage, attempts, error, text, ...)."""
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}")

    def batch_status(self, batch_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """Counts by status and the page `[offset, offset + limit)` of failed jobs."""
        return self._json("GET", f"/v1/batches/{_segment(batch_id)}", params={"offset": offset, "limit": limit})

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: `{"job_id", "status", "cancel_requested"}`."""
        return self._json("DELETE", f"/v1/jobs/{_segment(job_id)}")

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        poll_s: float = 1.0,
        raise_on_failure: bool = False,
    ) -> dict[str, Any]:
        """Poll until the job is final (succeeded, failed, cancelled, dead) and return it.
        Raises `WaitTimeout`; with `raise_on_failure`, `JobFailed` for anything but success."""
        job = _poll(
            lambda: self.status(job_id),
            lambda j: j["status"] in _FINAL,
            lambda j: f"job {job_id} still {j['status']} after {timeout_s:g} s",
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
        if raise_on_failure and job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    def wait_batch(self, batch_id: str, *, timeout_s: float = 3600.0, poll_s: float = 2.0) -> dict[str, Any]:
        """Poll until every job of the batch is final and return the batch status."""
        return _poll(
            lambda: self.batch_status(batch_id),
            lambda b: bool(b["done"]),
            lambda b: f"batch {batch_id} has {b['finished']}/{b['total']} jobs finished",
            timeout_s=timeout_s,
            poll_s=poll_s,
        )

    # ----------------------------------------------------------------------- workflows

    def submit_workflow(
        self,
        workflow: WorkflowSpec | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a workflow (a `WorkflowSpec`, `{"steps": [...], ...}`, or the list of steps) and
        return it: `{"workflow_id", "status", "steps": [{"id", "job_id", "status", ...}]}`. Each
        step is a job spec with an `id`; a later step uses an earlier one's output as
        `{{<id>.text}}` in a text field or `{{<id>.audio}}` as an input URI. With an
        `idempotency_key`, sending it again returns the first workflow."""
        body = _workflow_json(workflow)
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return self._json("POST", "/v1/workflows", json=body)

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        """The workflow's `status` (queued, running, succeeded, failed, cancelled) and per step its
        `id`, `task`, `job_id`, `status`, `text`, `result_available` and `error`."""
        return self._json("GET", f"/v1/workflows/{_segment(workflow_id)}")

    def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Cancel every step that has not finished (a running one stops at its next stage); returns
        the workflow."""
        return self._json("DELETE", f"/v1/workflows/{_segment(workflow_id)}")

    def wait_workflow(
        self,
        workflow_id: str,
        *,
        timeout_s: float = 1800.0,
        poll_s: float = 1.0,
        raise_on_failure: bool = False,
    ) -> dict[str, Any]:
        """Poll until the workflow has ended (succeeded, failed or cancelled) and none of its steps
        is still running, and return it. Raises `WaitTimeout`; with `raise_on_failure`,
        `WorkflowFailed` for anything but success. A step's result: `download(step["job_id"], ...)`."""

        def finished(steps: list[dict[str, Any]]) -> int:
            return sum(1 for step in steps if step.get("status") in _FINAL)

        workflow = _poll(
            lambda: self.workflow(workflow_id),
            lambda w: w["status"] in _WORKFLOW_FINAL and finished(w.get("steps", [])) == len(w.get("steps", [])),
            lambda w: (
                f"workflow {workflow_id} still {w['status']} after {timeout_s:g} s "
                f"({finished(w.get('steps', []))}/{len(w.get('steps', []))} steps finished)"
            ),
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
        if raise_on_failure and workflow["status"] != "succeeded":
            raise WorkflowFailed(workflow)
        return workflow

    # ----------------------------------------------------------------------- results and inputs

    def result(self, job_id: str) -> dict[str, Any]:
        """Where to fetch the result: `{"url", "expires_s", "content_type", "sha256", ...}` (service
        mode). Embedded-mode servers return the bytes instead; use `download` for both."""
        response = self._request("GET", f"/v1/jobs/{_segment(job_id)}/result")
        if not response.headers.get("content-type", "").startswith("application/json"):
            raise ApiError(response.status_code, "not_json", "the server returned the result bytes; use download()")
        return response.json()

    def download(self, job_id: str, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """Write the job's result to `dest` (a path or a binary file); returns the bytes written.
        Follows the presigned URL in service mode (without sending the API key there). A workflow
        step's result is its job's: pass the step's `job_id`."""
        response = self._request("GET", f"/v1/jobs/{_segment(job_id)}/result")
        if response.headers.get("content-type", "").startswith("application/json"):
            url = response.json()["url"]
            with httpx.stream("GET", url, timeout=self._http.timeout) as remote:
                if remote.status_code != 200:
                    raise ApiError(
                        remote.status_code, "download_failed", f"fetching the result URL: {remote.text[:200]}"
                    )
                return _write(dest, remote.iter_bytes())
        return _write(dest, iter([response.content]))

    def upload(self, source: str | os.PathLike[str] | bytes, *, filename: str | None = None) -> dict[str, Any]:
        """Upload a WAV/FLAC input; returns `{"uri", "upload_id", "duration_s", ...}`."""
        if isinstance(source, bytes | bytearray):
            data, name = bytes(source), filename or "input.wav"
        else:
            path = Path(source)
            data, name = path.read_bytes(), filename or path.name
        return self._json("POST", "/v1/uploads", files={"file": (name, data, "application/octet-stream")})

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")


def _segment(value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise ValueError(f"id {value!r} is invalid: expected a non-empty id without '/'")
    return value


def _poll(
    fetch: Callable[[], dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
    still: Callable[[dict[str, Any]], str],
    *,
    timeout_s: float,
    poll_s: float,
) -> dict[str, Any]:
    """`fetch()` until `done` says so (quick first polls, then every `poll_s`); `WaitTimeout` with
    `still(last)` once `timeout_s` has passed."""
    deadline = time.monotonic() + _positive("timeout_s", timeout_s)
    delay = min(_positive("poll_s", poll_s), 0.1)
    while True:
        current = fetch()
        if done(current):
            return current
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(still(current))
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, poll_s)


def _positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} {value!r} is invalid: expected a number of seconds > 0")
    return float(value)


def _write(dest: str | os.PathLike[str] | BinaryIO, chunks: Iterable[bytes]) -> int:
    written = 0
    if not isinstance(dest, str | os.PathLike):  # an open binary file
        for chunk in chunks:
            dest.write(chunk)
            written += len(chunk)
        return written
    path = Path(dest)
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            written += len(chunk)
    tmp.replace(path)  # no half-written file under the final name
    return written


def _error_of(response: httpx.Response) -> ApiError:
    retry_after = response.headers.get("retry-after")
    try:
        retry_after_s = float(retry_after) if retry_after is not None else None
    except ValueError:
        retry_after_s = None
    try:
        body = response.json()
        error = body["error"]
        return ApiError(
            response.status_code,
            str(error.get("code", "error")),
            str(error.get("message", "")),
            error.get("field"),
            retry_after_s=retry_after_s,
            details=error.get("details") or [],
        )
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return ApiError(response.status_code, "http_error", response.text[:500], retry_after_s=retry_after_s)
