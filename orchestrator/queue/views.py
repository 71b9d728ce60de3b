"""Read-only views of the queue: job records, batch status, depths, running count, dead letters.

Nothing here changes state; the API's status routes and the autoscaler's backlog read these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.errors import ErrorCode, InvalidJobSpec
from orchestrator.jobs import (
    PRIORITIES,
    BatchFailure,
    BatchStatus,
    JobRecord,
    JobSpec,
    JobStatus,
    Priority,
    parse_spec_json,
)
from orchestrator.queue.core import QueueCore, _opt_float, _s

__all__ = ["ReadViews"]


class ReadViews(QueueCore):
    """Job records, batch status and queue gauges."""

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
            pipe.hmget(self.keys.job(job_id), ["status", "error", "error_code"])
        failures = [
            BatchFailure(
                job_id=j, status=JobStatus(_s(st)) if st else None, error=_s(err) or None, error_code=_s(code) or None
            )
            for j, (st, err, code) in zip(page_ids, pipe.execute() if page_ids else [], strict=True)
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
            webhook_url=fields.get("webhook_url") or None,
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
        entries = self._r.xrange(self.keys.dead_letter, min=start, count=count) or []
        return [{"id": _s(eid), **{_s(k): _s(v) for k, v in (fields or {}).items()}} for eid, fields in entries]


def _record(job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
    """Build a `JobRecord` from a job hash (the field names are those of the Lua scripts)."""
    f = {_s(k): _s(v) for k, v in raw.items()}
    spec: JobSpec | None
    error = f.get("error") or None
    error_code = f.get("error_code") or None
    try:
        spec = parse_spec_json(f.get("spec", ""))
    except InvalidJobSpec as exc:
        spec = None
        error = error or str(exc)
        error_code = error_code or ErrorCode.INVALID_SPEC.value
    timings = json.loads(f["timings"]) if f.get("timings") else {}
    extra = json.loads(f["extra"]) if f.get("extra") else {}
    return JobRecord(
        job_id=job_id,
        status=JobStatus(f.get("status", JobStatus.QUEUED.value)),
        stage=f.get("stage") or None,
        attempts=int(f.get("attempts") or 0),
        error=error,
        error_code=error_code,
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
