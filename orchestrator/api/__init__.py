"""The HTTP API: how tenants submit jobs and batches, follow them, cancel them and fetch results.

Stateless (every piece of state is in Redis or the object store), so any number of replicas can
run behind a load balancer, apart from the GPU cluster. `create_app` builds the FastAPI app::

    app = create_app(settings, queue=JobQueue.from_settings(settings),
                     storage=storage_from_settings(**settings.storage_kwargs(embedded=False)),
                     tenants=TenantStore.from_settings(settings))

Layout (FastAPI's "bigger applications"): `app` assembles; `deps` holds the `Depends` providers
(services, current tenant, own job / batch / workflow); `routes/` has one router per resource
(`jobs`, `batches`, `workflows`, `uploads`, `ops`); `errors` the one error shape; `middleware` the body limit and
request metrics; `views` the response bodies; `settings` the limits of the HTTP layer.

Endpoints (all under `Authorization: Bearer KEY` except `/healthz`, `/metrics` and the OpenAPI
document at `/openapi.json`):

    POST   /v1/jobs               a `JobSpec` -> 201 the job (200 for an idempotent re-submit); a
                                  built-in chain (`reasoning`, voice conversion from speech) -> its workflow
    POST   /v1/batches            {"jobs": [JobSpec or workflow, ...]} -> 201 {batch_id, total, job_ids, workflows}
    POST   /v1/workflows          {"steps": [...], "idempotency_key": ...} -> 201 the workflow
    GET    /v1/jobs/{id}          the job's status
    GET    /v1/batches/{id}       counts by status, one page of failures (?offset=&limit=)
    GET    /v1/workflows/{id}     the workflow's status and each step's
    DELETE /v1/jobs/{id}          cancel (200 cancelled, 202 cancel requested for a running job)
    DELETE /v1/workflows/{id}     cancel the steps that have not finished
    GET    /v1/jobs/{id}/result   presigned URL (S3), or the bytes themselves (embedded mode)
    POST   /v1/uploads            multipart `file`: WAV/FLAC, checked as the engine checks inputs
    GET    /healthz, GET /metrics

Every error has one shape, `{"error": {"code", "message", "field", "details"}}`:
400 unreadable body, 401 no/unknown key, 403 input or tenant not allowed, 404 unknown id (also
another tenant's id: existence is never revealed), 409 wrong state, 413 too large, 422 invalid
field or audio, 429 rate limit or in-flight quota (`Retry-After`), 503 Redis/S3 unavailable.
Client input never causes a 500.

Isolation: a job belongs to the tenant of the key that submitted it (a `tenant` field naming
another tenant is refused), ids of other tenants answer 404, and input URIs must be ones the
storage's `InputResolver` lets the tenant read (its own prefix, or a location its record or the
deployment allows); nothing is ever fetched from `http(s)://`, `file://` (outside embedded mode),
`..` paths or link-local addresses.
"""

from orchestrator.api.app import API_VERSION, create_app
from orchestrator.api.deps import InputChecker
from orchestrator.api.errors import ErrorResponse
from orchestrator.api.server import serve_in_thread
from orchestrator.api.settings import ApiSettings
from orchestrator.api.views import (
    BatchCreated,
    BatchRequest,
    BatchView,
    JobView,
    ResultView,
    UploadView,
    WorkflowStepView,
    WorkflowView,
)
from orchestrator.api_errors import ApiError
from orchestrator.audio_io import AudioInfo

__all__ = [
    "API_VERSION",
    "ApiError",
    "ApiSettings",
    "AudioInfo",
    "BatchCreated",
    "BatchRequest",
    "BatchView",
    "ErrorResponse",
    "InputChecker",
    "JobView",
    "ResultView",
    "UploadView",
    "WorkflowStepView",
    "WorkflowView",
    "create_app",
    "serve_in_thread",
]
