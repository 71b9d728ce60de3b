"""Batches: many jobs (and workflows) in one request, and their progress.

POST   /v1/batches            {"jobs": [JobSpec or {"steps": [...]}, ...]} -> 201 {batch_id, total,
                              job_ids, workflows}
GET    /v1/batches/{id}       counts by status, one page of failures (?offset=&limit=)
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ValidationError

from orchestrator.api.deps import (
    CurrentTenant,
    OwnBatch,
    Services,
    ServicesDep,
    admit,
    check_spec,
    check_workflow,
    expand,
)
from orchestrator.api.errors import COMMON_ERRORS, documented, problems_error, validation_problems
from orchestrator.api.views import BatchCreated, BatchRequest, BatchView, BatchWorkflowItem
from orchestrator.api_errors import ApiError
from orchestrator.errors import InvalidJobSpec
from orchestrator.jobs import JobSpec, batch_job_id, new_batch_id
from orchestrator.tenants import Tenant
from orchestrator.workflows import WorkflowSpec, is_workflow_data, step_job_id, workflow_id_for_key

router = APIRouter(tags=["batches"])
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
    nothing twice."""
    limits, queue = services.limits, services.queue
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
        if plain:
            queue.submit_batch(plain, batch_id=batch_id, chunk_size=limits.batch_chunk_size)
        for _, workflow_id, workflow in workflow_ids:
            queue.submit_workflow(workflow, workflow_id=workflow_id)
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


@router.get("/v1/batches/{batch_id}", responses=documented(*COMMON_ERRORS))
def get_batch(batch: OwnBatch) -> BatchView:
    """Counts by status, whether the batch is done, and one page of its failed jobs."""
    return BatchView.of(batch)


def _idempotent_batch_id(tenant_id: str, key: str) -> str:
    """A batch id derived from the tenant and its idempotency key (distinct across tenants)."""
    return "b" + hashlib.sha256(f"{tenant_id}\0{key}".encode()).hexdigest()[:31]
