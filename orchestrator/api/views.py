"""The API's request and response bodies (the job spec itself is `orchestrator.jobs.JobSpec`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from orchestrator.api.settings import MAX_BATCH_JOBS
from orchestrator.audio_io import AudioInfo
from orchestrator.job_fields import WebhookUrl
from orchestrator.jobs import BatchStatus, JobRecord, JobStatus, Priority, TaskName
from orchestrator.queue import DeadLetter
from orchestrator.workflows import WorkflowState, WorkflowStatus

__all__ = [
    "BatchCreated",
    "BatchFailureView",
    "BatchPage",
    "BatchRequest",
    "BatchResultLine",
    "BatchView",
    "BatchWorkflowItem",
    "CancelView",
    "DeadLetterPage",
    "DeadLetterView",
    "HealthView",
    "JobPage",
    "JobView",
    "ResultView",
    "UploadView",
    "VideoUploadView",
    "WorkflowStepView",
    "WorkflowView",
]


class JobView(BaseModel):
    """A job as its tenant sees it."""

    job_id: str
    status: JobStatus
    stage: str | None = None
    attempts: int = 0
    error: str | None = None
    error_code: str | None = Field(None, description="machine code of the error (docs/errors.md)")
    priority: Priority
    batch_id: str | None = None
    seed: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    result_available: bool = Field(description="GET /v1/jobs/{id}/result will return the result")
    text: str | None = Field(None, description="the text answer of an understanding job")
    metadata: dict[str, Any] | None = Field(None, description="the metadata object given at submission")
    custom_id: str | None = Field(None, description="the custom_id given at submission")
    spec: dict[str, Any] | None = None

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        return cls(
            job_id=record.job_id,
            status=record.status,
            stage=record.stage,
            attempts=record.attempts,
            error=record.error,
            error_code=record.error_code,
            priority=record.priority,
            batch_id=record.batch_id,
            seed=record.seed,
            submitted_at=record.submitted_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            cancel_requested=record.cancel_requested,
            result_available=record.status is JobStatus.SUCCEEDED and bool(record.result_uri),
            text=record.text,
            metadata=record.metadata,
            custom_id=record.custom_id,
            spec=None if record.spec is None else record.spec.model_dump(mode="json", exclude_none=True),
        )


# A batch item is a job spec or a workflow (an object whose `steps` is a list); the route parses
# each one itself, so that an error names `jobs[i].<field>` whichever it is.
_BATCH_ITEM_SCHEMA = {
    "anyOf": [{"$ref": "#/components/schemas/JobSpec"}, {"$ref": "#/components/schemas/WorkflowSpec"}],
    "description": "a job spec, or a workflow: an object with a `steps` list",
}


class BatchRequest(BaseModel):
    """Many jobs (and workflows) submitted as one batch (all of the caller's tenant)."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[Annotated[dict[str, Any], WithJsonSchema(_BATCH_ITEM_SCHEMA)]] = Field(
        min_length=1, max_length=MAX_BATCH_JOBS
    )
    webhook_url: WebhookUrl | None = Field(
        None, description="called once with `batch.completed` when the batch's last job ends (see docs/webhooks.md)"
    )


class BatchWorkflowItem(BaseModel):
    """A workflow of a batch: its item index, id and step job ids."""

    index: int
    workflow_id: str
    job_ids: list[str]


class BatchCreated(BaseModel):
    batch_id: str
    total: int = Field(description="jobs in the batch, every workflow step counted")
    job_ids: list[str] = Field(description="the plain items' job ids in order, then the workflows' step jobs")
    workflows: list[BatchWorkflowItem] = Field(default_factory=list)


class BatchFailureView(BaseModel):
    job_id: str
    status: JobStatus | None
    error: str | None
    error_code: str | None = None


class BatchView(BaseModel):
    batch_id: str
    total: int
    counts: dict[str, int]
    finished: int
    done: bool
    created_at: float | None
    failures: list[BatchFailureView]
    failures_total: int
    next_offset: int | None
    webhook_url: str | None = None

    @classmethod
    def of(cls, status: BatchStatus) -> BatchView:
        return cls(
            batch_id=status.batch_id,
            total=status.total,
            counts={s.value: n for s, n in status.counts.items()},
            finished=status.finished,
            done=status.done,
            created_at=status.created_at,
            failures=[
                BatchFailureView(job_id=f.job_id, status=f.status, error=f.error, error_code=f.error_code)
                for f in status.failures
            ],
            failures_total=status.failures_total,
            next_offset=status.next_offset,
            webhook_url=status.webhook_url,
        )


class JobPage(BaseModel):
    """One page of `GET /v1/jobs`, newest first."""

    items: list[JobView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class BatchPage(BaseModel):
    """One page of `GET /v1/batches`, newest first (failures are listed by GET /v1/batches/{id})."""

    items: list[BatchView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class BatchResultLine(BaseModel):
    """One line of `GET /v1/batches/{id}/results` (JSON Lines, one per job in batch order)."""

    job_id: str
    index: int = Field(description="the job's position in the batch")
    status: JobStatus
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    result_uri: str | None = None
    result_url: str | None = Field(None, description="a presigned URL, or this API's result URL; null if none")
    text: str | None = None
    error: str | None = None
    error_code: str | None = None


class DeadLetterView(BaseModel):
    """One entry of the dead-letter stream (operators only)."""

    entry_id: str
    job_id: str | None = Field(description="null for a malformed queue entry (nothing to requeue)")
    tenant: str | None
    error: str
    error_code: str | None
    attempts: int
    dead_at: float | None

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterView:
        return cls(
            entry_id=letter.entry_id,
            job_id=letter.job_id,
            tenant=letter.tenant,
            error=letter.error,
            error_code=letter.error_code,
            attempts=letter.attempts,
            dead_at=letter.dead_at,
        )


class DeadLetterPage(BaseModel):
    """One page of `GET /v1/admin/dead-letters`, newest first."""

    items: list[DeadLetterView]
    next_cursor: str | None


class CancelView(BaseModel):
    job_id: str
    status: JobStatus
    cancel_requested: bool


class ResultView(BaseModel):
    """Where to fetch a finished job's result (service mode)."""

    job_id: str
    url: str = Field(description="presigned GET URL of the result object")
    expires_s: int
    uri: str
    content_type: str
    sha256: str | None = None
    size_bytes: int | None = None
    metadata_url: str | None = None
    text: str | None = None


class UploadView(BaseModel):
    """An accepted input file: pass `uri` as a job's input."""

    upload_id: str
    uri: str
    size_bytes: int
    sha256: str
    format: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float

    @classmethod
    def of(cls, upload_id: str, uri: str, size_bytes: int, sha256: str, info: AudioInfo) -> UploadView:
        return cls(
            upload_id=upload_id,
            uri=uri,
            size_bytes=size_bytes,
            sha256=sha256,
            format=info.format,
            sample_rate=info.sample_rate,
            channels=info.channels,
            frames=info.frames,
            duration_s=round(info.duration_s, 6),
        )


class VideoUploadView(BaseModel):
    """An accepted input video: pass `uri` as a job's `video_uri` (built by routes/uploads.py)."""

    upload_id: str
    uri: str
    size_bytes: int
    sha256: str
    format: str  # mp4, mov, mkv or webm
    codec: str
    width: int  # as shown (rotation applied)
    height: int
    fps: float
    frames: int
    duration_s: float
    has_audio: bool


class HealthView(BaseModel):
    status: str
    redis: bool


class WorkflowStepView(BaseModel):
    """One step of a workflow: its own job (`GET /v1/jobs/{job_id}`, `.../result`)."""

    id: str = Field(description="the step's id within the workflow")
    task: TaskName
    job_id: str
    status: JobStatus
    text: str | None = Field(None, description="the text answer of an understanding step")
    result_available: bool = Field(False, description="GET /v1/jobs/{job_id}/result will return the result")
    error: str | None = None
    error_code: str | None = None


class WorkflowView(BaseModel):
    """A workflow as its tenant sees it: its state and every step's."""

    workflow_id: str
    status: WorkflowState
    steps: list[WorkflowStepView]
    failed_step: str | None = Field(None, description="the id of the step that failed the workflow")
    error: str | None = None
    created_at: float | None = None
    batch_id: str | None = None
    webhook_url: str | None = None

    @classmethod
    def of(cls, status: WorkflowStatus) -> WorkflowView:
        return cls(
            workflow_id=status.workflow_id,
            status=status.status,
            steps=[
                WorkflowStepView(
                    id=step.id,
                    task=step.task,
                    job_id=step.job_id,
                    status=step.status,
                    text=step.text,
                    result_available=step.result_available,
                    error=step.error,
                    error_code=step.error_code,
                )
                for step in status.steps
            ],
            failed_step=status.failed_step,
            error=status.error,
            created_at=status.created_at,
            batch_id=status.batch_id,
            webhook_url=status.webhook_url,
        )
