"""What the routes depend on, as FastAPI `Depends` providers: the services the app was built over,
the caller's tenant (from its bearer key), an operator (`AdminTenant`), and the caller's own job,
batch or workflow (404 for anyone else's: existence is never revealed). Also the per-tenant checks
of a submitted spec or workflow (webhook URLs through the webhook target policy), the admission of
new jobs and the queueing of a workflow, shared by the jobs, batches and workflows routers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from orchestrator.api.errors import problems_error, validation_problems
from orchestrator.api.settings import ApiSettings
from orchestrator.api_errors import ApiError
from orchestrator.errors import InvalidJobSpec
from orchestrator.jobs import MAX_ID_CHARS, BatchStatus, JobRecord, JobSpec, new_job_id, validate_id
from orchestrator.metrics import ApiMetrics
from orchestrator.queue import JobQueue
from orchestrator.references import scan_references
from orchestrator.storage import InputNotAllowed, Storage
from orchestrator.tenants import QuotaExceeded, RateLimited, Tenant, TenantStore, retry_after_header
from orchestrator.webhooks.settings import WebhookSettings
from orchestrator.webhooks.targets import WebhookTargetRefused, check_webhook_target
from orchestrator.workflows import (
    WorkflowSpec,
    WorkflowStatus,
    expand_job,
    new_workflow_id,
    step_job_id,
    workflow_id_for_key,
)

__all__ = [
    "URI_FIELDS",
    "AdminTenant",
    "BatchId",
    "CurrentTenant",
    "InputChecker",
    "JobId",
    "OwnBatch",
    "OwnBatchCounts",
    "OwnJob",
    "OwnWorkflow",
    "Services",
    "ServicesDep",
    "WorkflowId",
    "admit",
    "check_spec",
    "check_webhook",
    "check_workflow",
    "expand",
    "queue_workflow",
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
    # The webhook address policy; None: `WebhookSettings.from_env()` at each check.
    webhooks: WebhookSettings | None = None


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


def require_admin(tenant: CurrentTenant) -> Tenant:
    """The caller's tenant if it is an operator (`Tenant.admin`), else 403."""
    if not tenant.admin:
        raise ApiError(403, "forbidden", "operators only: this key's tenant is not an admin tenant")
    return tenant


AdminTenant = Annotated[Tenant, Depends(require_admin)]
JobId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="job id")]
BatchId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="batch id")]
WorkflowId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="workflow id")]


class _Owned(Protocol):
    @property
    def tenant(self) -> str | None: ...


T = TypeVar("T", bound=_Owned)


def _owned(what: str, value: str, tenant: Tenant, lookup: Callable[[str], T | None]) -> T:
    """`lookup(value)` when `value` is a valid id naming a record of `tenant`; else a 404 that
    says the same for an unknown id and another tenant's (ids of others are not confirmed)."""
    record = None
    try:
        validate_id(value, what)
    except ValueError:
        pass
    else:
        record = lookup(value)
    if record is None or record.tenant != tenant.tenant_id:
        raise ApiError(404, "not_found", f"{what.removesuffix('_id')} {value!r} not found", what)
    return record


def own_job(job_id: JobId, tenant: CurrentTenant, services: ServicesDep) -> JobRecord:
    """The caller's job `job_id`; 404 when it is unknown or another tenant's."""
    return _owned("job_id", job_id, tenant, services.queue.get)


def own_batch(
    batch_id: BatchId,
    tenant: CurrentTenant,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9, description="first failure to list")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="failures per page")] = 100,
) -> BatchStatus:
    """The caller's batch `batch_id` with the page `[offset, offset + limit)` of its failures; 404
    when it is unknown or another tenant's."""
    return _owned("batch_id", batch_id, tenant, lambda b: services.queue.batch_status(b, offset=offset, limit=limit))


def own_batch_counts(batch_id: BatchId, tenant: CurrentTenant, services: ServicesDep) -> BatchStatus:
    """The caller's batch `batch_id` (its counts and first failure); 404 as `own_batch`."""
    return _owned("batch_id", batch_id, tenant, lambda b: services.queue.batch_status(b, limit=1))


def own_workflow(workflow_id: WorkflowId, tenant: CurrentTenant, services: ServicesDep) -> WorkflowStatus:
    """The caller's workflow `workflow_id`; 404 when it is unknown or another tenant's."""
    return _owned("workflow_id", workflow_id, tenant, services.queue.workflow_status)


OwnJob = Annotated[JobRecord, Depends(own_job)]
OwnBatch = Annotated[BatchStatus, Depends(own_batch)]
OwnBatchCounts = Annotated[BatchStatus, Depends(own_batch_counts)]
OwnWorkflow = Annotated[WorkflowStatus, Depends(own_workflow)]


def check_spec(services: Services, tenant: Tenant, spec: JobSpec, where: str = "") -> JobSpec:
    """The spec as it will be queued (tenant filled in), after the tenant's own checks: it names
    no other tenant, no batch and no workflow link, stays within the tenant's duration and step
    limits, and every input URI is one the tenant may read. `where` prefixes field names (`jobs[3].`)."""
    _check_owner(tenant, spec.model_fields_set, spec.tenant, spec.batch_id, where)
    if spec.workflow is not None:  # a link names other jobs' outputs: only the queue writes one
        field = f"{where}workflow"
        message = f"{field}: set by the system for workflow steps; submit a workflow with POST /v1/workflows"
        raise ApiError(422, "invalid_field", message, field)
    _check_limits_and_inputs(services, tenant, spec, where)
    return spec.model_copy(update={"tenant": tenant.tenant_id})


def check_webhook(services: Services, url: str | None, field: str = "webhook_url") -> None:
    """422 `webhook_url_refused` when `url` may not receive webhooks (a private, loopback,
    link-local or metadata address the deployment does not allow, or a host that does not resolve)."""
    if url is None:
        return
    try:
        check_webhook_target(url, services.webhooks)
    except WebhookTargetRefused as exc:
        text = str(exc)  # the policy's messages name the field "webhook_url"; name where it is
        message = field + text.removeprefix("webhook_url") if text.startswith("webhook_url") else f"{field}: {text}"
        raise ApiError(422, "webhook_url_refused", message, field) from None


def check_workflow(
    services: Services, tenant: Tenant, workflow: WorkflowSpec, where: str = "", *, batch_id: str | None = None
) -> WorkflowSpec:
    """The workflow as it will be queued (tenant filled in, and `batch_id` when a batch holds it),
    after the tenant's checks on it and on every step: as `check_spec`, with field names
    `steps[i].<field>` and the step named, and references to other steps' audio skipped (they
    name results the workflow itself writes)."""
    _check_owner(tenant, workflow.model_fields_set, workflow.tenant, workflow.batch_id, where)
    check_webhook(services, workflow.webhook_url, f"{where}webhook_url")
    for i, step in enumerate(workflow.steps):  # a step's tenant and batch are the workflow's (schema)
        try:
            _check_limits_and_inputs(services, tenant, step, f"{where}steps[{i}].")
        except ApiError as exc:
            message = f"{exc.message} (step {step.id!r})"
            raise ApiError(exc.status, exc.code, message, exc.field, headers=exc.headers) from None
    update: dict[str, str] = {"tenant": tenant.tenant_id}
    if batch_id is not None:
        update["batch_id"] = batch_id
    return workflow.model_copy(update=update)


def _check_owner(tenant: Tenant, given: set[str], spec_tenant: str, batch_id: str | None, where: str) -> None:
    if "tenant" in given and spec_tenant != tenant.tenant_id:
        field = f"{where}tenant"
        raise ApiError(403, "forbidden", f"{field}: jobs are submitted for the key's tenant only", field)
    if batch_id is not None:
        field = f"{where}batch_id"
        raise ApiError(422, "invalid_field", f"{field}: batches are created with POST /v1/batches", field)


def _check_limits_and_inputs(services: Services, tenant: Tenant, spec: JobSpec, where: str) -> None:
    check_webhook(services, spec.webhook_url, f"{where}webhook_url")
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
    references, _ = scan_references({name: getattr(spec, name) for name in URI_FIELDS})
    from_steps = {ref.field for ref in references}
    for name in URI_FIELDS:
        uri = getattr(spec, name)
        if uri is not None and name not in from_steps:
            try:
                services.inputs.check(uri, tenant=tenant.tenant_id)
            except InputNotAllowed as exc:
                field = f"{where}{name}"
                raise ApiError(403, "input_not_allowed", f"{field}: {exc}", field) from None


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


def expand(spec: JobSpec, where: str = "") -> WorkflowSpec | None:
    """The built-in workflow a job runs as (`expand_job`), or None for a plain job; a chain that
    cannot be built from the spec is a 422 naming the field."""
    try:
        return expand_job(spec)
    except ValidationError as exc:
        raise problems_error(validation_problems(exc, where.rstrip("."))) from None
    except InvalidJobSpec as exc:
        raise problems_error(
            [(f"{where}{field}" if field else where.rstrip(".") or None, m) for field, m in exc.errors]
        ) from None


def queue_job(services: Services, tenant: Tenant, spec: JobSpec) -> tuple[JobRecord, bool]:
    """Admit and queue one checked plain job: `(record, created)`. A re-submit with an
    `idempotency_key` that names an existing job returns that job (`created` False) and keeps
    nothing admitted for it."""
    job_id = new_job_id()
    admit(services, tenant, [job_id])
    try:
        record = services.queue.submit(spec, job_id=job_id)
    except BaseException:
        services.tenants.release(tenant.tenant_id, [job_id])
        raise
    if record.job_id != job_id:  # an idempotent re-submit: the existing job, nothing new admitted
        services.tenants.release(tenant.tenant_id, [job_id])
        return record, False
    services.metrics.submitted.labels("job").inc()
    return record, True


def queue_workflow(services: Services, tenant: Tenant, workflow: WorkflowSpec) -> tuple[WorkflowStatus, bool]:
    """Admit the workflow's step jobs and queue it (one atomic script): `(status, created)`. With
    an `idempotency_key` the workflow id is derived from the tenant and the key, so a re-submit
    returns the existing workflow (`created` False) and admits nothing."""
    queue = services.queue
    key = workflow.idempotency_key
    workflow_id = workflow_id_for_key(tenant.tenant_id, key) if key is not None else new_workflow_id()
    if key is not None:
        existing = queue.workflow_status(workflow_id)
        if existing is not None and existing.tenant == tenant.tenant_id:
            return _replay(existing, workflow), False
    job_ids = [step_job_id(workflow_id, step.id) for step in workflow.steps]
    if len(job_ids) > tenant.limits.max_in_flight:  # a 429 would never clear: say so now
        message = (
            f"the workflow has {len(job_ids)} steps but this tenant may have at most "
            f"{tenant.limits.max_in_flight} jobs in flight"
        )
        raise ApiError(413, "too_large", message, "steps")
    admit(services, tenant, job_ids)
    try:
        status = queue.submit_workflow(workflow, workflow_id=workflow_id)
    except BaseException:
        if key is None:  # a derived id may be another request's workflow: leave its reservations
            services.tenants.release(tenant.tenant_id, job_ids)
        raise
    if status.workflow_id != workflow_id:  # the key already named another workflow
        services.tenants.release(tenant.tenant_id, job_ids)
        return _replay(status, workflow), False
    services.metrics.submitted.labels("workflow").inc(len(job_ids))
    return status, True


def _replay(existing: WorkflowStatus, workflow: WorkflowSpec) -> WorkflowStatus:
    """The existing workflow of an idempotency key, if the re-submit has the same steps; 409 if not."""
    ids = [step.id for step in workflow.steps]
    have = [step.id for step in existing.steps]
    if ids != have:
        message = f"idempotency_key was used for a workflow with steps {', '.join(have)}, not {', '.join(ids)}"
        raise ApiError(409, "conflict", message, "idempotency_key")
    return existing
