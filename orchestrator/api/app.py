"""`create_app`: the API assembled from its routers, middleware, error handlers and services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from orchestrator.api.deps import InputChecker, Services
from orchestrator.api.docs_ui import install_docs, operation_id
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from orchestrator.api.openai_compat import OpenAISettings
from orchestrator.api.routes import admin, batches, jobs, openai_audio, ops, reports, uploads, webhooks, workflows
from orchestrator.api.settings import ApiSettings
from orchestrator.metrics import ApiMetrics
from orchestrator.queue import JobQueue
from orchestrator.storage import Storage, input_resolver_from_settings
from orchestrator.tenants import TenantStore

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.0.0"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around an uploaded file


def create_app(
    settings: Settings | None = None,
    *,
    queue: JobQueue,
    storage: Storage,
    tenants: TenantStore,
    api_settings: ApiSettings | None = None,
    inputs: InputChecker | None = None,
    openai: OpenAISettings | None = None,
) -> FastAPI:
    """Build the API over a queue, a storage and a tenant store (all shared by the requests).

    `inputs` decides which URIs a tenant may name as job inputs: give the process's one
    `InputResolver` (`input_resolver_from_settings`, the object the engine reads through, with the
    deployment's rules). Without it, a resolver with no deployment rules: each tenant's own storage
    prefix (uploads, results) and its own allowed buckets from `tenants`.

    `settings` is kept on `app.state` for introspection; the limits of the HTTP layer come from
    `api_settings`. A storage that cannot presign URLs (a local folder: embedded mode) gets its
    results served as bytes.

    `openai` configures the OpenAI-compatible audio routes (named voices, model names); without it,
    `OpenAISettings()` reads `AUDIO_OMNI_OPENAI_*` from the environment. `/docs` is Swagger UI
    from the installed package (no CDN); operation ids are the endpoint functions' names."""
    limits = api_settings or ApiSettings()
    if inputs is None:
        inputs = input_resolver_from_settings(storage, tenant_rules=tenants.input_policy)
    services = Services(
        queue=queue,
        storage=storage,
        tenants=tenants,
        inputs=inputs,
        limits=limits,
        metrics=ApiMetrics(),
    )
    app = FastAPI(
        title="Audio-Omni jobs API",
        version=API_VERSION,
        description=(
            "Submit audio understanding, generation and editing jobs, and workflows that chain them; "
            "follow and fetch them."
        ),
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.openai = openai or OpenAISettings()
    for module in (ops, jobs, batches, workflows, uploads, webhooks, admin, openai_audio, reports):
        app.include_router(module.router)
    install_docs(app)
    install_error_handlers(app)

    def body_limit(path: str) -> int:
        if path in ("/v1/uploads", "/v1/audio/transcriptions"):
            return limits.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        if path == "/v1/batches":
            return limits.max_batch_body_bytes
        return limits.max_json_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response and error body carries the id
    return app
