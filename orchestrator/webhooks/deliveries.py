"""Webhook events and delivery records in Redis: every state change is one Lua script.

An *event* is a stream entry the queue appends when an object with a `webhook_url` ends
(`object job|batch|workflow id <id> event <...> tenant <t> url <u>`). A dispatcher turns it into a
*delivery* (`intake`: the record, its due time and listing entries are written and the stream entry
acknowledged in one script, and written once however often the entry is read), then *claims* due
deliveries under a lease token (a claimed delivery's due time moves to the lease's end, so a dead
dispatcher's delivery becomes due again) and *finishes* each attempt: delivered, retry at a time,
or failed. A finish whose lease token is no longer the record's (the lease lapsed and another
dispatcher took the delivery over) changes nothing.

A delivery's id is `msg_<stream entry id>`: the `webhook-id` header, the same on every attempt.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from orchestrator.keys import RedisKeys
from orchestrator.webhooks.keys import WebhookKeys

__all__ = [
    "DELIVERY_STATUSES",
    "EVENTS",
    "MAX_PAGE",
    "Claimed",
    "DeliveryPage",
    "DeliveryStatus",
    "DeliveryStore",
    "DeliveryView",
    "Event",
    "parse_event",
]

DeliveryStatus = Literal["pending", "delivered", "failed"]
ObjectKind = Literal["job", "batch", "workflow"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed")
# The events each kind of object emits.
EVENTS: dict[str, frozenset[str]] = {
    "job": frozenset({"succeeded", "failed", "cancelled"}),
    "workflow": frozenset({"succeeded", "failed", "cancelled"}),
    "batch": frozenset({"completed"}),
}
MAX_ERROR_CHARS = 500
MAX_PAGE = 200
_MEMBER_RE = re.compile(r"^\d{13}:msg_\d{1,20}-\d{1,20}$")


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One stream entry of the queue: an object that ended, and where its tenant wants to hear of it."""

    entry_id: str
    object: ObjectKind
    object_id: str
    event: str
    tenant: str
    url: str

    @property
    def type(self) -> str:
        """The delivery's `type`: `job.succeeded`, `batch.completed`, `workflow.cancelled`, ..."""
        return f"{self.object}.{self.event}"

    @property
    def delivery_id(self) -> str:
        return "msg_" + self.entry_id

    @property
    def occurred_ms(self) -> int:
        """When the queue appended the event (the stream id's time part)."""
        return int(self.entry_id.split("-", 1)[0])


def parse_event(entry_id: Any, fields: Mapping[Any, Any]) -> Event:
    """The event of one stream entry; ValueError naming what is wrong with a malformed one."""
    entry = _s(entry_id)
    if not re.fullmatch(r"\d{1,20}-\d{1,20}", entry):
        raise ValueError(f"stream entry id {entry!r} is not a Redis stream id")
    values = {_s(k): _s(v) for k, v in fields.items()}
    missing = [name for name in ("object", "id", "event", "tenant", "url") if not values.get(name)]
    if missing:
        raise ValueError(f"webhook event {entry} lacks {', '.join(missing)}")
    kind, event = values["object"], values["event"]
    if kind not in EVENTS:
        raise ValueError(f"webhook event {entry}: object {kind!r} is not one of {', '.join(sorted(EVENTS))}")
    if event not in EVENTS[kind]:
        raise ValueError(f"webhook event {entry}: {kind} event {event!r} is not one of {sorted(EVENTS[kind])}")
    return Event(
        entry_id=entry,
        object=kind,  # type: ignore[arg-type]  # checked against EVENTS above
        object_id=values["id"],
        event=event,
        tenant=values["tenant"],
        url=values["url"],
    )


# --------------------------------------------------------------------------- views


class DeliveryView(BaseModel):
    """One webhook delivery as its tenant sees it (`GET /v1/webhooks/deliveries`)."""

    delivery_id: str = Field(description="the webhook-id header of every attempt")
    type: str = Field(description="job.succeeded, job.failed, job.cancelled, workflow.<...>, batch.completed")
    object: ObjectKind
    object_id: str
    url: str
    status: DeliveryStatus
    attempts: int = Field(description="attempts started so far")
    last_status_code: int | None = Field(None, description="HTTP status of the last answered attempt")
    last_error: str | None = None
    next_attempt_at: float | None = Field(None, description="Unix seconds of the next attempt (pending only)")
    created_at: float
    delivered_at: float | None = None


class DeliveryPage(BaseModel):
    items: list[DeliveryView]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next (older) page")


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt under `token`."""

    delivery_id: str
    token: str
    tenant: str
    url: str
    body: str
    attempts: int  # including this one


def _opt_float(value: str) -> float | None:
    return float(value) if value else None


def _view(fields: Mapping[str, str]) -> DeliveryView:
    return DeliveryView(
        delivery_id=fields["delivery_id"],
        type=fields["type"],
        object=fields["object"],  # type: ignore[arg-type]  # written from a parsed Event
        object_id=fields["object_id"],
        url=fields["url"],
        status=fields["status"],  # type: ignore[arg-type]  # written by the scripts below
        attempts=int(fields.get("attempts") or 0),
        last_status_code=int(fields["last_status_code"]) if fields.get("last_status_code") else None,
        last_error=fields.get("last_error") or None,
        next_attempt_at=_opt_float(fields.get("next_attempt_at", "")),
        created_at=float(fields.get("created_at") or 0.0),
        delivered_at=_opt_float(fields.get("delivered_at", "")),
    )


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The listing position a cursor names; ValueError for anything `encode_cursor` did not make."""
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        member = ""
    if not _MEMBER_RE.match(member):
        raise ValueError(f"cursor {cursor[:80]!r} is invalid: pass the next_cursor of a previous page")
    return member


# --------------------------------------------------------------------------- scripts

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: stream, due, delivery, index all, pending, delivered, failed.
# ARGV: group, entry id, delivery id, tenant, type, object, object id, url, body, retention ms.
_INTAKE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then
  local member = string.format('%013d', now_ms) .. ':' .. ARGV[3]
  redis.call('HSET', KEYS[3], 'delivery_id', ARGV[3], 'tenant', ARGV[4], 'type', ARGV[5],
    'object', ARGV[6], 'object_id', ARGV[7], 'url', ARGV[8], 'body', ARGV[9], 'status', 'pending',
    'attempts', 0, 'created_at', tostring(now_ms / 1000), 'next_attempt_at', tostring(now_ms / 1000),
    'index_member', member, 'event_id', ARGV[2])
  redis.call('ZADD', KEYS[2], now_ms, ARGV[3])
  redis.call('ZADD', KEYS[4], 0, member)
  redis.call('ZADD', KEYS[5], 0, member)
  local cutoff = '(' .. string.format('%013d', now_ms - tonumber(ARGV[10]))
  for i = 4, 7 do redis.call('ZREMRANGEBYLEX', KEYS[i], '-', cutoff) end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: due. ARGV: delivery base, lease ms, token, max count. Returns the claimed ids.
_CLAIM = (
    _NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == 'pending' then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), id)
    redis.call('HSET', key, 'lease', ARGV[3], 'next_attempt_at', '')
    redis.call('HINCRBY', key, 'attempts', 1)
    out[#out + 1] = id
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""
)

# KEYS: due, delivery, index pending, delivered, failed.
# ARGV: delivery id, token, outcome (delivered|retry|failed), status code or '', error, delay ms, retention s.
_FINISH = (
    _NOW
    + """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], 'lease')
redis.call('HSET', KEYS[2], 'last_status_code', ARGV[4], 'last_error', ARGV[5],
  'last_attempt_at', tostring(now_ms / 1000))
if ARGV[3] == 'retry' then
  local at = now_ms + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[1], at, ARGV[1])
  redis.call('HSET', KEYS[2], 'next_attempt_at', tostring(at / 1000))
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
local member = redis.call('HGET', KEYS[2], 'index_member')
redis.call('ZREM', KEYS[3], member)
if ARGV[3] == 'delivered' then
  redis.call('HSET', KEYS[2], 'status', 'delivered', 'delivered_at', tostring(now_ms / 1000), 'next_attempt_at', '')
  redis.call('ZADD', KEYS[4], 0, member)
else
  redis.call('HSET', KEYS[2], 'status', 'failed', 'next_attempt_at', '')
  redis.call('ZADD', KEYS[5], 0, member)
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
return 1
"""
)


# --------------------------------------------------------------------------- the store


class DeliveryStore:
    """Delivery records of one deployment (`keys`) over a shared Redis client."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, retention_s: int = 7 * 24 * 3600) -> None:
        self._r = client
        self.keys = WebhookKeys(keys)
        self.retention_s = retention_s
        self._intake = client.register_script(_INTAKE)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    def intake(self, event: Event, *, group: str, body: str) -> None:
        """Write the event's delivery (once) and acknowledge and drop its stream entry."""
        k = self.keys
        self._intake(
            keys=[
                k.events,
                k.due,
                k.delivery(event.delivery_id),
                *(k.index(event.tenant, s) for s in ("all", *DELIVERY_STATUSES)),
            ],
            args=[
                group,
                event.entry_id,
                event.delivery_id,
                event.tenant,
                event.type,
                event.object,
                event.object_id,
                event.url,
                body,
                str(self.retention_s * 1000),
            ],
        )

    def drop_event(self, entry_id: str, *, group: str) -> None:
        """Acknowledge and delete a stream entry that cannot become a delivery (malformed)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.xack(self.keys.events, group, entry_id)
        pipe.xdel(self.keys.events, entry_id)
        pipe.execute()

    def claim(self, count: int, *, lease_s: float) -> list[Claimed]:
        """Take up to `count` due deliveries for one attempt each, leased for `lease_s`."""
        token = uuid.uuid4().hex
        ids = [
            _s(i)
            for i in self._claim(
                keys=[self.keys.due], args=[self.keys.delivery_base, round(lease_s * 1000), token, count]
            )
        ]
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hmget(self.keys.delivery(delivery_id), "tenant", "url", "body", "attempts")
        claimed = []
        for delivery_id, (tenant, url, body, attempts) in zip(ids, pipe.execute(), strict=True):
            claimed.append(Claimed(delivery_id, token, _s(tenant), _s(url), _s(body), int(_s(attempts) or 0)))
        return claimed

    def finish(
        self,
        claimed: Claimed,
        outcome: Literal["delivered", "retry", "failed"],
        *,
        status_code: int | None = None,
        error: str = "",
        delay_s: float = 0.0,
    ) -> bool:
        """Record an attempt's outcome; False (nothing changed) when the lease was taken over."""
        k = self.keys
        tenant = claimed.tenant
        done = self._finish(
            keys=[k.due, k.delivery(claimed.delivery_id), *(k.index(tenant, s) for s in DELIVERY_STATUSES)],
            args=[
                claimed.delivery_id,
                claimed.token,
                outcome,
                "" if status_code is None else str(status_code),
                error[:MAX_ERROR_CHARS],
                str(max(0, round(delay_s * 1000))),
                str(self.retention_s),
            ],
        )
        return bool(done)

    def next_due_in_s(self) -> float | None:
        """Seconds until the earliest pending delivery is due (0 if overdue), None if none is pending."""
        first = self._r.zrange(self.keys.due, 0, 0, withscores=True)
        if not first:
            return None
        seconds, micros = self._r.time()
        now_ms = seconds * 1000 + micros // 1000
        return max(0.0, (float(first[0][1]) - now_ms) / 1000)

    def get(self, delivery_id: str) -> DeliveryView | None:
        raw = self._r.hgetall(self.keys.delivery(delivery_id))
        return _view({_s(k): _s(v) for k, v in raw.items()}) if raw else None

    def page(
        self, tenant: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DeliveryPage:
        """The tenant's deliveries, newest first, optionally of one status. ValueError for a bad
        status, limit or cursor. A page may hold fewer than `limit` items when records expired."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit {limit} is invalid: expected 1-{MAX_PAGE}")
        index = self.keys.index(tenant, status or "all")
        start = "(" + decode_cursor(cursor) if cursor else "+"
        members = [_s(m) for m in self._r.zrevrangebylex(index, start, "-", start=0, num=limit + 1)]
        more = len(members) > limit
        members = members[:limit]
        pipe = self._r.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self.keys.delivery(member.split(":", 1)[1]))
        items = []
        for raw in pipe.execute() if members else []:
            if raw:
                items.append(_view({_s(k): _s(v) for k, v in raw.items()}))
        return DeliveryPage(items=items, next_cursor=encode_cursor(members[-1]) if more else None)

    def pending_events(self, *, group: str) -> int:
        """Events read by a dispatcher but not yet turned into deliveries."""
        try:
            info = self._r.xpending(self.keys.events, group)
        except redis.ResponseError:
            return 0
        return int(info.get("pending", 0))
