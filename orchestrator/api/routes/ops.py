"""Operations: `GET /healthz` (liveness and Redis), `GET /metrics` (Prometheus). No key needed."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api.deps import ServicesDep
from orchestrator.api.errors import RETRY_LATER, documented
from orchestrator.api.views import HealthView
from orchestrator.api_errors import ApiError
from orchestrator.logging import get_logger
from orchestrator.settings import ObservabilitySettings

log = get_logger("api.ops")

router = APIRouter(tags=["ops"])


@router.get("/healthz", responses=documented(503))
def healthz(services: ServicesDep) -> HealthView:
    """Liveness and readiness: the API answers and reaches Redis."""
    try:
        services.queue.redis.ping()
    except redis.RedisError as exc:
        raise ApiError(503, "unavailable", f"Redis is unreachable: {exc}", headers=RETRY_LATER) from None
    return HealthView(status="ok", redis=True)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics_endpoint(services: ServicesDep) -> Response:
    """Prometheus metrics: requests, latencies, admissions, build info; and the shared state (queue
    depth, running jobs, dead letters, engines) when this process is its one exporter
    (docs/operations.md, "Metrics")."""
    metrics = services.metrics
    exporter = metrics.exporter or metrics.attach(
        services.queue, ttl_s=ObservabilitySettings.from_env().metrics_leader_ttl_s
    )
    try:
        exporter.refresh()
    except redis.RedisError as exc:  # the rest of the metrics are still worth serving
        log.warning("shared state unavailable for /metrics", error=str(exc))
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
