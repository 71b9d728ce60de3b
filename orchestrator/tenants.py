"""Tenants of the HTTP API: API keys, per-tenant limits, rate limiting and the in-flight quota.

State in Redis (under the deployment prefix `P`; every key is built by `orchestrator.keys.RedisKeys`)::

    P tenant:{tenant_id}          hash: the tenant record (limits, allowed input locations, admin flag,
                                  webhook signing secret and the previous one after a rotation)
    P apikey:{sha256 hex}         hash: tenant id, key id, creation time of one API key
    P tenants                     set of tenant ids
    P tenant-keys:{tenant_id}     set of the SHA-256 hex of the tenant's API keys
    P tenant-rate:{tenant_id}     GCRA state of the submissions-per-minute limit (ms timestamp)
    P tenant-inflight:{tenant_id} sorted set: job id -> reservation time (ms) of unfinished jobs

A tenant with `admin` set may use the operator routes (`/v1/admin/...`). Its webhook secret
(`whsec_...`, `webhook_secret`) is created on first use and signs every delivery to the tenant;
after a rotation the previous secret also signs deliveries for a while (`webhook_signing_secrets`).

Only the SHA-256 of a key is stored: a key is shown once, when it is issued, and a leaked Redis
dump cannot be replayed against the API. The key id (the first 12 hex digits of the hash) names a
key in listings and revocations without revealing it.

Admission (`TenantStore.admit`) is one Lua script, so concurrent API replicas cannot overshoot:

- rate limit: a generic cell-rate algorithm (one timestamp per tenant) allowing
  `submissions_per_minute` submissions per rolling minute, bursts included; a refusal carries the
  wait until the next submission fits (`Retry-After`).
- in-flight quota: job ids are reserved in the tenant's sorted set before they are queued. Only
  when the set looks full does the script drop jobs that reached a final state (or reservations
  that never became jobs within a grace period), so the usual case costs O(1).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.errors import OrchestratorError
from orchestrator.jobs import FINAL_STATUSES, MAX_DURATION_S, MAX_STEPS, validate_id
from orchestrator.keys import DEFAULT_PREFIX, RedisKeys
from orchestrator.redis_conn import redis_client
from orchestrator.storage import InputPolicy
from orchestrator.webhooks.signing import new_secret

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeyInfo",
    "QuotaExceeded",
    "RateLimited",
    "Tenant",
    "TenantExists",
    "TenantLimits",
    "TenantNotFound",
    "TenantStore",
    "hash_api_key",
]

API_KEY_PREFIX = "aok_"
MAX_API_KEY_CHARS = 200  # longer bearer tokens are refused before hashing
KEY_ID_CHARS = 12
# A reservation that did not become a job record within this time is treated as abandoned
# (the submitting API replica died between reserving and queueing).
RESERVATION_GRACE_S = 60.0
RATE_WINDOW_S = 60.0
# How long a client is told to wait when its in-flight quota is full: jobs take seconds to minutes.
QUOTA_RETRY_AFTER_S = 10

DEFAULT_MAX_IN_FLIGHT = 10_000
DEFAULT_SUBMISSIONS_PER_MINUTE = 600
MAX_IN_FLIGHT_LIMIT = 1_000_000
MAX_SUBMISSIONS_PER_MINUTE = 1_000_000
MAX_ALLOWED_INPUT_RULES = 100


# --------------------------------------------------------------------------- errors


class TenantExists(OrchestratorError, ValueError):
    """A tenant with this id already exists."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} already exists")
        self.tenant_id = tenant_id


class TenantNotFound(OrchestratorError, KeyError):
    """No tenant with this id."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(tenant_id)
        self.tenant_id = tenant_id

    def __str__(self) -> str:
        return f"tenant {self.tenant_id!r} not found"


class RateLimited(OrchestratorError):
    """Too many submissions in the last minute; retry after `retry_after_s` seconds."""

    def __init__(self, tenant_id: str, limit_per_minute: int, retry_after_s: float) -> None:
        super().__init__(
            f"tenant {tenant_id!r} is limited to {limit_per_minute} submissions per minute; "
            f"retry in {retry_after_s:.1f} s"
        )
        self.tenant_id = tenant_id
        self.limit_per_minute = limit_per_minute
        self.retry_after_s = retry_after_s


class QuotaExceeded(OrchestratorError):
    """Accepting `requested` more jobs would put the tenant over its in-flight quota."""

    def __init__(self, tenant_id: str, in_flight: int, requested: int, limit: int) -> None:
        super().__init__(
            f"tenant {tenant_id!r} has {in_flight} jobs in flight; {requested} more would exceed its quota of {limit}"
        )
        self.tenant_id = tenant_id
        self.in_flight = in_flight
        self.requested = requested
        self.limit = limit
        self.retry_after_s = float(QUOTA_RETRY_AFTER_S)


# --------------------------------------------------------------------------- keys


# --------------------------------------------------------------------------- records


class TenantLimits(BaseModel):
    """What a tenant may do. Every field has a bound; the defaults suit a small customer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int = Field(default=DEFAULT_MAX_IN_FLIGHT, ge=1, le=MAX_IN_FLIGHT_LIMIT, strict=True)
    submissions_per_minute: int = Field(
        default=DEFAULT_SUBMISSIONS_PER_MINUTE, ge=1, le=MAX_SUBMISSIONS_PER_MINUTE, strict=True
    )
    max_duration_s: float = Field(default=MAX_DURATION_S, gt=0, le=MAX_DURATION_S)
    max_steps: int = Field(default=MAX_STEPS, ge=1, le=MAX_STEPS, strict=True)
    # Extra S3 locations (`bucket`, `s3://bucket/prefix/`, `{tenant}` allowed) the tenant may name
    # as inputs, beyond its own prefix in the results bucket.
    allowed_input_s3: tuple[str, ...] = Field(default=(), max_length=MAX_ALLOWED_INPUT_RULES)

    @field_validator("allowed_input_s3")
    @classmethod
    def _check_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        InputPolicy(value)  # raises ValueError naming a bad rule
        return value


class Tenant(BaseModel):
    """One customer: its id (also its storage prefix segment), limits and state."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    limits: TenantLimits = TenantLimits()
    disabled: bool = False
    admin: bool = False  # may use the operator routes (dead letters)
    created_at: float = 0.0  # Unix seconds

    @field_validator("tenant_id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return validate_id(value, "tenant")

    def input_policy(self) -> InputPolicy:
        """The tenant's own extra input rules (the results-bucket prefix rule lives in storage)."""
        return InputPolicy(self.limits.allowed_input_s3)


@dataclass(frozen=True)
class ApiKeyInfo:
    """What is stored about one API key (never the key itself)."""

    key_id: str
    tenant_id: str
    created_at: float


def hash_api_key(api_key: str) -> str:
    """Hex SHA-256 of an API key: the only form in which keys are stored."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- admission script

# KEYS: rate, in-flight set. ARGV: job_base, submissions per minute, max in flight, grace ms,
# n, job ids... Returns {0, in_flight} on success, {1, wait_ms} when rate limited,
# {2, in_flight} when the quota is full. Nothing changes unless the result is 0.
_ADMIT = """
local rate_key, inflight_key = KEYS[1], KEYS[2]
local job_base = ARGV[1]
local per_minute = tonumber(ARGV[2])
local max_inflight = tonumber(ARGV[3])
local grace_ms = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- GCRA: each submission advances the theoretical arrival time by one emission interval;
-- up to a minute's worth of submissions may be ahead of now (the burst).
local window = 60000
local interval = window / per_minute
local tat = tonumber(redis.call('GET', rate_key) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > window then
  return {1, math.ceil(new_tat - now - window)}
end

local count = redis.call('ZCARD', inflight_key)
if count + n > max_inflight then
  local members = redis.call('ZRANGE', inflight_key, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local id, reserved_at = members[i], tonumber(members[i + 1])
    local status = redis.call('HGET', job_base .. id, 'status')
    if status then
      if FINAL[status] then redis.call('ZREM', inflight_key, id) end
    elseif now - reserved_at > grace_ms then
      redis.call('ZREM', inflight_key, id)
    end
  end
  count = redis.call('ZCARD', inflight_key)
  if count + n > max_inflight then
    return {2, count}
  end
end

for i = 1, n do
  redis.call('ZADD', inflight_key, now, ARGV[5 + i])
end
redis.call('SET', rate_key, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {0, count + n}
"""


# KEYS: tenant hash. ARGV: new secret. The current secret becomes the previous one.
_ROTATE_SECRET = """
local t = redis.call('TIME')
local current = redis.call('HGET', KEYS[1], 'webhook_secret')
if current then
  redis.call('HSET', KEYS[1], 'webhook_secret_previous', current, 'webhook_secret_rotated_at', t[1])
end
redis.call('HSET', KEYS[1], 'webhook_secret', ARGV[1])
return 1
"""


def _admit_script() -> str:
    final = ", ".join(f"[{json.dumps(s.value)}] = true" for s in sorted(FINAL_STATUSES))
    return f"local FINAL = {{{final}}}\n" + _ADMIT


# --------------------------------------------------------------------------- the store


class TenantStore:
    """Tenants, their API keys and admission control, in Redis.

    `redis_client_or_url` is a shared `redis.Redis` or a URL (then `close()` releases the pool).
    """

    def __init__(self, redis_client_or_url: redis.Redis | str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.keys = RedisKeys(prefix)
        self._r, self._owns_client = redis_client(redis_client_or_url)
        self._admit = self._r.register_script(_admit_script())
        self._rotate = self._r.register_script(_ROTATE_SECRET)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> TenantStore:
        return cls(client if client is not None else settings.redis_url, prefix=settings.redis_prefix)

    def close(self) -> None:
        if self._owns_client:
            self._r.close()

    @property
    def redis(self) -> redis.Redis:
        return self._r

    # ----------------------------------------------------------------------- tenants

    def create(self, tenant_id: str, limits: TenantLimits | None = None, *, admin: bool = False) -> Tenant:
        """Create a tenant; raises `TenantExists` if the id is taken."""
        tenant = Tenant(tenant_id=tenant_id, limits=limits or TenantLimits(), admin=admin, created_at=time.time())
        if not self._r.hsetnx(self.keys.tenant(tenant_id), "created_at", repr(tenant.created_at)):
            raise TenantExists(tenant_id)
        self._write(tenant)
        return tenant

    def update(
        self,
        tenant_id: str,
        *,
        limits: TenantLimits | None = None,
        disabled: bool | None = None,
        admin: bool | None = None,
    ) -> Tenant:
        """Change a tenant's limits, disable or re-enable it, grant or withdraw the admin role."""
        current = self.get(tenant_id)
        if current is None:
            raise TenantNotFound(tenant_id)
        changes: dict[str, Any] = {}
        if limits is not None:
            changes["limits"] = limits
        if disabled is not None:
            changes["disabled"] = bool(disabled)
        if admin is not None:
            changes["admin"] = bool(admin)
        tenant = current.model_copy(update=changes)
        self._write(tenant)
        return tenant

    def _write(self, tenant: Tenant) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(
            self.keys.tenant(tenant.tenant_id),
            mapping={
                "created_at": repr(tenant.created_at),
                "disabled": "1" if tenant.disabled else "0",
                "admin": "1" if tenant.admin else "0",
                "limits": tenant.limits.model_dump_json(),
            },
        )
        pipe.sadd(self.keys.tenants, tenant.tenant_id)
        pipe.execute()

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant, or None if unknown (or the id is not a valid tenant id)."""
        try:
            validate_id(tenant_id, "tenant")
        except ValueError:
            return None
        raw = self._r.hgetall(self.keys.tenant(tenant_id))
        if not raw:
            return None
        fields = {_s(k): _s(v) for k, v in raw.items()}
        limits = TenantLimits.model_validate_json(fields["limits"]) if fields.get("limits") else TenantLimits()
        return Tenant(
            tenant_id=tenant_id,
            limits=limits,
            disabled=fields.get("disabled") == "1",
            admin=fields.get("admin") == "1",
            created_at=float(fields.get("created_at") or 0.0),
        )

    def input_policy(self, tenant_id: str) -> InputPolicy | None:
        """The tenant's own extra S3 input rules, or None (unknown tenant, or no rules of its own)."""
        tenant = self.get(tenant_id)
        if tenant is None or not tenant.limits.allowed_input_s3:
            return None
        return tenant.input_policy()

    def list_tenants(self) -> list[Tenant]:
        """All tenants, sorted by id."""
        ids = sorted(_s(t) for t in self._r.smembers(self.keys.tenants))
        return [t for t in (self.get(i) for i in ids) if t is not None]

    # ----------------------------------------------------------------------- webhook secrets

    def webhook_secret(self, tenant_id: str) -> str:
        """The tenant's webhook signing secret (`whsec_...`), created on first use."""
        key = self._existing(tenant_id)
        self._r.hsetnx(key, "webhook_secret", new_secret())
        return _s(self._r.hget(key, "webhook_secret"))

    def rotate_webhook_secret(self, tenant_id: str) -> str:
        """A new secret for the tenant; the one it replaces is kept as the previous secret."""
        key = self._existing(tenant_id)
        secret = new_secret()
        self._rotate(keys=[key], args=[secret])
        return secret

    def webhook_signing_secrets(self, tenant_id: str, *, overlap_s: float) -> list[str]:
        """The secrets a delivery is signed with: the current one (created on first use), and the
        previous one while its rotation is less than `overlap_s` old."""
        current = self.webhook_secret(tenant_id)
        previous, rotated_at = self._r.hmget(
            self.keys.tenant(tenant_id), "webhook_secret_previous", "webhook_secret_rotated_at"
        )
        if previous and rotated_at and time.time() - float(_s(rotated_at)) < overlap_s:
            return [current, _s(previous)]
        return [current]

    def _existing(self, tenant_id: str) -> str:
        if self.get(tenant_id) is None:
            raise TenantNotFound(tenant_id)
        return self.keys.tenant(tenant_id)

    # ----------------------------------------------------------------------- API keys

    def issue_key(self, tenant_id: str) -> str:
        """A new API key for the tenant. The key is returned once and only its hash is stored."""
        if self.get(tenant_id) is None:
            raise TenantNotFound(tenant_id)
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_api_key(api_key)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(
            self.keys.api_key(digest),
            mapping={"tenant": tenant_id, "key_id": digest[:KEY_ID_CHARS], "created_at": repr(time.time())},
        )
        pipe.sadd(self.keys.tenant_api_keys(tenant_id), digest)
        pipe.execute()
        return api_key

    def api_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's keys (ids and creation times), oldest first."""
        digests = [_s(d) for d in self._r.smembers(self.keys.tenant_api_keys(tenant_id))]
        pipe = self._r.pipeline(transaction=False)
        for digest in digests:
            pipe.hget(self.keys.api_key(digest), "created_at")
        infos = [
            ApiKeyInfo(key_id=d[:KEY_ID_CHARS], tenant_id=tenant_id, created_at=float(_s(c) or 0.0))
            for d, c in zip(digests, pipe.execute() if digests else [], strict=True)
        ]
        return sorted(infos, key=lambda k: (k.created_at, k.key_id))

    def revoke(self, tenant_id: str, key_id: str | None = None) -> int:
        """Revoke one key of the tenant (by key id) or, without `key_id`, all of them.
        Returns how many keys were revoked; takes effect on the next request."""
        digests = [_s(d) for d in self._r.smembers(self.keys.tenant_api_keys(tenant_id))]
        if key_id is not None:
            digests = [d for d in digests if d[:KEY_ID_CHARS] == key_id]
        if not digests:
            return 0
        pipe = self._r.pipeline(transaction=True)
        for digest in digests:
            pipe.delete(self.keys.api_key(digest))
            pipe.srem(self.keys.tenant_api_keys(tenant_id), digest)
        pipe.execute()
        return len(digests)

    def authenticate(self, api_key: str) -> Tenant | None:
        """The enabled tenant that owns `api_key`, or None (unknown, revoked, malformed, disabled)."""
        if not isinstance(api_key, str) or not 1 <= len(api_key) <= MAX_API_KEY_CHARS:
            return None
        tenant_id = self._r.hget(self.keys.api_key(hash_api_key(api_key)), "tenant")
        if tenant_id is None:
            return None
        tenant = self.get(_s(tenant_id))
        if tenant is None or tenant.disabled:
            return None
        return tenant

    # ----------------------------------------------------------------------- admission

    def admit(self, tenant: Tenant, job_ids: Sequence[str]) -> int:
        """Count one submission against the rate limit and reserve `job_ids` in the in-flight
        quota, atomically. Returns the tenant's jobs in flight including these.

        Raises `RateLimited` or `QuotaExceeded` (nothing is counted or reserved then)."""
        if not job_ids:
            raise ValueError("admit needs at least one job id")
        limits = tenant.limits
        reply = self._admit(
            keys=[self.keys.tenant_rate(tenant.tenant_id), self.keys.tenant_in_flight(tenant.tenant_id)],
            args=[
                self.keys.job_base,
                str(limits.submissions_per_minute),
                str(limits.max_in_flight),
                str(round(RESERVATION_GRACE_S * 1000)),
                str(len(job_ids)),
                *job_ids,
            ],
        )
        outcome, value = int(reply[0]), int(reply[1])
        if outcome == 1:
            raise RateLimited(tenant.tenant_id, limits.submissions_per_minute, value / 1000)
        if outcome == 2:
            raise QuotaExceeded(tenant.tenant_id, value, len(job_ids), limits.max_in_flight)
        return value

    def release(self, tenant_id: str, job_ids: Iterable[str]) -> None:
        """Drop reservations that did not become jobs (the submit failed, or an idempotent
        re-submit returned an existing job instead)."""
        ids = list(job_ids)
        for start in range(0, len(ids), 1000):
            self._r.zrem(self.keys.tenant_in_flight(tenant_id), *ids[start : start + 1000])

    def in_flight(self, tenant_id: str) -> int:
        """Reserved (not yet pruned) jobs of the tenant: an upper bound of its unfinished jobs."""
        return int(self._r.zcard(self.keys.tenant_in_flight(tenant_id)))


def retry_after_header(seconds: float) -> str:
    """`Retry-After` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
