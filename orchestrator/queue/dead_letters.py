"""Dead letters: page through the dead-letter stream (newest first) and requeue a dead job.

A job out of attempts is `dead` and has an entry in the dead-letter stream (written by `finish` in
`orchestrator.lua.scripts`, its id kept on the job as `dead_entry`); malformed stream entries are
dead-lettered there too, with no job. `requeue_dead` is one script (`REQUEUE_DEAD`): the job is
queued again with its attempts reset, and its dead-letter entry is deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.errors import JobNotFound, OrchestratorError
from orchestrator.jobs import JobRecord
from orchestrator.queue.core import _s
from orchestrator.queue.views import ReadViews

__all__ = ["MAX_DEAD_LETTERS_LIMIT", "DeadLetter", "DeadLetters", "NotDeadLettered", "RequeueRefused"]

MAX_DEAD_LETTERS_LIMIT = 500
_ENTRY_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")


class NotDeadLettered(JobNotFound):
    """The job is unknown, expired, or not dead (`status` says what it is, None if unknown)."""

    def __init__(self, job_id: str, status: str | None) -> None:
        super().__init__(job_id)
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return f"job {self.job_id!r} not found"
        return f"job {self.job_id!r} is not dead-lettered (it is {self.status})"


class RequeueRefused(OrchestratorError):
    """A dead job that cannot be requeued on its own (a workflow's step)."""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    entry_id: str
    job_id: str | None  # None for a malformed stream entry (no job to requeue)
    tenant: str | None
    error: str
    error_code: str | None
    attempts: int
    dead_at: float | None


class DeadLetters(ReadViews):
    """`dead_letters_page`, `requeue_dead`."""

    def dead_letters_page(self, limit: int = 100, cursor: str | None = None) -> tuple[list[DeadLetter], str | None]:
        """One page of the dead-letter stream, newest first, and the cursor of the next page (the
        last entry id; None at the end). Raises `ValueError` for a bad limit or cursor."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_DEAD_LETTERS_LIMIT:
            raise ValueError(f"limit {limit!r} is invalid: expected an integer in [1, {MAX_DEAD_LETTERS_LIMIT}]")
        if cursor is not None and not _ENTRY_ID_RE.fullmatch(cursor):
            raise ValueError(f"cursor {cursor!r} is invalid: pass the next_cursor of the previous page")
        top = "+" if cursor is None else f"({cursor}"
        entries = self._r.xrevrange(self.keys.dead_letter, max=top, min="-", count=limit + 1) or []
        page = [_dead_letter(_s(eid), {_s(k): _s(v) for k, v in (fields or {}).items()}) for eid, fields in entries]
        if len(page) > limit:
            return page[:limit], page[limit - 1].entry_id
        return page, None

    def requeue_dead(self, job_id: str) -> JobRecord:
        """Queue a dead job again: attempts reset, error cleared, back on its priority stream, its
        dead-letter entry removed. Raises `NotDeadLettered` (unknown, expired or not dead) and
        `RequeueRefused` (a workflow's step: resubmit the workflow)."""
        reply = _s(self._requeue_dead(keys=[], args=[*self._common, job_id]))
        if reply.startswith("step:"):
            workflow_id = reply.removeprefix("step:")
            raise RequeueRefused(
                f"job {job_id!r} is a step of workflow {workflow_id!r}, whose other steps were not run: "
                "submit the workflow again instead"
            )
        if reply != "requeued":
            raise NotDeadLettered(job_id, reply or None)
        record = self.get(job_id)
        if record is None:  # expired in between: cannot happen (the script made it persistent)
            raise NotDeadLettered(job_id, None)
        return record


def _dead_letter(entry_id: str, f: dict[str, str]) -> DeadLetter:
    attempts = f.get("attempts", "0")
    try:
        dead_at: float | None = float(f["at"]) if f.get("at") else None
    except ValueError:
        dead_at = None
    return DeadLetter(
        entry_id=entry_id,
        job_id=f.get("job") or None,
        tenant=f.get("tenant") or None,
        error=f.get("error", ""),
        error_code=f.get("error_code") or None,
        attempts=int(attempts) if attempts.isdigit() else 0,
        dead_at=dead_at,
    )
