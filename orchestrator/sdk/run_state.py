"""The journal of a `run_jsonl` (`out_dir/run_state.jsonl`) and the manifest it runs: what was
sent, what became which batch and job, what finished; and the manifest's lines, validated up front.

The journal is append-only, one JSON object per line, each flushed and synced before the step it
records is acted on; replaying it gives the state a resumed run starts from. Records:
`manifest` (path, sha256), `chunk` (key, lines: about to be sent), `batch` (key, batch_id, the job
of each line), `refused` (key: nothing of it was queued), `done` (a line's final state and file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.api_errors import ApiError
from orchestrator.jobs import JobSpec, format_validation_error
from orchestrator.sdk.models import BatchResultLine, JobView
from orchestrator.workflows import WorkflowSpec, expand_job, is_workflow_data

__all__ = ["EXPIRED", "Done", "Entry", "Journal", "Outcome", "RunState", "chunk_key", "learn_limit", "read_manifest"]

EXPIRED = "expired"  # a line whose job record expired before the run collected it
MAX_LISTED_PROBLEMS = 20
_QUOTA_RE = re.compile(r"has (\d+) jobs in flight; \d+ more would exceed its quota of (\d+)")
_AT_MOST_RE = re.compile(r"at most (\d+)")


@dataclass(frozen=True)
class Entry:
    line: int  # 1-based line number in the manifest
    body: dict[str, Any]
    jobs: int  # jobs it queues (a workflow's steps)


@dataclass(frozen=True)
class Outcome:
    """How a job ended, as a results line or the job itself says."""

    status: str
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    text: str | None = None
    error: str | None = None
    error_code: str | None = None

    @classmethod
    def of(cls, view: BatchResultLine | JobView) -> Outcome:
        return cls(
            status=view.status.value if view.status is not None else EXPIRED,
            custom_id=view.custom_id,
            metadata=view.metadata,
            text=view.text,
            error=view.error,
            error_code=view.error_code,
        )


@dataclass
class Done:
    line: int
    job_id: str
    status: str
    workflow_id: str | None = None
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    result_path: str | None = None
    text: str | None = None
    error: str | None = None
    error_code: str | None = None


@dataclass
class RunState:
    """What the journal says: the chunks sent (and whether each became a batch), the job of each
    line, and the lines finished."""

    chunks: dict[str, list[int]] = field(default_factory=dict)  # key -> lines
    batches: dict[str, str] = field(default_factory=dict)  # key -> batch id
    refused: set[str] = field(default_factory=set)
    jobs: dict[int, tuple[str, str | None, str]] = field(default_factory=dict)  # line -> (job, workflow, batch)
    done: dict[int, Done] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> None:
        op = record.get("op")
        if op == "chunk":
            self.chunks[record["key"]] = [int(n) for n in record["lines"]]
            self.refused.discard(record["key"])  # sent again after a refusal
        elif op == "batch":
            self.batches[record["key"]] = record["batch_id"]
            for line, (job_id, workflow_id) in record["jobs"].items():
                self.jobs[int(line)] = (job_id, workflow_id, record["batch_id"])
        elif op == "refused":
            self.refused.add(record["key"])
        elif op == "done":
            done = Done(**{k: v for k, v in record.items() if k != "op"})
            self.done[done.line] = done

    def pending_chunks(self) -> list[str]:
        """Chunks sent whose answer was never recorded: send them again with the same key."""
        return [k for k in self.chunks if k not in self.batches and k not in self.refused]


class Journal:
    """The run's state file: one JSON object per line, flushed and synced before the step it
    records is acted on. A torn last line (a crash mid-write) is ignored on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = RunState()
        self.header: dict[str, Any] | None = None
        if path.exists():
            for raw in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if record.get("op") == "manifest":
                    self.header = record
                else:
                    self.state.apply(record)
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if record.get("op") != "manifest":
            self.state.apply(record)

    def close(self) -> None:
        self._file.close()


def read_manifest(path: Path) -> list[Entry]:
    """The manifest's jobs and workflows (blank and `#` lines skipped), each validated here so a bad
    line is reported with its number before anything is submitted."""
    entries: list[Entry] = []
    problems: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(body, dict):
            problems.append(f"{where}: expected a JSON object, got {type(body).__name__}")
            continue
        try:
            if is_workflow_data(body):
                jobs = len(WorkflowSpec.model_validate(body).steps)
            else:
                workflow = expand_job(JobSpec.model_validate(body))
                jobs = 1 if workflow is None else len(workflow.steps)
        except ValidationError as exc:
            problems.extend(f"{where}: {field}: {message}" for field, message in format_validation_error(exc))
            continue
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        entries.append(Entry(number, body, jobs))
    if problems:
        more = len(problems) - MAX_LISTED_PROBLEMS
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS]) + (f"\n  ... and {more} more" if more > 0 else "")
        raise ValueError(f"the manifest has {len(problems)} invalid line(s); nothing was submitted:\n  {listed}")
    if not entries:
        raise ValueError(f"{path} holds no jobs")
    return entries


def chunk_key(manifest: Path, digest: str, lines: list[int]) -> str:
    """The idempotency key of a chunk: the manifest's path and content, and the chunk's lines."""
    seed = f"run_jsonl\0{manifest.resolve()}\0{digest}\0{','.join(map(str, lines))}"
    return "rj-" + hashlib.sha256(seed.encode()).hexdigest()[:48]


def learn_limit(error: ApiError) -> tuple[int | None, int | None]:
    """(quota, in flight) from a 429 `quota_exceeded` message, or (limit, None) from a 413."""
    match = _QUOTA_RE.search(error.message)
    if match:
        return int(match.group(2)), int(match.group(1))
    match = _AT_MOST_RE.search(error.message)
    return (int(match.group(1)), None) if match else (None, None)
