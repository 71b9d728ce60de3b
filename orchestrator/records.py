"""What the queue records about jobs and batches (`JobRecord`, `BatchStatus`, `BatchFailure`), read
from Redis by `orchestrator.queue.views` and shown by the API, the CLI and the SDK."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.jobs import FINAL_STATUSES, JobSpec, JobStatus, Priority

__all__ = ["BatchFailure", "BatchStatus", "JobRecord"]


class JobRecord(BaseModel):
    """The queue's view of one job (read from its status hash)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    status: JobStatus
    stage: str | None = None  # the engine's current stage while running ("understand", "generate", ...)
    attempts: int = 0  # times the job was claimed
    error: str | None = None  # the last error (kept on dead/failed jobs; cleared on success)
    error_code: str | None = None  # its machine code (`orchestrator.errors.ErrorCode`)
    result_uri: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # stage -> seconds
    extra: dict[str, Any] = Field(default_factory=dict)  # what the engine attached on success
    tenant: str = "default"
    priority: Priority = Priority.NORMAL
    batch_id: str | None = None
    seed: int = 0
    spec: JobSpec | None = None  # None when the stored spec does not parse (see `error`)
    submitted_at: float = 0.0  # Unix seconds (Redis server clock)
    started_at: float | None = None  # start of the latest attempt
    finished_at: float | None = None
    retry_at: float | None = None  # when a queued retry becomes claimable again
    consumer: str | None = None  # the consumer that holds / last held the job
    cancel_requested: bool = False

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The client's `metadata` of the job (from its spec)."""
        return self.spec.metadata if self.spec is not None else None

    @property
    def custom_id(self) -> str | None:
        """The client's `custom_id` of the job (from its spec)."""
        return self.spec.custom_id if self.spec is not None else None

    @property
    def text(self) -> str | None:
        """The text answer of an understanding job (or step), once it succeeded."""
        text = self.extra.get("text")
        return text if isinstance(text, str) else None


class BatchFailure(BaseModel):
    """A failed or dead job of a batch, with its last error and that error's code."""

    job_id: str
    status: JobStatus | None  # None when the job record already expired
    error: str | None
    error_code: str | None = None


class BatchStatus(BaseModel):
    """Progress of a batch: counts by status and one page of its failures."""

    batch_id: str
    tenant: str | None
    total: int
    counts: dict[JobStatus, int]
    created_at: float | None
    failures: list[BatchFailure]  # the page [offset, offset + limit) of failed/dead jobs
    failures_total: int
    next_offset: int | None  # offset of the next failures page, None on the last one
    webhook_url: str | None = None  # called with `batch.completed` when its last job ends

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in FINAL_STATUSES)

    @property
    def done(self) -> bool:
        return self.finished >= self.total
