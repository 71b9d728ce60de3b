"""The lease holder's side: claim jobs, renew leases, record stages, acknowledge, fail, retry.

`claim` is one Lua script (due retries back, lapsed leases taken over, new entries read in weighted
priority rotation); every later call checks the claim's lease token inside its script, so a consumer
whose job was taken over changes nothing (`LeaseLost`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.typing import KeyT, StreamIdT

from orchestrator.errors import ErrorCode, InvalidJobSpec, LeaseLost
from orchestrator.jobs import PRIORITIES, JobStatus, Priority, parse_spec_json
from orchestrator.queue.core import (
    MAX_BLOCK_S,
    MAX_CLAIM_COUNT,
    MAX_CONSUMER_CHARS,
    Claim,
    QueueCore,
    _clip_error,
    _s,
    _timings_json,
)

__all__ = ["Leases"]

log = logging.getLogger(__name__)


class Leases(QueueCore):
    """Claim, renew, ack, fail: the calls an engine makes for the jobs it holds."""

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
                streams: dict[KeyT, StreamIdT] = {s: _s(i) for s, i in zip(self.keys.streams(), last_ids, strict=True)}
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
            # Fields joined by the unit separator, the spec JSON last (see claim_script.CLAIM).
            idx, job_id, entry_id, attempt, seed, submitted_at, batch, spec_raw = _s(row).split("\x1f", 7)
            priority = PRIORITIES[int(idx) - 1]
            try:
                spec = parse_spec_json(spec_raw)
            except InvalidJobSpec as exc:
                # A record written by something other than `submit` (or an older schema): fail this
                # job with the reason and keep going.
                log.warning("job %s has an invalid spec: %s", job_id, exc)
                self._run_fail(
                    job_id,
                    entry_id,
                    priority,
                    attempt,
                    str(exc),
                    retryable=False,
                    delay_s=0.0,
                    error_code=ErrorCode.INVALID_SPEC,
                )
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
        args = [*self._common, status.value, str(len(items))]
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
        error_code: ErrorCode | str | None = None,
    ) -> JobStatus:
        """Record a failed attempt. Retryable: queued again after `retry_delay_s(attempt)` (or
        `delay_s`), or `dead` once `max_attempts` attempts were made. Not retryable: `failed`.
        A job with a pending cancel ends `cancelled`. The error is kept on the record either way,
        with `error_code` (`orchestrator.errors.error_code_of` of the exception; default `internal`
        for a retryable error, `invalid_input` for another); a dead job's code is
        `retries_exhausted`, a cancelled one's `cancelled`. Returns the job's new status; raises
        `LeaseLost`."""
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
            error_code=error_code,
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
        error_code: ErrorCode | str | None = None,
    ) -> JobStatus | None:
        if error_code is None:
            error_code = ErrorCode.INTERNAL if retryable else ErrorCode.INVALID_INPUT
        code = ErrorCode(error_code).value  # an unknown code is a programming error: ValueError
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
            code,
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
