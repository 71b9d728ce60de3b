"""Batches: many jobs (and workflows) in one request, and their progress.

POST   /v1/batches            {"jobs": [JobSpec or {"steps": [...]}, ...], "webhook_url": ...} -> 201
                              {batch_id, total, job_ids, workflows}
GET    /v1/batches            the caller's batches, newest first (?created_after=&limit=&cursor=)
GET    /v1/batches/{id}       counts by status, one page of failures (?offset=&limit=)
GET    /v1/batches/{id}/results   JSON Lines, one per job in batch order (?limit=&cursor=; the next
                              page's cursor in the `X-Next-Cursor` header)
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ValidationError

from orchestrator.api.deps import (
    CurrentTenant,
    OwnBatch,
    OwnBatchCounts,
    Services,
    ServicesDep,
    admit,
    check_spec,
    check_webhook,
    check_workflow,
    expand,
)
from orchestrator.api.errors import COMMON_ERRORS, documented, problems_error, validation_problems
from orchestrator.api.routes.jobs import CreatedAfter, Cursor
from orchestrator.api.views import (
    BatchCreated,
    BatchPage,
    BatchRequest,
    BatchResultLine,
    BatchView,
    BatchWorkflowItem,
)
from orchestrator.api_errors import ApiError
from orchestrator.errors import InvalidJobSpec
from orchestrator.jobs import JobSpec, JobStatus, batch_job_id, new_batch_id
from orchestrator.queue import BatchItem, InvalidCursor
from orchestrator.queue.listing import MAX_LIST_LIMIT, MAX_RESULTS_LIMIT
from orchestrator.tenants import Tenant
from orchestrator.workflows import WorkflowSpec, is_workflow_data, step_job_id, workflow_id_for_key

router = APIRouter(tags=["batches"])
# One results line's schema, inline (no route returns the model itself, so it is not a component);
# the enums it uses are components already (JobView uses them).
_RESULT_LINE_SCHEMA = {
    k: v
    for k, v in BatchResultLine.model_json_schema(ref_template="#/components/schemas/{model}").items()
    if k != "$defs"
}
_Item = TypeVar("_Item", bound=BaseModel)

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="re-sending a batch with the same key returns the first one",
    ),
]


@router.post(
    "/v1/batches",
    status_code=201,
    responses={
        200: {"model": BatchCreated, "description": "the existing batch (same Idempotency-Key)"},
        **documented(*COMMON_ERRORS, 403, 413, 429),
    },
)
def submit_batch(
    body: BatchRequest,
    tenant: CurrentTenant,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BatchCreated:
    """Queue many jobs as one batch; they are written to the queue in chunks. An item may be a
    workflow (`{"steps": [...]}`), or a job that runs as a built-in chain; its steps are jobs of
    the batch (`total` counts them). The plain items get the job ids `{batch_id}-{j}` (j counting
    plain items), each workflow (item i) an id derived from the batch and i, so a re-send queues
    nothing twice. With `webhook_url`, `batch.completed` is sent when the batch's last job ends
    (each job and workflow may have its own `webhook_url` too)."""
    limits, queue = services.limits, services.queue
    check_webhook(services, body.webhook_url)
    n = len(body.jobs)
    if n > limits.max_batch_jobs:
        raise ApiError(413, "too_large", f"the batch has {n} jobs; at most {limits.max_batch_jobs} per request", "jobs")
    if idempotency_key is not None:
        batch_id = _idempotent_batch_id(tenant.tenant_id, idempotency_key)
    else:
        batch_id = new_batch_id()
    plain, workflows = _checked_items(body, services, tenant, batch_id)
    jobs_total = len(plain) + sum(len(wf.steps) for _, wf in workflows)
    if jobs_total > limits.max_batch_jobs:
        message = (
            f"the batch has {jobs_total} jobs with its workflows' steps; at most {limits.max_batch_jobs} per request"
        )
        raise ApiError(413, "too_large", message, "jobs")
    if jobs_total > tenant.limits.max_in_flight:
        message = (
            f"the batch has {jobs_total} jobs but this tenant may have at most {tenant.limits.max_in_flight} "
            "in flight; split it"
        )
        raise ApiError(413, "too_large", message, "jobs")
    plain_ids = [batch_job_id(batch_id, j) for j in range(len(plain))]
    workflow_ids = [(i, workflow_id_for_key(tenant.tenant_id, f"{batch_id}/{i}"), wf) for i, wf in workflows]
    items = [
        BatchWorkflowItem(index=i, workflow_id=wid, job_ids=[step_job_id(wid, step.id) for step in wf.steps])
        for i, wid, wf in workflow_ids
    ]
    job_ids = plain_ids + [jid for item in items for jid in item.job_ids]
    if idempotency_key is not None:
        existing = queue.batch_status(batch_id, limit=1)
        if existing is not None and existing.tenant == tenant.tenant_id:
            if existing.total != jobs_total:
                message = f"Idempotency-Key was used for a batch of {existing.total} jobs, not {jobs_total}"
                raise ApiError(409, "conflict", message, "Idempotency-Key")
            response.status_code = 200
            return BatchCreated(batch_id=batch_id, total=existing.total, job_ids=job_ids, workflows=items)
    admit(services, tenant, job_ids)
    try:
        # The batch's webhook URL goes with its last write only, so that a batch whose first part
        # ends before the rest is written is not announced as completed.
        if plain:
            url = None if workflow_ids else body.webhook_url
            queue.submit_batch(plain, batch_id=batch_id, chunk_size=limits.batch_chunk_size, webhook_url=url)
        for n, (_, workflow_id, workflow) in enumerate(workflow_ids, start=1):
            url = body.webhook_url if n == len(workflow_ids) else None
            queue.submit_workflow(workflow, workflow_id=workflow_id, batch_webhook_url=url)
    except InvalidJobSpec as exc:  # not expected: every spec was validated above
        services.tenants.release(tenant.tenant_id, job_ids)
        raise ApiError(422, "invalid_field", str(exc), details=exc.errors) from None
    except BaseException:
        services.tenants.release(tenant.tenant_id, job_ids)
        raise
    services.metrics.submitted.labels("batch").inc(len(job_ids))
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchCreated(batch_id=batch_id, total=len(job_ids), job_ids=job_ids, workflows=items)


def _checked_items(
    body: BatchRequest, services: Services, tenant: Tenant, batch_id: str
) -> tuple[list[JobSpec], list[tuple[int, WorkflowSpec]]]:
    """The batch's plain jobs and its workflows (with their item index), each parsed and checked
    for the tenant; every refused item is reported (422 or 403 listing them all), not just the first."""
    plain: list[JobSpec] = []
    workflows: list[tuple[int, WorkflowSpec]] = []
    problems: list[ApiError] = []
    for i, raw in enumerate(body.jobs):
        where = f"jobs[{i}]"
        try:
            if is_workflow_data(raw):
                workflow = _parse(WorkflowSpec, raw, where)
                workflows.append((i, check_workflow(services, tenant, workflow, f"{where}.", batch_id=batch_id)))
                continue
            spec = check_spec(services, tenant, _parse(JobSpec, raw, where), f"{where}.")
            expanded = expand(spec, f"{where}.")
            if expanded is None:
                plain.append(spec)
            else:
                workflows.append((i, check_workflow(services, tenant, expanded, f"{where}.", batch_id=batch_id)))
        except ApiError as exc:
            problems.append(exc)
    if problems:
        first = problems[0]
        others = len(problems) - 1
        more = f" (and problems in {others} more item{'s' if others > 1 else ''})" if others else ""
        details = [d for p in problems for d in (p.details or [{"field": p.field, "message": p.message}])]
        raise ApiError(first.status, first.code, first.message + more, first.field, details=details)
    return plain, workflows


def _parse(model: type[_Item], raw: dict[str, Any], where: str) -> _Item:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise problems_error(validation_problems(exc, where)) from None


@router.get("/v1/batches", responses=documented(*COMMON_ERRORS))
def list_batches(
    tenant: CurrentTenant,
    services: ServicesDep,
    created_after: CreatedAfter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="batches per page")] = 50,
    cursor: Cursor = None,
) -> BatchPage:
    """The caller's batches, newest first, with their counts; follow `next_cursor` until it is
    null. Each batch's failures are listed by GET /v1/batches/{id} (`next_offset` 0 when it has any)."""
    try:
        batches, next_cursor = services.queue.list_batches(
            tenant.tenant_id, created_after=created_after, limit=limit, cursor=cursor
        )
    except InvalidCursor as exc:
        raise ApiError(422, "invalid_field", f"cursor: {exc}", "cursor") from None
    return BatchPage(items=[BatchView.of(b) for b in batches], next_cursor=next_cursor)


@router.get("/v1/batches/{batch_id}", responses=documented(*COMMON_ERRORS))
def get_batch(batch: OwnBatch) -> BatchView:
    """Counts by status, whether the batch is done, and one page of its failed jobs."""
    return BatchView.of(batch)


@router.get(
    "/v1/batches/{batch_id}/results",
    response_class=Response,
    responses={
        200: {
            "description": (
                "JSON Lines: one `BatchResultLine` per job in batch order; the next page's cursor is in "
                "the `X-Next-Cursor` header (absent on the last page)"
            ),
            "content": {"application/x-ndjson": {"schema": _RESULT_LINE_SCHEMA}},
        },
        **documented(*COMMON_ERRORS),
    },
)
def get_batch_results(
    batch: OwnBatchCounts,
    tenant: CurrentTenant,
    request: Request,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_RESULTS_LIMIT, description="jobs per page")] = 100,
    cursor: Cursor = None,
) -> Response:
    """Every job of the batch in batch order, one JSON line each: job id, index, status,
    `custom_id`, `metadata`, the result's URI and a URL to fetch it (presigned, or this API's
    result route), the text answer, the error and its `error_code`."""
    try:
        items, next_cursor = services.queue.batch_items(batch.batch_id, limit=limit, cursor=cursor)
    except InvalidCursor as exc:
        raise ApiError(422, "invalid_field", f"cursor: {exc}", "cursor") from None
    lines = [
        _result_line(services, request, tenant.tenant_id, item)
        for item in items
        if item.record.tenant == tenant.tenant_id
    ]
    body = "".join(line.model_dump_json() + "\n" for line in lines)
    headers = {"X-Next-Cursor": next_cursor} if next_cursor else {}
    return Response(body, media_type="application/x-ndjson", headers=headers)


def _result_line(services: Services, request: Request, tenant: str, item: BatchItem) -> BatchResultLine:
    record = item.record
    url = None
    if record.status is JobStatus.SUCCEEDED and record.result_uri:
        storage = services.storage
        key = storage.key_of(record.result_uri)
        if not storage.presigns_urls:
            url = str(request.url_for("get_result", job_id=record.job_id))
        elif key is not None and key.startswith(storage.tenant_prefix(tenant)):
            url = storage.url(key, expires_s=services.limits.result_url_expires_s)
    return BatchResultLine(
        job_id=record.job_id,
        index=item.index,
        status=record.status,
        custom_id=record.custom_id,
        metadata=record.metadata,
        result_uri=record.result_uri,
        result_url=url,
        text=record.text,
        error=record.error,
        error_code=record.error_code,
    )


def _idempotent_batch_id(tenant_id: str, key: str) -> str:
    """A batch id derived from the tenant and its idempotency key (distinct across tenants)."""
    return "b" + hashlib.sha256(f"{tenant_id}\0{key}".encode()).hexdigest()[:31]
