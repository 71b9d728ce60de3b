"""Every API operation once, as a `Call`: the request to send and how to read its response.

`Client` (sync) and `AsyncClient` (async) send the same `Call`s under the same `RetryPolicy`; only
the sending differs. A builder checks its arguments before anything is sent, so a bad id or limit
is a `ValueError` naming it, not a round trip.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

from orchestrator.jobs import JobSpec
from orchestrator.sdk.models import (
    BatchCreated,
    BatchPage,
    BatchResultLine,
    BatchResultsPage,
    BatchView,
    CancelView,
    DeadLetterPage,
    DeliveryPage,
    HealthView,
    JobPage,
    JobView,
    ResultView,
    UploadView,
    VideoUploadView,
    WorkflowView,
)
from orchestrator.workflows import WorkflowSpec

__all__ = ["Call"]

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)
WorkflowLike = WorkflowSpec | Mapping[str, Any] | Sequence[Mapping[str, Any]]
SpecLike = JobSpec | Mapping[str, Any]

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "dead")
DELIVERY_STATUSES = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class Call(Generic[R_co]):
    """One request (`method`, `path`, query `params`, `json` body or multipart `files`, extra
    `headers`) and `parse`, which turns its successful response into the return value.
    `idempotent`: sending it twice does no more than once (see `RetryPolicy`)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], R_co]
    params: dict[str, Any] | None = None
    json: Any = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.params:
            kwargs["params"] = {k: v for k, v in self.params.items() if v is not None}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.files is not None:
            kwargs["files"] = self.files
        if self.headers:
            kwargs["headers"] = self.headers
        return kwargs


# --------------------------------------------------------------------------- parsers


def _model(model: type[T]) -> Callable[[httpx.Response], T]:
    adapter = TypeAdapter(model)
    return lambda response: adapter.validate_python(response.json())


def _job_or_workflow(response: httpx.Response) -> JobView | WorkflowView:
    body = response.json()
    return WorkflowView.model_validate(body) if "workflow_id" in body else JobView.model_validate(body)


def _result_lines(response: httpx.Response) -> BatchResultsPage:
    items = [BatchResultLine.model_validate_json(line) for line in response.text.splitlines() if line.strip()]
    return BatchResultsPage(items=items, next_cursor=response.headers.get("x-next-cursor") or None)


# --------------------------------------------------------------------------- argument checks


def segment(value: str, what: str = "id") -> str:
    """An id as one URL path segment."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", "..") or value != value.strip():
        raise ValueError(f"{what} {value!r} is invalid: expected a non-empty id without '/' or surrounding spaces")
    return value


def _limit(limit: int, top: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= top:
        raise ValueError(f"limit {limit!r} is invalid: expected an integer in [1, {top}]")
    return limit


def _choice(name: str, value: str | None, allowed: Sequence[str]) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} {value!r} is invalid: expected one of {', '.join(allowed)}")
    return value


def spec_json(spec: SpecLike) -> dict[str, Any]:
    if isinstance(spec, JobSpec):
        return spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if not isinstance(spec, Mapping):
        raise ValueError(f"spec of type {type(spec).__name__} is invalid: expected a JobSpec or a mapping")
    return dict(spec)


def workflow_json(workflow: WorkflowLike) -> dict[str, Any]:
    """The body of a workflow given as a `WorkflowSpec`, a `{"steps": [...]}` mapping or the steps."""
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


def new_idempotency_key() -> str:
    """A fresh key for a submission the caller gave none: it makes the SDK's own retries safe."""
    return f"sdk-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- operations


def submit(spec: SpecLike | None, fields: Mapping[str, Any]) -> Call[JobView | WorkflowView]:
    body = {**(spec_json(spec) if spec is not None else {}), **fields}
    body.setdefault("idempotency_key", new_idempotency_key())
    return Call("POST", "/v1/jobs", _job_or_workflow, json=body)


def submit_batch(specs: Iterable[SpecLike | WorkflowSpec], idempotency_key: str | None) -> Call[BatchCreated]:
    jobs = [workflow_json(s) if isinstance(s, WorkflowSpec) else spec_json(s) for s in specs]
    if not jobs:
        raise ValueError("a batch needs at least one job")
    key = idempotency_key if idempotency_key is not None else new_idempotency_key()
    return Call("POST", "/v1/batches", _model(BatchCreated), json={"jobs": jobs}, headers={"Idempotency-Key": key})


def submit_workflow(workflow: WorkflowLike, idempotency_key: str | None) -> Call[WorkflowView]:
    body = workflow_json(workflow)
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    body.setdefault("idempotency_key", new_idempotency_key())
    return Call("POST", "/v1/workflows", _model(WorkflowView), json=body)


def status(job_id: str) -> Call[JobView]:
    return Call("GET", f"/v1/jobs/{segment(job_id, 'job_id')}", _model(JobView))


def cancel(job_id: str) -> Call[CancelView]:
    return Call("DELETE", f"/v1/jobs/{segment(job_id, 'job_id')}", _model(CancelView))


def batch_status(batch_id: str, offset: int, limit: int) -> Call[BatchView]:
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset {offset!r} is invalid: expected an integer >= 0")
    params = {"offset": offset, "limit": _limit(limit, 1000)}
    return Call("GET", f"/v1/batches/{segment(batch_id, 'batch_id')}", _model(BatchView), params=params)


def jobs(
    status: str | None, batch_id: str | None, created_after: float | None, limit: int, cursor: str | None
) -> Call[JobPage]:
    params = {
        "status": _choice("status", status, JOB_STATUSES),
        "batch_id": None if batch_id is None else segment(batch_id, "batch_id"),
        "created_after": created_after,
        "limit": _limit(limit, 200),
        "cursor": cursor,
    }
    return Call("GET", "/v1/jobs", _model(JobPage), params=params)


def batches(created_after: float | None, limit: int, cursor: str | None) -> Call[BatchPage]:
    params = {"created_after": created_after, "limit": _limit(limit, 200), "cursor": cursor}
    return Call("GET", "/v1/batches", _model(BatchPage), params=params)


def batch_results(batch_id: str, limit: int, cursor: str | None) -> Call[BatchResultsPage]:
    params = {"limit": _limit(limit, 1000), "cursor": cursor}
    return Call("GET", f"/v1/batches/{segment(batch_id, 'batch_id')}/results", _result_lines, params=params)


def batch_report(batch_id: str, max_jobs: int) -> Call[bytes]:
    """The batch's self-contained HTML report page."""
    params = {"max_jobs": _limit(max_jobs, 2000)}
    return Call("GET", f"/v1/batches/{segment(batch_id, 'batch_id')}/report", lambda r: r.content, params=params)


def workflow(workflow_id: str) -> Call[WorkflowView]:
    return Call("GET", f"/v1/workflows/{segment(workflow_id, 'workflow_id')}", _model(WorkflowView))


def cancel_workflow(workflow_id: str) -> Call[WorkflowView]:
    return Call("DELETE", f"/v1/workflows/{segment(workflow_id, 'workflow_id')}", _model(WorkflowView))


def result(job_id: str) -> Call[httpx.Response]:
    """The result endpoint's raw response: a `ResultView` JSON (service mode) or the bytes."""
    return Call("GET", f"/v1/jobs/{segment(job_id, 'job_id')}/result", lambda response: response)


def upload(data: bytes, filename: str) -> Call[UploadView | VideoUploadView]:
    files = {"file": (filename, data, "application/octet-stream")}
    parse = TypeAdapter(UploadView | VideoUploadView)  # an audio or a video upload's view
    # a repeat stores a second copy only
    return Call("POST", "/v1/uploads", lambda response: parse.validate_python(response.json()), files=files)


def dead_letters(limit: int, cursor: str | None) -> Call[DeadLetterPage]:
    params = {"limit": _limit(limit, 500), "cursor": cursor}
    return Call("GET", "/v1/admin/dead-letters", _model(DeadLetterPage), params=params)


def requeue_dead_letter(job_id: str) -> Call[JobView]:
    path = f"/v1/admin/dead-letters/{segment(job_id, 'job_id')}/requeue"
    return Call("POST", path, _model(JobView), idempotent=False)  # a repeat after success is a 404


def webhook_deliveries(status: str | None, limit: int, cursor: str | None) -> Call[DeliveryPage]:
    params = {"status": _choice("status", status, DELIVERY_STATUSES), "limit": _limit(limit, 200), "cursor": cursor}
    return Call("GET", "/v1/webhooks/deliveries", _model(DeliveryPage), params=params)


def health() -> Call[HealthView]:
    return Call("GET", "/healthz", _model(HealthView))


def result_view(response: httpx.Response) -> ResultView | None:
    """The `ResultView` of a result response, or None when the response is the bytes themselves."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return ResultView.model_validate(json.loads(response.content))
    return None


def attachment_suffix(response: httpx.Response) -> str:
    """The file extension of a result served as bytes (its Content-Disposition name), e.g. `.wav`."""
    disposition = response.headers.get("content-disposition", "")
    name = disposition.rpartition("filename=")[2].strip().strip('"')
    dot = name.rfind(".")
    return name[dot:] if dot > 0 and "/" not in name[dot:] else ""
