"""Exceptions of the SDK beside `ApiError` (an error response, shared with the server)."""

from __future__ import annotations

import json

import httpx

from orchestrator.api_errors import ApiError
from orchestrator.sdk.models import JobView, WorkflowView

__all__ = ["ApiError", "JobFailed", "WaitTimeout", "WorkflowFailed", "error_of"]


class WaitTimeout(TimeoutError):
    """`wait` ran out of time before the job (or batch, or workflow) finished."""


class JobFailed(Exception):
    """Raised by `wait(..., raise_on_failure=True)` for a job that ended other than succeeded."""

    def __init__(self, job: JobView) -> None:
        error_code = getattr(job, "error_code", None)
        code = f" [{error_code}]" if error_code else ""
        super().__init__(f"job {job.job_id} ended {job.status.value}{code}: {job.error}")
        self.job = job


class WorkflowFailed(Exception):
    """Raised by `wait_workflow(..., raise_on_failure=True)` for a workflow that did not succeed."""

    def __init__(self, workflow: WorkflowView) -> None:
        where = f" at step {workflow.failed_step!r}" if workflow.failed_step else ""
        reason = f": {workflow.error}" if workflow.error else ""
        super().__init__(f"workflow {workflow.workflow_id} ended {workflow.status.value}{where}{reason}")
        self.workflow = workflow


def error_of(response: httpx.Response) -> ApiError:
    """The `ApiError` of an error response (the API's `{"error": {...}}` shape, or any other body)."""
    retry_after = response.headers.get("retry-after")
    try:
        retry_after_s = float(retry_after) if retry_after is not None else None
    except ValueError:  # an HTTP date: not sent by this API; fall back to the backoff
        retry_after_s = None
    try:
        error = response.json()["error"]
        return ApiError(
            response.status_code,
            str(error.get("code", "error")),
            str(error.get("message", "")),
            error.get("field"),
            retry_after_s=retry_after_s,
            details=error.get("details") or [],
            request_id=error.get("request_id") or response.headers.get("x-request-id"),
        )
    except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
        text = response.text[:500] or response.reason_phrase
        return ApiError(response.status_code, "http_error", text, retry_after_s=retry_after_s)
