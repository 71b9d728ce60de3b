"""What the routes depend on, as FastAPI `Depends` providers: the services the app was built over,
the caller's tenant (from its bearer key), and the caller's own job or batch (404 for anyone
else's: existence is never revealed). Also the per-tenant checks of a submitted spec and the
admission of new jobs, shared by the jobs and batches routers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api.settings import ApiSettings
from orchestrator.api_errors import ApiError
from orchestrator.jobs import MAX_ID_CHARS, BatchStatus, JobRecord, JobSpec, validate_id
from orchestrator.metrics import ApiMetrics
from orchestrator.queue import JobQueue
from orchestrator.storage import InputNotAllowed, Storage
from orchestrator.tenants import QuotaExceeded, RateLimited, Tenant, TenantStore, retry_after_header

__all__ = [
    "URI_FIELDS",
    "BatchId",
    "CurrentTenant",
    "InputChecker",
    "JobId",
    "OwnBatch",
    "OwnJob",
    "Services",
    "ServicesDep",
    "admit",
    "check_spec",
]

URI_FIELDS = ("input_audio_uri", "voice_prompt_uri", "video_uri", "sync_feature_uri")


class InputChecker(Protocol):
    """Decides whether a tenant may name a URI as a job input (`InputResolver` in storage)."""

    def check(self, uri: str, *, tenant: str) -> None:
        """Return if `tenant` may read `uri`; raise `InputNotAllowed` naming the rule otherwise."""
        ...


@dataclass(frozen=True)
class Services:
    """Everything the routes share, built once by `create_app` (all state lives in Redis and the
    object store, so the app itself is stateless)."""

    queue: JobQueue
    storage: Storage
    tenants: TenantStore
    inputs: InputChecker
    limits: ApiSettings
    metrics: ApiMetrics


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="an API key issued by `audio-omni tenants create`")


def authenticate(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant of the request's bearer key, or 401."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer KEY", headers=challenge)
    tenant = services.tenants.authenticate(credentials.credentials)
    if tenant is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=challenge)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(authenticate)]
JobId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="job id")]
BatchId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="batch id")]


def own_job(job_id: JobId, tenant: CurrentTenant, services: ServicesDep) -> JobRecord:
    """The caller's job `job_id`; 404 when it is unknown or another tenant's."""
    record = None
    try:
        validate_id(job_id, "job_id")
    except ValueError:
        pass
    else:
        record = services.queue.get(job_id)
    if record is None or record.tenant != tenant.tenant_id:
        raise ApiError(404, "not_found", f"job {job_id!r} not found", "job_id")
    return record


def own_batch(
    batch_id: BatchId,
    tenant: CurrentTenant,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9, description="first failure to list")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="failures per page")] = 100,
) -> BatchStatus:
    """The caller's batch `batch_id` with the page `[offset, offset + limit)` of its failures; 404
    when it is unknown or another tenant's."""
    status = None
    try:
        validate_id(batch_id, "batch_id")
    except ValueError:
        pass
    else:
        status = services.queue.batch_status(batch_id, offset=offset, limit=limit)
    if status is None or status.tenant != tenant.tenant_id:
        raise ApiError(404, "not_found", f"batch {batch_id!r} not found", "batch_id")
    return status


OwnJob = Annotated[JobRecord, Depends(own_job)]
OwnBatch = Annotated[BatchStatus, Depends(own_batch)]


def check_spec(services: Services, tenant: Tenant, spec: JobSpec, where: str = "") -> JobSpec:
    """The spec as it will be queued (tenant filled in), after the tenant's own checks: it names
    no other tenant and no batch, stays within the tenant's duration and step limits, and every
    input URI is one the tenant may read. `where` prefixes field names (`jobs[3].`)."""
    if "tenant" in spec.model_fields_set and spec.tenant != tenant.tenant_id:
        field = f"{where}tenant"
        raise ApiError(403, "forbidden", f"{field}: jobs are submitted for the key's tenant only", field)
    if spec.batch_id is not None:
        field = f"{where}batch_id"
        raise ApiError(422, "invalid_field", f"{field}: batches are created with POST /v1/batches", field)
    limits = tenant.limits
    if spec.duration_s > limits.max_duration_s:
        field = f"{where}duration_s"
        message = f"{field}: {spec.duration_s:g} s is over this tenant's limit of {limits.max_duration_s:g} s"
        raise ApiError(422, "limit_exceeded", message, field)
    if spec.steps > limits.max_steps:
        field = f"{where}steps"
        raise ApiError(
            422, "limit_exceeded", f"{field}: {spec.steps} is over this tenant's limit of {limits.max_steps}", field
        )
    for name in URI_FIELDS:
        uri = getattr(spec, name)
        if uri is not None:
            try:
                services.inputs.check(uri, tenant=tenant.tenant_id)
            except InputNotAllowed as exc:
                field = f"{where}{name}"
                raise ApiError(403, "input_not_allowed", f"{field}: {exc}", field) from None
    return spec.model_copy(update={"tenant": tenant.tenant_id})


def admit(services: Services, tenant: Tenant, job_ids: list[str]) -> None:
    """Count new jobs against the tenant's rate and in-flight limits; 429 with `Retry-After` when
    either is reached (nothing is counted then)."""
    try:
        services.tenants.admit(tenant, job_ids)
    except RateLimited as exc:
        services.metrics.refused.labels("rate").inc()
        headers = {"Retry-After": retry_after_header(exc.retry_after_s)}
        raise ApiError(429, "rate_limited", str(exc), headers=headers) from None
    except QuotaExceeded as exc:
        services.metrics.refused.labels("in_flight").inc()
        headers = {"Retry-After": retry_after_header(exc.retry_after_s)}
        raise ApiError(429, "quota_exceeded", str(exc), headers=headers) from None
