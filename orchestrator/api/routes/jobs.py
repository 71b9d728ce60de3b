"""Jobs: submit one, read it, cancel it, fetch its result.

POST   /v1/jobs               a `JobSpec` -> 201 the job (200 for an idempotent re-submit); a job
                              that is a built-in chain -> 201 its workflow
GET    /v1/jobs               the caller's jobs, newest first (?status=&batch_id=&created_after=
                              &limit=&cursor=) -> {"items": [...], "next_cursor": ...}
GET    /v1/jobs/{id}          the job's status
DELETE /v1/jobs/{id}          cancel (200 cancelled, 202 cancel requested for a running job)
GET    /v1/jobs/{id}/result   presigned URL (S3), or the bytes themselves (embedded mode)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from orchestrator.api.deps import (
    CurrentTenant,
    JobId,
    OwnJob,
    Services,
    ServicesDep,
    check_spec,
    check_workflow,
    expand,
    queue_job,
    queue_workflow,
)
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.views import CancelView, JobPage, JobView, ResultView, WorkflowView
from orchestrator.api_errors import ApiError
from orchestrator.errors import JobNotFound
from orchestrator.jobs import MAX_BATCH_ID_CHARS, JobSpec, JobStatus, validate_id
from orchestrator.queue import InvalidCursor
from orchestrator.queue.listing import MAX_LIST_LIMIT
from orchestrator.storage import content_type_for
from orchestrator.tenants import Tenant

router = APIRouter(tags=["jobs"])


@router.post(
    "/v1/jobs",
    status_code=201,
    responses={
        200: {"model": JobView | WorkflowView, "description": "an existing job or workflow (same idempotency_key)"},
        **documented(*COMMON_ERRORS, 403, 409, 413, 429),
    },
)
def submit_job(
    spec: JobSpec, tenant: CurrentTenant, services: ServicesDep, response: Response
) -> JobView | WorkflowView:
    """Queue one job. The body is a `JobSpec`; a re-submit with the same `idempotency_key`
    returns the existing job (200) instead of a new one (201).

    A job the system runs as a built-in chain is queued as that workflow and answered with it
    (`workflow_id`, `steps`; `Location: /v1/workflows/{id}`): `reasoning: true` (the thinker first
    rewrites the prompt into a concrete description), and `voice_conversion` with `input_audio_uri`
    and no transcript (the speech is transcribed first)."""
    spec = check_spec(services, tenant, spec)
    workflow = expand(spec)
    if workflow is not None:
        status, created = queue_workflow(services, tenant, check_workflow(services, tenant, workflow))
        if not created:
            response.status_code = 200
        response.headers["Location"] = f"/v1/workflows/{status.workflow_id}"
        return WorkflowView.of(status)
    record, created = queue_job(services, tenant, spec)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{record.job_id}"
    return JobView.of(record)


Cursor = Annotated[str | None, Query(min_length=1, max_length=512, description="the next_cursor of the previous page")]
CreatedAfter = Annotated[
    float | None, Query(ge=0, le=1e11, description="only what was created after this time (Unix seconds)")
]


@router.get("/v1/jobs", responses=documented(*COMMON_ERRORS))
def list_jobs(
    tenant: CurrentTenant,
    services: ServicesDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    batch_id: Annotated[str | None, Query(min_length=1, max_length=64, description="only this batch's jobs")] = None,
    created_after: CreatedAfter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="jobs per page")] = 50,
    cursor: Cursor = None,
) -> JobPage:
    """The caller's jobs, newest first, one page at a time: follow `next_cursor` until it is null.
    A filtered page may hold fewer than `limit` jobs while `next_cursor` is set (each page looks
    at a bounded number of jobs). Jobs are listed until their records expire."""
    if batch_id is not None:
        try:
            validate_id(batch_id, "batch_id", max_chars=MAX_BATCH_ID_CHARS)
        except ValueError as exc:
            raise ApiError(422, "invalid_field", f"batch_id: {exc}", "batch_id") from None
    try:
        records, next_cursor = services.queue.list_jobs(
            tenant.tenant_id, status=status, batch_id=batch_id, created_after=created_after, limit=limit, cursor=cursor
        )
    except InvalidCursor as exc:
        raise ApiError(422, "invalid_field", f"cursor: {exc}", "cursor") from None
    return JobPage(items=[JobView.of(r) for r in records], next_cursor=next_cursor)


@router.get("/v1/jobs/{job_id}", responses=documented(*COMMON_ERRORS))
def get_job(job: OwnJob) -> JobView:
    """The job's status, stage, attempts, error and (understanding jobs) text answer."""
    return JobView.of(job)


@router.delete(
    "/v1/jobs/{job_id}",
    responses={
        202: {"model": CancelView, "description": "running: cancel requested"},
        **documented(*COMMON_ERRORS, 409),
    },
)
def cancel_job(job_id: JobId, job: OwnJob, services: ServicesDep, response: Response) -> CancelView:
    """Cancel a job: a queued one never runs (200); a running one stops at its next stage (202)."""
    if job.is_final and job.status is not JobStatus.CANCELLED:
        raise ApiError(409, "conflict", f"job {job_id!r} already {job.status.value}", "job_id")
    try:
        status = services.queue.cancel(job_id)
    except JobNotFound:
        raise ApiError(404, "not_found", f"job {job_id!r} not found", "job_id") from None
    if status is JobStatus.RUNNING:
        response.status_code = 202
    elif status is not JobStatus.CANCELLED:  # it finished between the read and the cancel
        raise ApiError(409, "conflict", f"job {job_id!r} already {status.value}", "job_id")
    return CancelView(job_id=job_id, status=status, cancel_requested=status is JobStatus.RUNNING)


@router.get(
    "/v1/jobs/{job_id}/result",
    response_model=None,
    responses={
        200: {
            "description": "JSON with a presigned URL (S3), or the result's bytes (embedded mode)",
            "content": {
                "application/json": {"schema": ResultView.model_json_schema()},  # no nested models
                "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                "audio/flac": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **documented(*COMMON_ERRORS, 409),
    },
)
def get_result(job_id: JobId, job: OwnJob, tenant: CurrentTenant, services: ServicesDep) -> ResultView | Response:
    """A finished job's result: a presigned URL (service mode) or the bytes (embedded mode)."""
    if job.status is not JobStatus.SUCCEEDED or not job.result_uri:
        reason = f": {job.error}" if job.error else ""
        raise ApiError(409, "not_ready", f"job {job_id!r} is {job.status.value}{reason}; no result", "job_id")
    storage = services.storage
    key = _own_key(services, tenant, job.result_uri)
    if not storage.presigns_urls:  # embedded mode: the API serves the bytes itself
        name = key.rsplit("/", 1)[-1]
        return Response(
            storage.get(key),
            media_type=content_type_for(key),
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    info = storage.head(key)
    if info is None:
        raise ApiError(409, "not_ready", f"the result of job {job_id!r} is no longer stored", "job_id")
    metadata_uri = job.extra.get("metadata_uri")
    metadata_key = _own_key(services, tenant, metadata_uri) if isinstance(metadata_uri, str) else None
    expires_s = services.limits.result_url_expires_s
    text = job.extra.get("text")
    return ResultView(
        job_id=job_id,
        url=storage.url(key, expires_s=expires_s),
        expires_s=expires_s,
        uri=job.result_uri,
        content_type=info.content_type,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        metadata_url=storage.url(metadata_key, expires_s=expires_s) if metadata_key else None,
        text=text if isinstance(text, str) else None,
    )


def _own_key(services: Services, tenant: Tenant, uri: str) -> str:
    """The storage key of a result URI, checked to lie under the tenant's own prefix."""
    storage = services.storage
    key = storage.key_of(uri)
    if key is None or not key.startswith(storage.tenant_prefix(tenant.tenant_id)):
        raise ApiError(404, "not_found", "the result is not stored where this API can serve it")
    return key
