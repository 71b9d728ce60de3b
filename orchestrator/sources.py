"""Where jobs come from: the `JobSource` seam and its manifest-file implementation.

A source hands out `ClaimedJob`s and records their outcome. The engine calls `claim`, `renew`
while a job runs, `is_cancel_requested` between stages, `step_outputs` for a workflow step (the
outputs of the steps it uses), and exactly one of `ack_success` / `fail` / `cancel` per claim.
`RedisSource` adapts the Redis Streams queue (`orchestrator.queue.JobQueue`) to the same seam.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from orchestrator.errors import ErrorCode, InvalidJobSpec, LeaseLost, PermanentError, error_code_of
from orchestrator.jobs import JobSpec, JobStatus, batch_job_id, format_validation_error, parse_spec
from orchestrator.workflows import (
    StepOutput,
    WorkflowSpec,
    expand_job,
    is_workflow_data,
    parse_workflow,
    plan_workflow,
)

if TYPE_CHECKING:
    from orchestrator.queue import Claim, JobQueue

URI_FIELDS = ("input_audio_uri", "voice_prompt_uri", "video_uri", "sync_feature_uri")
_INDEX_RE = re.compile(r"\.(\d+)(?=\.|$)")  # "steps.0.prompt" -> "steps[0].prompt"


@dataclass
class ClaimedJob:
    """One claimed job: its id, validated spec and where it came from."""

    job_id: str
    spec: JobSpec
    attempt: int = 1
    token: Claim | None = None  # the Redis claim (RedisSource); None for a manifest job

    @property
    def tenant(self) -> str:
        return self.spec.tenant

    @property
    def batch_id(self) -> str | None:
        return self.spec.batch_id

    @property
    def seed(self) -> int:
        return self.spec.effective_seed(self.job_id)


@dataclass
class JobOutcome:
    """What a `ManifestSource` recorded for one job (the queue keeps the same in Redis)."""

    job_id: str
    status: JobStatus
    error: str | None = None
    result_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    error_code: str | None = None  # `orchestrator.errors.ErrorCode` of a job that did not succeed


class JobSource(Protocol):
    """What the engine needs from wherever jobs come from."""

    def claim(self, max_jobs: int, block_s: float) -> list[ClaimedJob]: ...
    def renew(self, job: ClaimedJob) -> None: ...
    def is_cancel_requested(self, job: ClaimedJob) -> bool: ...
    def set_stage(self, job: ClaimedJob, stage: str, timings: dict[str, float]) -> None: ...
    def ack_success(
        self, job: ClaimedJob, *, result_uri: str | None, timings: dict[str, float], extra: dict[str, Any]
    ) -> None: ...
    def fail(self, job: ClaimedJob, error: BaseException, *, retry: bool, timings: dict[str, float]) -> None: ...
    def cancel(self, job: ClaimedJob) -> None: ...
    def pending(self) -> int: ...
    def exhausted(self) -> bool: ...
    def step_outputs(self, job: ClaimedJob) -> dict[str, StepOutput]:
        """For a workflow step: the outputs of the steps it uses that succeeded, by step id."""
        ...


def _step_output(spec: JobSpec | None, text: object, result_uri: str | None) -> StepOutput:
    """What a finished step offers the steps that use it: its text answer, and its result audio
    when it generates audio (an understanding step's result URI is its metadata JSON)."""
    audio = result_uri if spec is not None and spec.generates_audio else None
    return StepOutput(text=text if isinstance(text, str) else None, audio_uri=audio)


class ManifestSource:
    """Jobs from a JSONL manifest: one JobSpec object per line, or one workflow
    (`{"steps": [...]}`, `orchestrator.workflows`); blank lines and `#` lines are skipped.

    The job id of line i is `batch_job_id(batch_id, i)` with the batch id derived from the file's
    bytes, so running the same manifest twice writes the same keys. A workflow line's id is its
    workflow id and each step runs as its own job (`step_job_id(line id, step)`): it is held until
    the steps it uses have succeeded; when a step fails, dies or is cancelled, the steps of its
    workflow that have not run end `cancelled` (running ones are asked to stop). A line that does
    not validate becomes a job that fails at once with its reason; the other lines still run.
    `total` counts jobs: one per job line or invalid line, one per workflow step.
    """

    def __init__(self, path: str | Path, *, max_attempts: int = 3, batch_id: str | None = None) -> None:
        if not 1 <= max_attempts <= 100:
            raise ValueError(f"max_attempts must be in [1, 100], got {max_attempts}")
        self.path = Path(path)
        raw = self.path.read_bytes()
        self.batch_id = batch_id or "m" + hashlib.sha256(raw).hexdigest()[:15]
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._queue: deque[ClaimedJob] = deque()
        self.outcomes: dict[str, JobOutcome] = {}
        self.specs: dict[str, JobSpec] = {}  # every valid job's spec (each workflow step's too), by job id
        self.stages: dict[str, str] = {}  # the stage each running job is in
        self.invalid: dict[str, str] = {}
        self.workflows: dict[str, list[str]] = {}  # workflow id (its line's id) -> its steps' job ids
        self._waiting: dict[str, ClaimedJob] = {}  # steps whose dependencies have not all succeeded
        self._deps: dict[str, set[str]] = {}  # step job id -> job ids of the steps it still waits for
        self._dependents: dict[str, list[str]] = {}  # step job id -> job ids of the steps that use it
        self._cancel: set[str] = set()  # running steps whose workflow ended: stop between stages
        index = 0
        for line_no, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            job_id = batch_job_id(self.batch_id, index)
            index += 1
            try:
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise InvalidJobSpec([("", f"expected a JSON object, got {type(data).__name__}")])
                data.setdefault("batch_id", self.batch_id)
                if is_workflow_data(data):  # `steps` is a list (a job's `steps` is a number)
                    self._add_workflow(job_id, data)
                    continue
                self._resolve_paths(data)
                spec = parse_spec(data, runnable=False)
                chain = expand_job(spec)  # a built-in chain (e.g. `reasoning: true`) runs as a workflow
                if chain is not None:
                    self._add_workflow(job_id, chain)
                    continue
            except (json.JSONDecodeError, PermanentError) as exc:
                reason = f"line {line_no}: {exc}"
                self.invalid[job_id] = reason
                code = error_code_of(exc) if isinstance(exc, PermanentError) else ErrorCode.INVALID_SPEC
                self.outcomes[job_id] = JobOutcome(job_id, JobStatus.FAILED, reason, attempts=0, error_code=code)
                continue
            self.specs[job_id] = spec
            self._queue.append(ClaimedJob(job_id, spec))
        self.total = len(self.specs) + len(self.invalid)
        self._running = 0
        self._delayed: list[tuple[float, ClaimedJob]] = []

    def _add_workflow(self, workflow_id: str, data: dict[str, Any] | WorkflowSpec) -> None:
        """Plan a workflow line: every step known by its job id, the first steps queued."""
        steps = data.get("steps") if isinstance(data, dict) else None
        if isinstance(steps, list):
            for step in steps:
                if isinstance(step, dict):
                    self._resolve_paths(step)
        try:
            planned = plan_workflow(parse_workflow(data), workflow_id)
        except ValidationError as exc:
            errors = [(_INDEX_RE.sub(r"[\1]", f), m) for f, m in format_validation_error(exc)]
            raise InvalidJobSpec(errors, what="workflow") from None
        self.workflows[workflow_id] = [p.job_id for p in planned]
        for p in planned:
            job = ClaimedJob(p.job_id, p.spec)
            self.specs[p.job_id] = p.spec
            self._dependents[p.job_id] = []
            self._deps[p.job_id] = set(p.uses)
            for used in p.uses:
                self._dependents[used].append(p.job_id)
            if p.uses:
                self._waiting[p.job_id] = job
            else:
                self._queue.append(job)

    def _resolve_paths(self, data: dict[str, Any]) -> None:
        """Relative local input paths are relative to the manifest's folder, not the cwd (a step's
        reference to another step's audio is not a path)."""
        for name in URI_FIELDS:
            value = data.get(name)
            if not isinstance(value, str) or not value or "://" in value or "{{" in value:
                continue
            if not Path(value).is_absolute():
                data[name] = str((self.path.parent / value).resolve())

    def job_ids(self) -> list[str]:
        """Every job of the run in manifest order (a workflow's steps in their own order, lines
        refused before they ran included), then any other job that has an outcome."""
        known = [*self.specs, *(j for j in self.invalid if j not in self.specs)]
        listed = set(known)
        return known + [j for j in self.outcomes if j not in listed]

    def label(self, job_id: str) -> str:
        """How reports name a job: its manifest line's index, or `<line index>/<step>` for a
        workflow step."""
        spec = self.specs.get(job_id)
        prefix = f"{self.batch_id}-"
        if spec is not None and spec.workflow is not None:
            workflow_id = spec.workflow.workflow_id
            line = workflow_id[len(prefix) :] if workflow_id.startswith(prefix) else workflow_id[:9]
            return f"{line}/{spec.workflow.step}"
        return job_id[len(prefix) :] if job_id.startswith(prefix) else job_id

    def local_inputs(self) -> list[Path]:
        """The local input files the manifest's valid jobs refer to."""
        paths = []
        for job in [*self._queue, *self._waiting.values()]:
            for name in URI_FIELDS:
                value = getattr(job.spec, name)
                if value and "://" not in value and "{{" not in value:
                    paths.append(Path(value))
        return paths

    def claim(self, max_jobs: int, block_s: float) -> list[ClaimedJob]:
        with self._lock:
            now = time.monotonic()
            due = [j for t, j in self._delayed if t <= now]
            self._delayed = [(t, j) for t, j in self._delayed if t > now]
            self._queue.extend(due)
            out: list[ClaimedJob] = []
            while self._queue and len(out) < max_jobs:
                out.append(self._queue.popleft())
            self._running += len(out)
        if not out and block_s > 0:
            time.sleep(min(block_s, 0.05))
        return out

    def renew(self, job: ClaimedJob) -> None:  # nobody else can take a manifest job
        return None

    def is_cancel_requested(self, job: ClaimedJob) -> bool:
        with self._lock:
            return job.job_id in self._cancel

    def set_stage(self, job: ClaimedJob, stage: str, timings: dict[str, float]) -> None:
        with self._lock:
            self.stages[job.job_id] = stage

    def step_outputs(self, job: ClaimedJob) -> dict[str, StepOutput]:
        link = job.spec.workflow
        if link is None:
            return {}
        with self._lock:
            done = {step: self.outcomes.get(used) for step, used in link.uses.items()}
        return {
            step: _step_output(self.specs.get(o.job_id), o.extra.get("text"), o.result_uri)
            for step, o in done.items()
            if o is not None and o.status is JobStatus.SUCCEEDED
        }

    def _finish(self, job: ClaimedJob, outcome: JobOutcome) -> None:
        with self._lock:
            self._running -= 1
            self.outcomes[job.job_id] = outcome
            self._cancel.discard(job.job_id)
            link = job.spec.workflow
            if link is None:
                return
            if outcome.status is JobStatus.SUCCEEDED:
                for user in self._dependents.get(job.job_id, []):
                    waits = self._deps[user]
                    waits.discard(job.job_id)
                    if not waits and user in self._waiting:
                        self._queue.append(self._waiting.pop(user))
            else:
                code = ErrorCode.CANCELLED if outcome.status is JobStatus.CANCELLED else ErrorCode.DEPENDENCY_FAILED
                self._stop_workflow(link.workflow_id, f"not run: step {link.step!r} {outcome.status.value}", code)

    def _stop_workflow(self, workflow_id: str, why: str, code: ErrorCode) -> None:
        """End the steps of a workflow that have not finished (called with the lock held)."""
        queued = {j.job_id for j in self._queue}
        delayed = {j.job_id for _, j in self._delayed}
        for job_id in self.workflows.get(workflow_id, []):
            if job_id in self.outcomes:
                continue
            if job_id in self._waiting or job_id in queued or job_id in delayed:
                self._waiting.pop(job_id, None)
                self.outcomes[job_id] = JobOutcome(job_id, JobStatus.CANCELLED, why, attempts=0, error_code=code)
            else:  # running: its engine sees the request between stages
                self._cancel.add(job_id)
        self._queue = deque(j for j in self._queue if j.job_id not in self.outcomes)
        self._delayed = [(t, j) for t, j in self._delayed if j.job_id not in self.outcomes]

    def ack_success(self, job: ClaimedJob, *, result_uri: str | None, timings: dict, extra: dict) -> None:
        self._finish(job, JobOutcome(job.job_id, JobStatus.SUCCEEDED, None, result_uri, timings, extra, job.attempt))

    def fail(self, job: ClaimedJob, error: BaseException, *, retry: bool, timings: dict) -> None:
        if retry and job.attempt < self.max_attempts:
            with self._lock:
                self._running -= 1
                backoff_s = 0.2 * 2 ** (job.attempt - 1)
                self._delayed.append((time.monotonic() + backoff_s, ClaimedJob(job.job_id, job.spec, job.attempt + 1)))
            return
        status = JobStatus.DEAD if retry else JobStatus.FAILED
        code = ErrorCode.RETRIES_EXHAUSTED if retry else error_code_of(error)
        outcome = JobOutcome(job.job_id, status, str(error), timings=timings, attempts=job.attempt, error_code=code)
        self._finish(job, outcome)

    def cancel(self, job: ClaimedJob) -> None:
        code = ErrorCode.CANCELLED
        outcome = JobOutcome(job.job_id, JobStatus.CANCELLED, "cancelled", attempts=job.attempt, error_code=code)
        self._finish(job, outcome)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._delayed)

    def exhausted(self) -> bool:
        """True once every job has an outcome (the engine may stop)."""
        with self._lock:
            return not self._queue and not self._delayed and not self._waiting and self._running == 0


class RedisSource:
    """Jobs from the Redis Streams queue (`JobQueue`), claimed under a lease by one consumer.

    Several engines may share one queue: each uses its own `consumer` name and the consumer group
    hands every job to one of them; a job whose engine died is taken over once its lease lapses.
    `ClaimedJob.token` carries the queue's `Claim`; every outcome is checked against its lease token
    inside the queue, so an engine that lost a job can record nothing (`LeaseLost`).
    """

    def __init__(self, queue: JobQueue, consumer: str) -> None:
        if not isinstance(consumer, str) or not 1 <= len(consumer) <= 200:
            raise ValueError(f"consumer {consumer!r} is invalid: expected a name of 1-200 characters")
        self.queue = queue
        self.consumer = consumer

    def claim(self, max_jobs: int, block_s: float) -> list[ClaimedJob]:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        claims = self.queue.claim(self.consumer, count=max_jobs, block_ms=max(0, int(block_s * 1000)))
        # The queue derives the seed exactly as `JobSpec.effective_seed`, so `ClaimedJob.seed` agrees.
        return [ClaimedJob(c.job_id, _with_batch(c.spec, c.batch_id), attempt=c.attempt, token=c) for c in claims]

    @staticmethod
    def _claim(job: ClaimedJob) -> Claim:
        if job.token is None:
            raise ValueError(f"job {job.job_id} was not claimed from the Redis queue (it carries no claim)")
        return job.token

    def renew(self, job: ClaimedJob) -> None:
        if not self.queue.renew(self._claim(job)):
            raise LeaseLost(job.job_id, "renew")

    def is_cancel_requested(self, job: ClaimedJob) -> bool:
        return self.queue.is_cancel_requested(job.job_id)

    def set_stage(self, job: ClaimedJob, stage: str, timings: dict[str, float]) -> None:
        """Show the job's current stage (and the stage timings so far) on its record."""
        self.queue.set_stage(self._claim(job), stage, timings=timings)

    def ack_success(self, job: ClaimedJob, *, result_uri: str | None, timings: dict, extra: dict) -> None:
        if not result_uri:
            raise ValueError(f"job {job.job_id}: ack_success needs a result URI, got {result_uri!r}")
        self.queue.ack_success(self._claim(job), result_uri, extra, timings=timings)

    def fail(self, job: ClaimedJob, error: BaseException, *, retry: bool, timings: dict) -> None:
        # A retryable error may name its own delay (e.g. storage asked to back off).
        delay_s = getattr(error, "retry_after_s", None) if retry else None
        self.queue.fail(
            self._claim(job),
            str(error),
            retryable=retry,
            delay_s=delay_s,
            timings=timings,
            error_code=error_code_of(error),
        )

    def cancel(self, job: ClaimedJob) -> None:
        self.queue.ack_cancelled(self._claim(job))

    def step_outputs(self, job: ClaimedJob) -> dict[str, StepOutput]:
        """The outputs of the steps this step uses, from their records: the text answer
        (`extra["text"]`) and, for a step that generates audio, its result URI."""
        link = job.spec.workflow
        if link is None or not link.uses:
            return {}
        steps = list(link.uses)
        records = self.queue.get_many([link.uses[s] for s in steps])
        outputs: dict[str, StepOutput] = {}
        for step, record in zip(steps, records, strict=True):
            if record is None or record.status is not JobStatus.SUCCEEDED:
                continue
            # Only a step of this very workflow, for this tenant, may hand over its output: a link
            # that names another tenant's job (forged past the API) resolves to nothing.
            used_link = record.spec.workflow if record.spec is not None else None
            if record.tenant != job.tenant or used_link is None or used_link.workflow_id != link.workflow_id:
                continue
            outputs[step] = _step_output(record.spec, record.extra.get("text"), record.result_uri)
        return outputs

    def pending(self) -> int:
        """Jobs waiting in the queue (all priorities, delayed retries included)."""
        return sum(self.queue.queue_depths().values())

    def exhausted(self) -> bool:
        """True when nothing waits and no consumer holds a job (the queue is drained)."""
        return self.pending() == 0 and self.queue.running_count() == 0


def _with_batch(spec: JobSpec, batch_id: str | None) -> JobSpec:
    """The spec with the batch the queue filed the job under (a batch submit keeps it on the record),
    so results land under the batch's folder."""
    if batch_id is None or spec.batch_id == batch_id:
        return spec
    return spec.model_copy(update={"batch_id": batch_id})
