"""The queue's shared core: configuration, the Redis connection, the scripts, and the `Claim` type.

`QueueCore` validates the settings, registers the Lua scripts (`orchestrator.lua.scripts`) and holds
the argument prefix every script shares; the three parts of `JobQueue` build on it:
`orchestrator.queue.submission` (admission), `orchestrator.queue.leases` (claim, renew, ack, fail)
and `orchestrator.queue.views` (read-only status views).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import redis

from orchestrator.jobs import PRIORITIES, JobSpec, Priority
from orchestrator.keys import DEFAULT_PREFIX, RedisKeys
from orchestrator.lua import claim_script, dead_scripts, list_scripts, scripts, workflow_scripts
from orchestrator.redis_conn import redis_client

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = ["DEFAULT_PRIORITY_WEIGHTS", "Claim", "QueueCore"]

# Share of claims that read each class first when all are backlogged (6:3:1 -> low gets >= 10%).
DEFAULT_PRIORITY_WEIGHTS: dict[Priority, int] = {Priority.HIGH: 6, Priority.NORMAL: 3, Priority.LOW: 1}
# One blocking XREAD never waits longer than this, so a consumer re-checks lapsed leases and due
# retries regularly and never outwaits a client-side socket timeout.
MAX_BLOCK_S = 1.0
MAX_CLAIM_COUNT = 1000
MAX_CHUNK_SIZE = 5000
MAX_CONSUMER_CHARS = 200
MAX_ERROR_CHARS = 4000  # longer error texts are cut (a traceback is not a status)


@dataclass(frozen=True, slots=True)
class Claim:
    """A job handed to one consumer under a lease. Pass it back to renew / ack / fail."""

    job_id: str
    entry_id: str  # the stream entry that carried the job this time
    priority: Priority
    token: str  # lease token: the attempt number, checked by every script
    attempt: int  # 1 for the first run, 2 for the first retry or takeover, ...
    consumer: str
    spec: JobSpec
    seed: int  # the sampling seed (given, or derived from the job id)
    tenant: str
    batch_id: str | None
    submitted_at: float  # Unix seconds, Redis server clock
    started_at: float  # when this claim was made (server clock)


def _s(value: Any) -> str:
    """Redis replies as text whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _opt_float(value: str | None) -> float | None:
    return float(value) if value else None


def _check_positive(name: str, value: float, *, minimum: float = 0.0) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} is invalid: expected a finite number")
    if value <= minimum:
        raise ValueError(f"{name} {value!r} is invalid: expected a number > {minimum}")
    return float(value)


def _clip_error(error: str) -> str:
    error = str(error)
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 3] + "..."


def _timings_json(timings: Mapping[str, float] | None) -> str:
    """Stage durations as compact JSON ("" for none); every value must be a finite number of seconds."""
    if not timings:
        return ""
    clean: dict[str, float] = {}
    for name, seconds in timings.items():
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
            raise ValueError(f"timing {name}={seconds!r} is invalid: expected a finite number of seconds")
        clean[str(name)] = float(seconds)
    return json.dumps(clean, separators=(",", ":"))


class QueueCore:
    """Configuration, connection and scripts shared by the queue's parts.

    `redis_client_or_url` is a `redis.Redis` (shared; either `decode_responses` setting works) or a
    URL (the queue then owns the connection pool and `close()` releases it).

    - `prefix`: key prefix of this deployment (every key starts with it).
    - `lease_s`: how long a claim survives without `renew`; a lapsed claim is taken over.
    - `max_attempts`: claims per job before it is dead-lettered (retries and takeovers count).
    - `backoff_base_s`, `backoff_max_s`: retry n waits about base * 2**(n-1), capped at max, with
      jitter (a uniform draw in the upper half of that delay).
    - `retention_s`: finished job records, their idempotency keys and finished batches expire then.
    - `consumer_group`: the stream consumer group shared by all engines of a deployment.
    - `priority_weights`: claims per rotation that read each class first (default 6:3:1).
    - `dead_letter_maxlen`: approximate cap of the dead-letter stream.
    """

    def __init__(
        self,
        redis_client_or_url: redis.Redis | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_s: float = 60.0,
        max_attempts: int = 5,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 600.0,
        retention_s: int = 7 * 24 * 3600,
        consumer_group: str = "engine",
        priority_weights: Mapping[Priority | str, int] | None = None,
        dead_letter_maxlen: int = 100_000,
    ) -> None:
        self.lease_s = _check_positive("lease_s", lease_s, minimum=0.01)
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts!r} is invalid: expected an integer >= 1")
        self.max_attempts = max_attempts
        self.backoff_base_s = _check_positive("backoff_base_s", backoff_base_s)
        self.backoff_max_s = _check_positive("backoff_max_s", backoff_max_s)
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError(f"backoff_base_s ({backoff_base_s}) must not exceed backoff_max_s ({backoff_max_s})")
        if not isinstance(retention_s, int) or isinstance(retention_s, bool) or retention_s < 1:
            raise ValueError(f"retention_s {retention_s!r} is invalid: expected an integer >= 1 (seconds)")
        self.retention_s = retention_s
        if not isinstance(consumer_group, str) or not consumer_group or consumer_group.isspace():
            raise ValueError(f"consumer_group {consumer_group!r} is invalid: expected a non-empty name")
        self.consumer_group = consumer_group
        weights = dict(DEFAULT_PRIORITY_WEIGHTS)
        for name, weight in (priority_weights or {}).items():
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
                raise ValueError(f"priority weight {name}={weight!r} is invalid: expected an integer >= 1")
            weights[Priority(name)] = weight
        self.priority_weights = weights
        if not isinstance(dead_letter_maxlen, int) or dead_letter_maxlen < 1:
            raise ValueError(f"dead_letter_maxlen {dead_letter_maxlen!r} is invalid: expected an integer >= 1")

        self.keys = RedisKeys(prefix)
        self._r, self._owns_client = redis_client(redis_client_or_url)

        self._lease_ms = max(1, round(self.lease_s * 1000))
        # Lapsed leases are looked for at least four times per lease (bounded to [50 ms, 5 s]).
        self._reclaim_interval_s = min(5.0, max(0.05, self.lease_s / 4))
        self._next_reclaim_at = 0.0
        self._groups_ready = False
        self._common = [
            self.keys.job_base,
            self.keys.batch_base,
            self.keys.batch_failures_base,
            self.keys.dead_letter,
            str(dead_letter_maxlen),
            str(self.retention_s),
            self.consumer_group,
            self.keys.stream_base,
            self.keys.delayed_base,
            self.keys.workflow_base,
            self.keys.webhook_events,
            self.keys.tenant_jobs_base,
            self.keys.tenant_batches_base,
            self.keys.batch_jobs_base,
        ]
        n = len(PRIORITIES)
        self._claim_keys = (
            [self.keys.stream(p) for p in PRIORITIES]
            + [self.keys.delayed(p) for p in PRIORITIES]
            + [self.keys.autoclaim_cursor(p) for p in PRIORITIES]
            + [self.keys.claim_seq]
        )
        self._claim_head = [str(n), *(p.value for p in PRIORITIES), *(str(weights[p]) for p in PRIORITIES)]
        self._submit = self._r.register_script(scripts.SUBMIT)
        self._claim = self._r.register_script(claim_script.CLAIM)
        self._renew = self._r.register_script(scripts.RENEW)
        self._stage = self._r.register_script(scripts.STAGE)
        self._complete = self._r.register_script(scripts.COMPLETE)
        self._fail = self._r.register_script(scripts.FAIL)
        self._cancel = self._r.register_script(scripts.CANCEL)
        self._submit_workflow = self._r.register_script(workflow_scripts.SUBMIT_WORKFLOW)
        self._cancel_workflow = self._r.register_script(workflow_scripts.CANCEL_WORKFLOW)
        self._list_page = self._r.register_script(list_scripts.LIST_PAGE)
        self._requeue_dead = self._r.register_script(dead_scripts.REQUEUE_DEAD)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Self:
        """A queue configured by `Settings` (a new connection from `settings.redis_url` unless given)."""
        return cls(client if client is not None else settings.redis_url, **settings.queue_kwargs())

    def close(self) -> None:
        """Release the connection pool if this queue created it."""
        if self._owns_client:
            self._r.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def redis(self) -> redis.Redis:
        return self._r

    def ensure_groups(self) -> None:
        """Create the priority streams and their consumer group if missing (idempotent)."""
        for stream in self.keys.streams():
            try:
                # From id 0, so entries submitted before the group existed are not skipped.
                self._r.xgroup_create(stream, self.consumer_group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True
