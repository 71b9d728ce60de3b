"""Webhook deliveries of the caller's tenant.

GET /v1/webhooks/deliveries   newest first (?status=pending|delivered|failed&limit=&cursor=)

Deliveries are made by the dispatcher (`orchestrator.webhooks`); how to verify their signatures,
the events and the retry schedule are in docs/webhooks.md.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from orchestrator.api.deps import CurrentTenant, ServicesDep
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api_errors import ApiError
from orchestrator.webhooks.deliveries import MAX_PAGE, DeliveryPage, DeliveryStatus, DeliveryStore

router = APIRouter(tags=["webhooks"])


@router.get("/v1/webhooks/deliveries", responses=documented(*COMMON_ERRORS))
def list_webhook_deliveries(
    tenant: CurrentTenant,
    services: ServicesDep,
    status: Annotated[DeliveryStatus | None, Query(description="only deliveries in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="deliveries per page")] = 50,
    cursor: Annotated[
        str | None, Query(min_length=1, max_length=200, description="the next_cursor of the previous page")
    ] = None,
) -> DeliveryPage:
    """The caller's webhook deliveries, newest first: each one's event type, object, URL, state
    (`pending` while attempts remain, then `delivered` or `failed`), attempts, the last HTTP status
    or error, and when the next attempt is due. Follow `next_cursor` until it is null; finished
    deliveries are kept for a week (`AUDIO_OMNI_WEBHOOK_RETENTION_S`)."""
    store = DeliveryStore(services.queue.redis, services.queue.keys)
    try:
        return store.page(tenant.tenant_id, status=status, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise ApiError(422, "invalid_field", str(exc), "cursor") from None
