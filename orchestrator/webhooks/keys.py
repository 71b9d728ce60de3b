"""The Redis keys of webhook delivery, built from the deployment's `RedisKeys` (one prefix).

Layout under prefix `P`::

    P webhooks:events                stream of ended objects with a webhook_url (XADDed by the queue's
                                     Lua; `RedisKeys.webhook_events`), consumer group "webhooks"
    P webhooks:delivery:{id}         hash: one delivery (tenant, type, object, url, body, status,
                                     attempts, last status code / error, times, lease token)
    P webhooks:due                   sorted set: pending delivery id -> when it may be tried next (ms);
                                     a delivery being sent sits at the end of its lease
    P webhooks:index:{tenant}:{s}    sorted set (all scores 0, lexical order): `{created ms:013d}:{id}`
                                     of the tenant's deliveries, s = all | pending | delivered | failed
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.keys import RedisKeys

__all__ = ["INDEX_STATUSES", "WebhookKeys"]

INDEX_STATUSES = ("all", "pending", "delivered", "failed")


@dataclass(frozen=True)
class WebhookKeys:
    """Key builder of the webhook records of one deployment."""

    keys: RedisKeys

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    @property
    def events(self) -> str:
        """The stream the queue's scripts append ended objects to."""
        return self.keys.webhook_events

    @property
    def delivery_base(self) -> str:
        return f"{self.prefix}webhooks:delivery:"

    def delivery(self, delivery_id: str) -> str:
        return self.delivery_base + delivery_id

    @property
    def due(self) -> str:
        return f"{self.prefix}webhooks:due"

    def index(self, tenant: str, status: str = "all") -> str:
        if status not in INDEX_STATUSES:
            raise ValueError(f"delivery status {status!r} is invalid: expected one of {', '.join(INDEX_STATUSES)}")
        return f"{self.prefix}webhooks:index:{tenant}:{status}"
