"""Batches: many jobs in one request, and their progress.

POST   /v1/batches            {"jobs": [JobSpec, ...]} -> 201 {batch_id, total, job_ids}
GET    /v1/batches/{id}       counts by status, one page of failures (?offset=&limit=)
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Response

from orchestrator.api.deps import CurrentTenant, OwnBatch, ServicesDep, admit, check_spec
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.views import BatchCreated, BatchRequest, BatchView
from orchestrator.api_errors import ApiError
from orchestrator.errors import InvalidJobSpec
from orchestrator.jobs import JobSpec, batch_job_id, new_batch_id

router = APIRouter(tags=["batches"])

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
    """Queue many jobs as one batch; they are written to the queue in chunks. Item `i` gets the
    job id `{batch_id}-{i}`."""
    limits, queue = services.limits, services.queue
    n = len(body.jobs)
    if n > limits.max_batch_jobs:
        raise ApiError(413, "too_large", f"the batch has {n} jobs; at most {limits.max_batch_jobs} per request", "jobs")
    if n > tenant.limits.max_in_flight:
        message = (
            f"the batch has {n} jobs but this tenant may have at most {tenant.limits.max_in_flight} in flight; split it"
        )
        raise ApiError(413, "too_large", message, "jobs")
    specs: list[JobSpec] = []
    problems: list[ApiError] = []
    for i, spec in enumerate(body.jobs):
        try:
            specs.append(check_spec(services, tenant, spec, f"jobs[{i}]."))
        except ApiError as exc:  # report every refused item, not just the first
            problems.append(exc)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        details = [(p.field, p.message) for p in problems]
        raise ApiError(first.status, first.code, first.message + more, first.field, details=details)
    if idempotency_key is not None:
        batch_id = _idempotent_batch_id(tenant.tenant_id, idempotency_key)
        existing = queue.batch_status(batch_id, limit=1)
        if existing is not None and existing.tenant == tenant.tenant_id:
            if existing.total != len(specs):
                message = f"Idempotency-Key was used for a batch of {existing.total} jobs, not {len(specs)}"
                raise ApiError(409, "conflict", message, "Idempotency-Key")
            response.status_code = 200
            ids = [batch_job_id(batch_id, i) for i in range(existing.total)]
            return BatchCreated(batch_id=batch_id, total=existing.total, job_ids=ids)
    else:
        batch_id = new_batch_id()
    job_ids = [batch_job_id(batch_id, i) for i in range(len(specs))]
    admit(services, tenant, job_ids)
    try:
        batch_id, job_ids = queue.submit_batch(specs, batch_id=batch_id, chunk_size=limits.batch_chunk_size)
    except InvalidJobSpec as exc:  # not expected: every spec was validated above
        services.tenants.release(tenant.tenant_id, job_ids)
        raise ApiError(422, "invalid_field", str(exc), details=exc.errors) from None
    except BaseException:
        services.tenants.release(tenant.tenant_id, job_ids)
        raise
    services.metrics.submitted.labels("batch").inc(len(job_ids))
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchCreated(batch_id=batch_id, total=len(job_ids), job_ids=job_ids)


@router.get("/v1/batches/{batch_id}", responses=documented(*COMMON_ERRORS))
def get_batch(batch: OwnBatch) -> BatchView:
    """Counts by status, whether the batch is done, and one page of its failed jobs."""
    return BatchView.of(batch)


def _idempotent_batch_id(tenant_id: str, key: str) -> str:
    """A batch id derived from the tenant and its idempotency key (distinct across tenants)."""
    return "b" + hashlib.sha256(f"{tenant_id}\0{key}".encode()).hexdigest()[:31]
