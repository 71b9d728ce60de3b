"""Listing: a tenant's jobs and batches newest first, and a batch's jobs in order, with cursors.

The indexes are written by the submit scripts (`orchestrator.lua.scripts`: `tenant_jobs`,
`tenant_batches` sorted sets by creation time in ms, `batch_jobs` lists) in the same atomic call
that queues a job, and read here through `LIST_PAGE` (`orchestrator.lua.list_scripts`), which also
drops the entries of expired records. A cursor is an opaque string naming the position of the
last entry a page looked at, so paging is exact while jobs are added: each existing job appears
once, new ones appear on the first page of a fresh listing.

A filtered page (status, batch, created after) looks at no more than `MAX_SCAN` entries: it may
then hold fewer than `limit` items while `next_cursor` is set; the client just follows the cursor.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.jobs import BatchStatus, JobRecord, JobStatus
from orchestrator.queue.core import _opt_float, _s
from orchestrator.queue.views import ReadViews

__all__ = ["MAX_LIST_LIMIT", "MAX_RESULTS_LIMIT", "MAX_SCAN", "BatchItem", "InvalidCursor", "Listing"]

MAX_LIST_LIMIT = 200
MAX_RESULTS_LIMIT = 1000
MAX_SCAN = 2000  # index entries one filtered page may look at
_CURSOR_VERSION = "1"


class InvalidCursor(ValueError):
    """A cursor this queue did not hand out (or one of another listing)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"cursor is not valid for this {what}: pass the next_cursor of the previous page as it is")


def _encode(kind: str, *parts: str) -> str:
    raw = "|".join((_CURSOR_VERSION, kind, *parts)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, kind: str, n: int, what: str) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(what) from None
    parts = raw.split("|")
    if len(parts) != n + 2 or parts[0] != _CURSOR_VERSION or parts[1] != kind:
        raise InvalidCursor(what)
    return parts[2:]


def _check_limit(limit: int, maximum: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= maximum:
        raise ValueError(f"limit {limit!r} is invalid: expected an integer in [1, {maximum}]")
    return limit


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch in batch order: its position and record."""

    index: int
    job_id: str
    record: JobRecord


class Listing(ReadViews):
    """`list_jobs`, `list_batches`, `batch_items`."""

    # ----------------------------------------------------------------------- the tenant's jobs

    def list_jobs(
        self,
        tenant: str,
        *,
        status: JobStatus | None = None,
        batch_id: str | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """One page of `tenant`'s jobs, newest first, and the cursor of the next page (None at the
        end). Filters: `status`, `batch_id` (the batch's jobs, newest first), `created_after`
        (Unix seconds, exclusive). Raises `InvalidCursor`, `ValueError` for a bad limit."""
        _check_limit(limit, MAX_LIST_LIMIT)
        if created_after is not None and not math.isfinite(created_after):
            raise ValueError(f"created_after {created_after!r} is invalid: expected Unix seconds")

        def keep(record: JobRecord | None) -> bool:
            return (
                record is not None
                and record.tenant == tenant
                and (status is None or record.status is status)
                and (batch_id is None or record.batch_id == batch_id)
                and (created_after is None or record.submitted_at > created_after)
            )

        if batch_id is not None:
            return self._batch_jobs_newest_first(batch_id, keep, created_after, limit, cursor)
        filtered = status is not None or created_after is not None
        lowest = "-inf" if created_after is None else str(math.floor(created_after * 1000))
        items: list[JobRecord] = []
        position = _decode(cursor, "j", 2, "job listing") if cursor else ["", ""]
        scanned = 0
        while len(items) < limit and scanned < MAX_SCAN:
            want = min(MAX_SCAN - scanned, max(limit - len(items), 100) if filtered else limit - len(items) + 1)
            index, base = self.keys.tenant_jobs(tenant), self.keys.job_base
            ids, scores, looked, last = self._page(index, base, position, want, lowest)
            scanned += looked
            for job_id, score, record in zip(ids, scores, self.get_many(ids), strict=True):
                if len(items) == limit:
                    return items, _encode("j", *position)
                position = [score, job_id]
                if keep(record):
                    assert record is not None
                    items.append(record)
            if looked < want:
                return items, None  # the index has nothing older
            position = last
        return items, _encode("j", *position)

    def _page(
        self, index: str, base: str, position: Sequence[str], want: int, lowest: str
    ) -> tuple[list[str], list[str], int, list[str]]:
        """One `LIST_PAGE` call: ids and scores newest first after `position`, how many entries
        were looked at, and the position of the last one."""
        reply = self._list_page(keys=[index], args=[*self._common, base, position[0], position[1], str(want), lowest])
        looked, last = int(reply[0]), [_s(reply[1]), _s(reply[2])]
        rest = reply[3:]
        ids = [_s(rest[i]) for i in range(0, len(rest), 2)]
        scores = [_score(rest[i + 1]) for i in range(0, len(rest), 2)]
        return ids, scores, looked, (last if last[0] else list(position))

    def _batch_jobs_newest_first(
        self,
        batch_id: str,
        keep: Callable[[JobRecord | None], bool],
        created_after: float | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        key = self.keys.batch_jobs(batch_id)
        if cursor:
            (pos_text,) = _decode(cursor, "b", 1, "job listing")
            if not pos_text.lstrip("-").isdigit():
                raise InvalidCursor("job listing")
            pos = int(pos_text)
        else:
            pos = int(self._r.llen(key)) - 1
        items: list[JobRecord] = []
        scanned = 0
        while pos >= 0 and len(items) < limit and scanned < MAX_SCAN:
            start = max(0, pos - max(limit - len(items), 100) + 1)
            ids = [_s(j) for j in self._r.lrange(key, start, pos)][::-1]
            scanned += len(ids)
            for record in self.get_many(ids):
                if len(items) == limit:
                    return items, _encode("b", str(pos))
                pos -= 1
                if record is not None and created_after is not None and record.submitted_at <= created_after:
                    return items, None  # submission order: every job further on is older
                if keep(record):
                    assert record is not None
                    items.append(record)
            if not ids:
                break
        return items, (_encode("b", str(pos)) if pos >= 0 else None)

    # ----------------------------------------------------------------------- the tenant's batches

    def list_batches(
        self, tenant: str, *, created_after: float | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[BatchStatus], str | None]:
        """One page of `tenant`'s batches, newest first (each with its counts; its failures are
        paged by `batch_status`), and the next page's cursor (None at the end)."""
        _check_limit(limit, MAX_LIST_LIMIT)
        if created_after is not None and not math.isfinite(created_after):
            raise ValueError(f"created_after {created_after!r} is invalid: expected Unix seconds")
        lowest = "-inf" if created_after is None else str(math.floor(created_after * 1000))
        position = _decode(cursor, "t", 2, "batch listing") if cursor else ["", ""]
        ids, scores, _, _ = self._page(
            self.keys.tenant_batches(tenant), self.keys.batch_base, position, limit + 1, lowest
        )
        more = len(ids) > limit
        ids, scores = ids[:limit], scores[:limit]
        batches = [
            b
            for b in self._batch_summaries(ids)
            if b is not None
            and b.tenant == tenant
            and (created_after is None or b.created_at is None or b.created_at > created_after)
        ]
        next_cursor = _encode("t", scores[-1], ids[-1]) if more and ids else None
        return batches, next_cursor

    def _batch_summaries(self, batch_ids: Sequence[str]) -> list[BatchStatus | None]:
        pipe = self._r.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hgetall(self.keys.batch(batch_id))
            pipe.llen(self.keys.batch_failures(batch_id))
        replies = pipe.execute() if batch_ids else []
        out: list[BatchStatus | None] = []
        for i, batch_id in enumerate(batch_ids):
            raw, failures_total = replies[2 * i], int(replies[2 * i + 1])
            if not raw:
                out.append(None)
                continue
            fields = {_s(k): _s(v) for k, v in raw.items()}
            out.append(
                BatchStatus(
                    batch_id=batch_id,
                    tenant=fields.get("tenant") or None,
                    total=int(fields.get("total", 0)),
                    counts={s: int(fields.get(s.value, 0)) for s in JobStatus},
                    created_at=_opt_float(fields.get("created_at")),
                    failures=[],
                    failures_total=failures_total,
                    next_offset=0 if failures_total else None,
                    webhook_url=fields.get("webhook_url") or None,
                )
            )
        return out

    # ----------------------------------------------------------------------- a batch's jobs in order

    def batch_items(
        self, batch_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[BatchItem], str | None]:
        """One page of a batch's jobs in batch order (the order they were submitted in) with their
        records, and the next page's cursor (None on the last page). A job whose record already
        expired (its batch outlives it by up to the retention) is left out; `index` keeps its place."""
        _check_limit(limit, MAX_RESULTS_LIMIT)
        start = 0
        if cursor:
            (start_text,) = _decode(cursor, "r", 1, "batch's results")
            if not start_text.isdigit():
                raise InvalidCursor("batch's results")
            start = int(start_text)
        ids = [_s(j) for j in self._r.lrange(self.keys.batch_jobs(batch_id), start, start + limit)]
        more = len(ids) > limit
        ids = ids[:limit]
        records = self.get_many(ids)
        items = [
            BatchItem(index=start + i, job_id=j, record=r)
            for i, (j, r) in enumerate(zip(ids, records, strict=True))
            if r is not None
        ]
        return items, (_encode("r", str(start + limit)) if more else None)


def _score(value: bytes | str) -> str:
    """A sorted-set score as the integer text the cursor carries (scores are whole milliseconds)."""
    text = _s(value)
    try:
        return str(int(float(text)))
    except ValueError:
        return text
