"""What a report shows of each job (`ReportJob`), gathered from where the jobs ran:

- `jobs_from_queue`: a batch of the service (its records in Redis, its results in the storage), in
  batch order;
- `jobs_from_manifest`: an embedded `audio-omni batch` run (its `ManifestSource`, the output folder).

Audio is read through the result storage (results) and an optional input reader (the inputs of
edits, with the same rules the engine read them with). Nothing here renders HTML.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.jobs import JobSpec, JobStatus
from orchestrator.storage import Storage, StorageError

if TYPE_CHECKING:
    from orchestrator.queue import JobQueue
    from orchestrator.records import JobRecord
    from orchestrator.sources import JobOutcome, ManifestSource

__all__ = ["InputReader", "ReportJob", "jobs_from_manifest", "jobs_from_queue"]

# Reads an input URI for a tenant: `(uri, tenant) -> bytes` (e.g. `InputResolver.read` bound to a size).
InputReader = Callable[[str, str], bytes]
MAX_METADATA_BYTES = 1 << 20
# The spec's text fields shown on a job's card, in this order.
SHOWN_FIELDS = ("prompt", "source_prompt", "transcript", "voice_prompt_text")
SHOWN_PARAMS = ("duration_s", "steps", "cfg_scale", "seed", "output_format", "priority")


@dataclass
class ReportJob:
    """One job as the report shows it. `result` and `input_audio` are the raw file bytes (None when
    there is none or it could not be read: `notes` says why)."""

    job_id: str
    label: str
    task: str
    status: str
    fields: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    error: str | None = None
    error_code: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, Any] | None = None
    custom_id: str | None = None
    result: bytes | None = None
    result_name: str | None = None
    input_audio: bytes | None = None
    input_name: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(self.timings.values()))


# --------------------------------------------------------------------------- service mode


def jobs_from_queue(
    queue: JobQueue,
    storage: Storage,
    batch_id: str,
    *,
    read_input: InputReader | None = None,
    max_jobs: int = 500,
) -> tuple[list[ReportJob], int]:
    """The first `max_jobs` jobs of a batch in batch order (`JobQueue.batch_items`: plain items and
    workflow steps as submitted), and how many jobs the batch has. Raises `KeyError` for an unknown
    batch."""
    status = queue.batch_status(batch_id, limit=1)
    if status is None:
        raise KeyError(batch_id)
    jobs: list[ReportJob] = []
    cursor: str | None = None
    while len(jobs) < max_jobs:
        items, cursor = queue.batch_items(batch_id, limit=min(1000, max_jobs - len(jobs)), cursor=cursor)
        for item in items:
            link = item.record.spec.workflow if item.record.spec is not None else None
            label = f"{item.index}" if link is None else f"{item.index} ({link.step})"
            jobs.append(_from_record(label, item.record, storage, read_input))
        if cursor is None:
            break
    return jobs, status.total


def _from_record(label: str, record: JobRecord, storage: Storage, read_input: InputReader | None) -> ReportJob:
    job = _base(record.job_id, label, record.spec, record.status, record.error, record.timings, record.extra)
    job.error_code = record.error_code
    job.attempts = record.attempts
    job.submitted_at, job.started_at, job.finished_at = record.submitted_at, record.started_at, record.finished_at
    _attach_audio(job, record.spec, record.result_uri, record.extra, record.tenant, storage, read_input)
    return job


# --------------------------------------------------------------------------- embedded mode


def jobs_from_manifest(
    source: ManifestSource, storage: Storage, *, read_input: InputReader | None = None, max_jobs: int = 500
) -> tuple[list[ReportJob], int]:
    """The jobs of an embedded run in manifest order (a workflow's steps in their own order, lines
    refused before they ran included), at most `max_jobs`, and how many there were."""
    order = source.job_ids()
    jobs: list[ReportJob] = []
    for job_id in order[:max_jobs]:
        spec = source.specs.get(job_id)
        label = source.label(job_id)
        outcome: JobOutcome | None = source.outcomes.get(job_id)
        if outcome is None:
            error = source.invalid.get(job_id)
            status = JobStatus.FAILED if error else JobStatus.QUEUED
            jobs.append(_base(job_id, label, spec, status, error, {}, {}))
            continue
        job = _base(job_id, label, spec, outcome.status, outcome.error, outcome.timings, outcome.extra)
        job.error_code = outcome.error_code
        job.attempts = outcome.attempts
        tenant = spec.tenant if spec is not None else "default"
        _attach_audio(job, spec, outcome.result_uri, outcome.extra, tenant, storage, read_input)
        jobs.append(job)
    return jobs, len(order)


# --------------------------------------------------------------------------- shared


def _base(
    job_id: str,
    label: str,
    spec: JobSpec | None,
    status: JobStatus,
    error: str | None,
    timings: Mapping[str, float],
    extra: Mapping[str, Any],
) -> ReportJob:
    text = extra.get("text")
    job = ReportJob(
        job_id=job_id,
        label=label,
        task=_task_label(spec),
        status=status.value,
        text=text if isinstance(text, str) else None,
        error=error,
        timings={k: float(v) for k, v in timings.items() if isinstance(v, int | float)},
    )
    if spec is not None:
        job.fields = {name: value for name in SHOWN_FIELDS if isinstance(value := getattr(spec, name), str)}
        job.params = {name: _plain(getattr(spec, name)) for name in SHOWN_PARAMS if getattr(spec, name) is not None}
        job.metadata = dict(spec.metadata) if spec.metadata is not None else None
        job.custom_id = spec.custom_id
    return job


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # enums by their value


def _task_label(spec: JobSpec | None) -> str:
    if spec is None:
        return "-"
    return f"edit:{spec.op.value}" if spec.op is not None else spec.task.value


def _attach_audio(
    job: ReportJob,
    spec: JobSpec | None,
    result_uri: str | None,
    extra: Mapping[str, Any],
    tenant: str,
    storage: Storage,
    read_input: InputReader | None,
) -> None:
    """Read the result's bytes, the stored metadata's notes, and the input of an edit."""
    resolved: Mapping[str, Any] = {}
    metadata_uri = extra.get("metadata_uri")
    if job.status == JobStatus.SUCCEEDED.value and isinstance(metadata_uri, str):
        document = _read_json(storage, metadata_uri, job)
        found = document.get("resolved")
        resolved = found if isinstance(found, Mapping) else {}
        job.notes.extend(str(n) for n in document.get("notes", []) if isinstance(n, str))
    if job.status == JobStatus.SUCCEEDED.value and result_uri and result_uri != metadata_uri:
        key = storage.key_of(result_uri)
        if key is None:
            job.notes.append(f"result {result_uri} is not in this storage")
        else:
            try:
                job.result, job.result_name = storage.get(key), key.rsplit("/", 1)[-1]
            except (StorageError, OSError) as exc:  # missing or unreadable: shown on the card, not fatal
                job.notes.append(f"result not readable: {exc}")
    uri = spec.input_audio_uri if spec is not None else None
    if isinstance(resolved.get("input_audio_uri"), str):
        uri = resolved["input_audio_uri"]  # a workflow step's input is an earlier step's result
    if uri and "{{" not in uri:
        job.input_name = uri.rsplit("/", 1)[-1]
        job.input_audio = _read_input(uri, tenant, storage, read_input, job)


def _read_json(storage: Storage, uri: str, job: ReportJob) -> dict[str, Any]:
    key = storage.key_of(uri)
    if key is None:
        return {}
    try:
        document = json.loads(storage.read(key, max_bytes=MAX_METADATA_BYTES))
    except (StorageError, OSError, ValueError) as exc:  # shown on the card: the report still renders
        job.notes.append(f"metadata not readable: {exc}")
        return {}
    return document if isinstance(document, dict) else {}


def _read_input(
    uri: str, tenant: str, storage: Storage, read_input: InputReader | None, job: ReportJob
) -> bytes | None:
    try:
        if read_input is not None:
            return read_input(uri, tenant)
        key = storage.key_of(uri)
        if key is not None and key.startswith(storage.tenant_prefix(tenant)):
            return storage.get(key)
    except (StorageError, OSError) as exc:  # shown on the card: the report still renders
        job.notes.append(f"input not readable: {exc}")
        return None
    job.notes.append("input not shown: it is outside this report's storage")
    return None
