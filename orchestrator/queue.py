"""The job queue on Redis Streams: submit, claim under a lease, renew, ack, retry, dead-letter, cancel.

Shape (keys in `orchestrator.keys`, scripts in `orchestrator.lua.scripts`):

- One stream per priority class with one consumer group. An entry carries only the job id; the
  job's spec and state live in its hash, so a state change never rewrites the stream.
- `claim` is one Lua script: move due retries back from the delayed sets, take over entries whose
  lease lapsed (`XAUTOCLAIM` with min-idle = the lease), then read new entries from the priority
  streams in weighted rotation (no class starves). Each taken job gets a fresh lease token; a
  cancelled job is acknowledged and skipped; a malformed entry goes to the dead-letter stream.
  When nothing is ready, `claim` blocks on `XREAD` for newer entries (no polling).
- The lease is the entry's idle time in the pending list: `renew` resets it (`XCLAIM ... JUSTID`),
  a consumer that stops renewing for `lease_s` loses the job to the next claimer.
- `ack_success`, `fail`, `ack_cancelled`, `set_stage` and `renew` check the lease token inside
  their script, so a consumer whose job was taken over can change nothing (`LeaseLost`): every
  job ends in exactly one final state, counted once in its batch.
- `fail(retryable=True)` schedules a retry after exponential backoff with jitter (a sorted set
  scored by due time) until `max_attempts`, then the job is `dead` and copied to the dead-letter
  stream with its last error; `fail(retryable=False)` makes it `failed` at once.
- Finished job records, their idempotency keys and completed batches expire after `retention_s`
  (Redis EXPIRE; nothing to purge by hand).

Public API (stable; used by the engine, the CLI and the HTTP API)::

    q = JobQueue(redis_client_or_url, prefix=..., lease_s=..., max_attempts=..., backoff_base_s=...,
                 backoff_max_s=..., retention_s=..., consumer_group="engine")
    q = JobQueue.from_settings(settings)
    q.submit(spec) -> JobRecord                       # idempotent on spec.idempotency_key
    q.submit_batch(specs, batch_id=None, chunk_size=500) -> (batch_id, [job_id, ...])
    q.get(job_id) -> JobRecord | None;  q.get_many(job_ids) -> [JobRecord | None, ...]
    q.batch_status(batch_id, offset=0, limit=100) -> BatchStatus | None
    q.claim(consumer, count=1, block_ms=0) -> [Claim, ...]
    q.renew(claim) -> bool;  q.renew_many(claims) -> [bool, ...]   # False: lease lost, stop working
    q.set_stage(claim, stage, timings=None)            # raises LeaseLost
    q.ack_success(claim, result_uri, extra=None, timings=None)   # raises LeaseLost
    q.ack_success_many([(claim, result_uri[, extra]), ...]) -> [bool, ...]
    q.fail(claim, error, retryable=..., delay_s=None) -> JobStatus  # raises LeaseLost
    q.ack_cancelled(claim)                             # raises LeaseLost
    q.cancel(job_id) -> JobStatus                      # raises JobNotFound
    q.is_cancel_requested(job_id) -> bool
    q.queue_depths() -> {priority: queued + delayed};  q.running_count() -> int
    q.dead_letters(count=100, after="-") -> [dict, ...]
    q.retry_delay_s(attempt) -> float

The engine renews every `lease_s / 3` (e.g. `renew_many` from a heartbeat thread), checks
`is_cancel_requested` between stages, writes the result to storage *before* `ack_success`
(a crash in between replays the job, which rewrites the same key with the same bytes), and maps
exceptions with `orchestrator.errors.outcome_of`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from orchestrator.errors import InvalidJobSpec, JobNotFound, LeaseLost
from orchestrator.jobs import (
    MAX_BATCH_ID_CHARS,
    PRIORITIES,
    BatchFailure,
    BatchStatus,
    JobRecord,
    JobSpec,
    JobStatus,
    Priority,
    batch_job_id,
    new_batch_id,
    new_job_id,
    parse_spec,
    parse_spec_json,
    validate_id,
)
from orchestrator.keys import DEFAULT_PREFIX, RedisKeys
from orchestrator.lua import scripts
from orchestrator.redis_conn import redis_client

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = ["DEFAULT_PRIORITY_WEIGHTS", "Claim", "JobQueue"]

log = logging.getLogger(__name__)

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


class JobQueue:
    """A Redis Streams job queue with leases, retries, dead-lettering, cancel, priorities and batches.

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
        self._claim = self._r.register_script(scripts.CLAIM)
        self._renew = self._r.register_script(scripts.RENEW)
        self._stage = self._r.register_script(scripts.STAGE)
        self._complete = self._r.register_script(scripts.COMPLETE)
        self._fail = self._r.register_script(scripts.FAIL)
        self._cancel = self._r.register_script(scripts.CANCEL)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> JobQueue:
        """A queue configured by `Settings` (a new connection from `settings.redis_url` unless given)."""
        return cls(client if client is not None else settings.redis_url, **settings.queue_kwargs())

    def close(self) -> None:
        """Release the connection pool if this queue created it."""
        if self._owns_client:
            self._r.close()

    def __enter__(self) -> JobQueue:
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

    # ----------------------------------------------------------------------- submit

    def submit(self, spec: JobSpec | Mapping[str, Any], *, job_id: str | None = None) -> JobRecord:
        """Queue one job and return its record. With `spec.idempotency_key` (per tenant) or an
        existing `job_id`, a re-submit returns the existing job instead of creating a second one.
        A spec with `batch_id` joins (or starts) that batch. Raises `InvalidJobSpec`."""
        spec = parse_spec(spec)
        job_id = new_job_id() if job_id is None else validate_id(job_id, "job_id")
        submitted_at, rows = self._submit_chunk(spec.batch_id or "", spec.tenant, [(job_id, spec)])
        found_id, created = rows[0]
        if created:
            # Built from values validated above, so no second validation pass.
            return JobRecord.model_construct(
                job_id=job_id,
                status=JobStatus.QUEUED,
                tenant=spec.tenant,
                priority=spec.priority,
                batch_id=spec.batch_id,
                seed=spec.effective_seed(job_id),
                spec=spec,
                submitted_at=submitted_at,
            )
        record = self.get(found_id)
        if record is None:  # expired between the two calls: the key is free again
            return self.submit(spec, job_id=job_id)
        return record

    def submit_batch(
        self,
        specs: Iterable[JobSpec | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        chunk_size: int = 500,
    ) -> tuple[str, list[str]]:
        """Queue many jobs as one batch, `chunk_size` jobs per atomic script call.

        Every spec is validated before anything is written (`InvalidJobSpec` names each bad
        item as `specs[i].field`). All specs must share one tenant. Item i gets the job id
        `{batch_id}-{i}`, so re-submitting a batch under the same id creates nothing twice.
        Returns `(batch_id, job_ids)` in input order (existing ids where items already existed).
        """
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size {chunk_size!r} is invalid: expected an integer in [1, {MAX_CHUNK_SIZE}]")
        batch_id = (
            new_batch_id() if batch_id is None else validate_id(batch_id, "batch_id", max_chars=MAX_BATCH_ID_CHARS)
        )
        parsed: list[JobSpec] = []
        errors: list[tuple[str, str]] = []
        for i, item in enumerate(specs):
            try:
                spec = parse_spec(item)
            except InvalidJobSpec as exc:
                errors.extend((f"specs[{i}]" + (f".{f}" if f else ""), m) for f, m in exc.errors)
                continue
            if spec.batch_id is not None and spec.batch_id != batch_id:
                errors.append((f"specs[{i}].batch_id", f"{spec.batch_id!r} differs from the batch id {batch_id!r}"))
            parsed.append(spec)
        if errors:
            raise InvalidJobSpec(errors, what="batch")
        if not parsed:
            raise ValueError("a batch needs at least one job spec")
        tenants = {s.tenant for s in parsed}
        if len(tenants) > 1:
            raise ValueError(f"a batch belongs to one tenant; these specs name {sorted(tenants)}")
        tenant = parsed[0].tenant
        job_ids: list[str] = []
        for start in range(0, len(parsed), chunk_size):
            chunk = [(batch_job_id(batch_id, start + k), s) for k, s in enumerate(parsed[start : start + chunk_size])]
            _, rows = self._submit_chunk(batch_id, tenant, chunk)
            job_ids.extend(jid for jid, _ in rows)
        return batch_id, job_ids

    def _submit_chunk(
        self, batch_id: str, tenant: str, jobs: Sequence[tuple[str, JobSpec]]
    ) -> tuple[float, list[tuple[str, bool]]]:
        args = [*self._common, self.keys.stream_base, batch_id, tenant, str(len(jobs))]
        idem = self.keys.idempotency
        for job_id, spec in jobs:
            args += (
                job_id,
                spec.priority.value,
                spec.tenant,
                str(spec.effective_seed(job_id)),
                idem(spec.tenant, spec.idempotency_key) if spec.idempotency_key else "",
                spec.to_json(),
            )
        try:
            reply = self._submit(keys=[], args=args)
        except redis.ResponseError as exc:
            if "BATCHTENANT" in str(exc):
                raise ValueError(str(exc).split("BATCHTENANT ", 1)[-1].split(" script:")[0]) from None
            raise
        submitted_at = float(_s(reply[0]))
        rows = [(_s(reply[i]), int(reply[i + 1]) == 1) for i in range(1, len(reply), 2)]
        return submitted_at, rows

    # ----------------------------------------------------------------------- read

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if unknown or expired."""
        raw = self._r.hgetall(self.keys.job(job_id))
        return _record(job_id, raw) if raw else None

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records of many jobs in one round trip (None where unknown)."""
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [_record(j, raw) if raw else None for j, raw in zip(job_ids, pipe.execute(), strict=True)]

    def is_cancel_requested(self, job_id: str) -> bool:
        """True when the job was cancelled (or a cancel is pending for its running attempt)."""
        cancel, status = self._r.hmget(self.keys.job(job_id), ["cancel", "status"])
        return _s(cancel) == "1" or _s(status) == JobStatus.CANCELLED.value

    def batch_status(self, batch_id: str, *, offset: int = 0, limit: int = 100) -> BatchStatus | None:
        """Counts by status and the page `[offset, offset + limit)` of failed/dead jobs, or None."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset {offset!r} is invalid: expected an integer >= 0")
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit {limit!r} is invalid: expected an integer in [1, 1000]")
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(self.keys.batch(batch_id))
        pipe.llen(self.keys.batch_failures(batch_id))
        pipe.lrange(self.keys.batch_failures(batch_id), offset, offset + limit - 1)
        raw, failures_total, page = pipe.execute()
        if not raw:
            return None
        fields = {_s(k): _s(v) for k, v in raw.items()}
        page_ids = [_s(j) for j in page]
        pipe = self._r.pipeline(transaction=False)
        for job_id in page_ids:
            pipe.hmget(self.keys.job(job_id), ["status", "error"])
        failures = [
            BatchFailure(job_id=j, status=JobStatus(_s(st)) if st else None, error=_s(err) or None)
            for j, (st, err) in zip(page_ids, pipe.execute() if page_ids else [], strict=True)
        ]
        end = offset + len(page_ids)
        return BatchStatus(
            batch_id=batch_id,
            tenant=fields.get("tenant") or None,
            total=int(fields.get("total", 0)),
            counts={s: int(fields.get(s.value, 0)) for s in JobStatus},
            created_at=_opt_float(fields.get("created_at")),
            failures=failures,
            failures_total=int(failures_total),
            next_offset=end if end < int(failures_total) else None,
        )

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting per priority class (in the stream, not yet claimed, plus delayed retries).
        The autoscaler's backlog signal; one consistent snapshot."""
        if not self._groups_ready:
            self.ensure_groups()
        pipe = self._r.pipeline(transaction=True)
        for p in PRIORITIES:
            stream = self.keys.stream(p)
            pipe.xlen(stream)
            pipe.xpending(stream, self.consumer_group)
            pipe.zcard(self.keys.delayed(p))
        replies = pipe.execute()
        depths: dict[str, int] = {}
        for i, p in enumerate(PRIORITIES):
            length, pending, delayed = replies[3 * i : 3 * i + 3]
            depths[p.value] = max(0, int(length) - int(pending["pending"])) + int(delayed)
        return depths

    def running_count(self) -> int:
        """Jobs currently claimed (entries in the pending lists of all priority streams)."""
        if not self._groups_ready:
            self.ensure_groups()
        pipe = self._r.pipeline(transaction=False)
        for stream in self.keys.streams():
            pipe.xpending(stream, self.consumer_group)
        return sum(int(r["pending"]) for r in pipe.execute())

    def dead_letters(self, count: int = 100, *, after: str = "-") -> list[dict[str, str]]:
        """Oldest-first entries of the dead-letter stream (`after` = an entry id to page from)."""
        start = after if after == "-" else f"({after}"
        return [
            {"id": _s(eid), **{_s(k): _s(v) for k, v in fields.items()}}
            for eid, fields in self._r.xrange(self.keys.dead_letter, min=start, count=count)
        ]

    # ----------------------------------------------------------------------- claim

    def claim(self, consumer: str, *, count: int = 1, block_ms: int = 0) -> list[Claim]:
        """Take up to `count` jobs for `consumer`, waiting up to `block_ms` for one to arrive.

        Returns [] when nothing arrived in time. Jobs whose stored spec does not validate are
        failed with the validation error (and malformed entries dead-lettered) inside this call;
        they are never returned, and they never stop the caller.
        """
        if not isinstance(consumer, str) or not 1 <= len(consumer) <= MAX_CONSUMER_CHARS:
            raise ValueError(f"consumer {consumer!r} is invalid: expected a name of 1-{MAX_CONSUMER_CHARS} characters")
        if not isinstance(count, int) or not 1 <= count <= MAX_CLAIM_COUNT:
            raise ValueError(f"count {count!r} is invalid: expected an integer in [1, {MAX_CLAIM_COUNT}]")
        if not isinstance(block_ms, int) or block_ms < 0:
            raise ValueError(f"block_ms {block_ms!r} is invalid: expected an integer >= 0")
        if not self._groups_ready:
            self.ensure_groups()
        deadline = time.monotonic() + block_ms / 1000
        while True:
            now = time.monotonic()
            reclaim = now >= self._next_reclaim_at
            if reclaim:
                self._next_reclaim_at = now + self._reclaim_interval_s
            reply = self._run_claim(consumer, count, reclaim)
            skipped, next_due_ms, server_ms = int(reply[0]), int(reply[1]), int(reply[2])
            started_at, last_ids, rows = float(_s(reply[3])), reply[4], reply[5:]
            claims = self._accept(rows, consumer, started_at)
            if claims:
                return claims
            if rows or skipped:
                continue  # entries were consumed without a job to hand out: more may be ready
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return []
            wait_s = min(remaining_s, MAX_BLOCK_S, max(0.0, self._next_reclaim_at - time.monotonic()))
            if next_due_ms >= 0:
                wait_s = min(wait_s, max(0.0, (next_due_ms - server_ms) / 1000))
            wait_ms = int(wait_s * 1000)
            if wait_ms >= 1:
                # Wake as soon as anything newer than what the script saw is added to any stream.
                streams = {s: _s(i) for s, i in zip(self.keys.streams(), last_ids, strict=True)}
                self._r.xread(streams, count=1, block=wait_ms)
            elif wait_s > 0:
                time.sleep(wait_s)

    def _run_claim(self, consumer: str, count: int, reclaim: bool) -> list[Any]:
        args = [
            *self._common,
            *self._claim_head,
            consumer,
            str(count),
            str(self._lease_ms),
            str(self.max_attempts),
            "1" if reclaim else "0",
        ]
        try:
            return self._claim(keys=self._claim_keys, args=args)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_groups()  # a stream (or the group) was deleted under us: recreate and retry
            return self._claim(keys=self._claim_keys, args=args)

    def _accept(self, rows: Sequence[bytes | str], consumer: str, started_at: float) -> list[Claim]:
        claims: list[Claim] = []
        for row in rows:
            # Fields joined by the unit separator, the spec JSON last (see scripts.CLAIM).
            idx, job_id, entry_id, attempt, seed, submitted_at, batch, spec_raw = _s(row).split("\x1f", 7)
            priority = PRIORITIES[int(idx) - 1]
            try:
                spec = parse_spec_json(spec_raw)
            except InvalidJobSpec as exc:
                # A record written by something other than `submit` (or an older schema): fail this
                # job with the reason and keep going.
                log.warning("job %s has an invalid spec: %s", job_id, exc)
                self._run_fail(job_id, entry_id, priority, attempt, str(exc), retryable=False, delay_s=0.0)
                continue
            claims.append(
                Claim(
                    job_id=job_id,
                    entry_id=entry_id,
                    priority=priority,
                    token=attempt,
                    attempt=int(attempt),
                    consumer=consumer,
                    spec=spec,
                    seed=int(seed),
                    tenant=spec.tenant,
                    batch_id=batch or None,
                    submitted_at=float(submitted_at),
                    started_at=started_at,
                )
            )
        return claims

    # ----------------------------------------------------------------------- lease holder's calls

    def renew(self, claim: Claim) -> bool:
        """Extend the lease by `lease_s` from now. False when the lease is lost (taken over, or the
        job already ended): stop working on the job and record nothing."""
        reply = self._renew(keys=[self.keys.stream(claim.priority)], args=self._renew_args(claim))
        return int(reply) >= 0

    def renew_many(self, claims: Sequence[Claim]) -> list[bool]:
        """`renew` for many claims in one round trip (a heartbeat for everything a consumer holds)."""
        pipe = self._r.pipeline(transaction=False)
        for c in claims:
            self._renew(keys=[self.keys.stream(c.priority)], args=self._renew_args(c), client=pipe)
        return [int(r) >= 0 for r in pipe.execute()]

    def _renew_args(self, claim: Claim) -> list[str]:
        return [*self._common, claim.job_id, claim.entry_id, claim.token, claim.consumer]

    def set_stage(self, claim: Claim, stage: str, *, timings: Mapping[str, float] | None = None) -> None:
        """Record the engine's current stage (and merge stage durations in seconds into `timings`)."""
        args = [*self._common, claim.job_id, claim.entry_id, claim.token, stage, _timings_json(timings)]
        if not int(self._stage(keys=[], args=args)):
            raise LeaseLost(claim.job_id, "update the stage of")

    def ack_success(
        self,
        claim: Claim,
        result_uri: str,
        extra: Mapping[str, Any] | None = None,
        *,
        timings: Mapping[str, float] | None = None,
    ) -> None:
        """Mark the job succeeded with its result URI (write the result first; this is the commit
        point). `extra` (JSON-serializable) is kept on the record. Raises `LeaseLost`."""
        if not self._complete_many(JobStatus.SUCCEEDED, [(claim, result_uri, extra, timings)])[0]:
            raise LeaseLost(claim.job_id, "acknowledge")

    def ack_success_many(
        self, acks: Sequence[tuple[Claim, str] | tuple[Claim, str, Mapping[str, Any] | None]]
    ) -> list[bool]:
        """`ack_success` for many jobs in one round trip: `acks` holds `(claim, result_uri)` or
        `(claim, result_uri, extra)`. Each job is checked and recorded on its own (a lost lease
        affects only that job); the result is True where recorded, False where the lease was lost."""
        return self._complete_many(
            JobStatus.SUCCEEDED, [(a[0], a[1], a[2] if len(a) > 2 else None, None) for a in acks]
        )

    def ack_cancelled(self, claim: Claim) -> None:
        """End a running job as cancelled (the engine saw `is_cancel_requested`). Raises `LeaseLost`."""
        if not self._complete_many(JobStatus.CANCELLED, [(claim, "", None, None)])[0]:
            raise LeaseLost(claim.job_id, "cancel")

    def _complete_many(
        self,
        status: JobStatus,
        items: Sequence[tuple[Claim, str, Mapping[str, Any] | None, Mapping[str, float] | None]],
    ) -> list[bool]:
        if not items:
            return []
        args = [*self._common, self.keys.stream_base, status.value, str(len(items))]
        for claim, result_uri, extra, timings in items:
            if status is JobStatus.SUCCEEDED and (not isinstance(result_uri, str) or not result_uri):
                raise ValueError(f"result_uri {result_uri!r} is invalid: expected a non-empty string")
            args += (
                claim.job_id,
                claim.entry_id,
                claim.token,
                claim.priority.value,
                result_uri,
                json.dumps(dict(extra), separators=(",", ":"), default=str) if extra else "{}",
                _timings_json(timings),
            )
        return [bool(int(r)) for r in self._complete(keys=[], args=args)]

    def fail(
        self,
        claim: Claim,
        error: str,
        *,
        retryable: bool,
        delay_s: float | None = None,
        timings: Mapping[str, float] | None = None,
    ) -> JobStatus:
        """Record a failed attempt. Retryable: queued again after `retry_delay_s(attempt)` (or
        `delay_s`), or `dead` once `max_attempts` attempts were made. Not retryable: `failed`.
        A job with a pending cancel ends `cancelled`. The error is kept on the record either way.
        Returns the job's new status; raises `LeaseLost`."""
        if delay_s is None:
            delay_s = self.retry_delay_s(claim.attempt)
        elif not delay_s >= 0:
            raise ValueError(f"delay_s {delay_s!r} is invalid: expected a number >= 0")
        status = self._run_fail(
            claim.job_id,
            claim.entry_id,
            claim.priority,
            claim.token,
            error,
            retryable=retryable,
            delay_s=delay_s,
            timings=timings,
        )
        if status is None:
            raise LeaseLost(claim.job_id, "fail")
        return status

    def _run_fail(
        self,
        job_id: str,
        entry_id: str,
        priority: Priority,
        token: str,
        error: str,
        *,
        retryable: bool,
        delay_s: float,
        timings: Mapping[str, float] | None = None,
    ) -> JobStatus | None:
        args = [
            *self._common,
            job_id,
            entry_id,
            token,
            _clip_error(error),
            "1" if retryable else "0",
            str(max(0, round(delay_s * 1000))),
            str(self.max_attempts),
            _timings_json(timings),
        ]
        reply = _s(self._fail(keys=[self.keys.stream(priority), self.keys.delayed(priority)], args=args))
        return JobStatus(reply) if reply else None

    def retry_delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Backoff before the retry that follows attempt `attempt` (1-based): the capped exponential
        delay d = min(max, base * 2**(attempt-1)), drawn uniformly from [d/2, d] so that jobs that
        failed together do not retry together."""
        exponent = min(max(attempt, 1) - 1, 60)
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0**exponent)
        return delay * (0.5 + 0.5 * (rng or random).random())

    # ----------------------------------------------------------------------- cancel

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job. A queued job (also one waiting for a retry) ends `cancelled` now and never
        runs; for a running job a cancel is requested and `running` is returned: its engine sees
        `is_cancel_requested` between stages and calls `ack_cancelled`. A finished job is left as it
        is and its status returned. Raises `JobNotFound` for an unknown (or expired) job."""
        args = [*self._common, job_id, self.keys.stream_base, self.keys.delayed_base]
        reply = _s(self._cancel(keys=[], args=args))
        if not reply:
            raise JobNotFound(job_id)
        return JobStatus(reply)


def _timings_json(timings: Mapping[str, float] | None) -> str:
    if not timings:
        return ""
    clean: dict[str, float] = {}
    for name, seconds in timings.items():
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
            raise ValueError(f"timing {name}={seconds!r} is invalid: expected a finite number of seconds")
        clean[str(name)] = float(seconds)
    return json.dumps(clean, separators=(",", ":"))


def _record(job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
    """Build a `JobRecord` from a job hash (the field names are those of the Lua scripts)."""
    f = {_s(k): _s(v) for k, v in raw.items()}
    spec: JobSpec | None
    error = f.get("error") or None
    try:
        spec = parse_spec_json(f.get("spec", ""))
    except InvalidJobSpec as exc:
        spec = None
        error = error or str(exc)
    timings = json.loads(f["timings"]) if f.get("timings") else {}
    extra = json.loads(f["extra"]) if f.get("extra") else {}
    return JobRecord(
        job_id=job_id,
        status=JobStatus(f.get("status", JobStatus.QUEUED.value)),
        stage=f.get("stage") or None,
        attempts=int(f.get("attempts") or 0),
        error=error,
        result_uri=f.get("result_uri") or None,
        timings=timings if isinstance(timings, dict) else {},
        extra=extra if isinstance(extra, dict) else {},
        tenant=f.get("tenant") or "default",
        priority=Priority(f.get("priority") or Priority.NORMAL.value),
        batch_id=f.get("batch") or None,
        seed=int(f.get("seed") or 0),
        spec=spec,
        submitted_at=float(f.get("submitted_at") or 0.0),
        started_at=_opt_float(f.get("started_at")),
        finished_at=_opt_float(f.get("finished_at")),
        retry_at=_opt_float(f.get("retry_at")) if f.get("status") == JobStatus.QUEUED.value else None,
        consumer=f.get("consumer") or None,
        cancel_requested=f.get("cancel") == "1",
    )
