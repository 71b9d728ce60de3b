"""`audio-omni submit | status | cancel | results`: the client side of service mode.

- `submit SPEC`: SPEC is a JSON object (inline, or a `.json` file) for one job or one workflow
  (an object with a `steps` list), or a `.jsonl` file (one job or workflow per line) submitted as
  one batch. Prints `{"job_id": ...}`, `{"workflow_id": ..., "job_ids": {...}}` or
  `{"batch_id": ..., "jobs": n, "workflows": [...]}`. A job the system runs as a built-in chain
  (`reasoning: true`; voice conversion from source speech) is queued as its workflow.
- `status ID [--watch]`: a job's record, a workflow's steps, or a batch's counts by status and its
  failures; with `--watch` a batch shows a live progress bar until every job has finished.
- `cancel ID`: cancel a queued job now, or a running one at its next stage; for a workflow, every
  step that has not finished.
- `results ID [--out DIR] [--urls]`: list a job's, workflow's or batch's results; `--out` downloads
  each result and its metadata JSON, `--urls` prints presigned links.

Two paths, one output:

- through the HTTP API (`orchestrator.commands.jobs_http`, the SDK) when `AUDIO_OMNI_API_URL` and
  `AUDIO_OMNI_API_KEY` are set: for remote tenants; the key decides the tenant and the API's
  admission and quotas apply. `submit MANIFEST.jsonl --out DIR` then runs the whole manifest with
  the SDK's `run_jsonl` (chunked under the quota, resumable, results downloaded into DIR);
- directly on Redis (and S3 for `results`) otherwise: the operator's path, connections from the
  environment (`REDIS_URL`, `S3_BUCKET`, ...) or the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.jobs import BatchStatus, JobRecord, JobSpec
    from orchestrator.queue import JobQueue
    from orchestrator.settings import Settings
    from orchestrator.storage import Storage
    from orchestrator.workflows import WorkflowSpec, WorkflowStatus

WATCH_EVERY_S = 1.0
MAX_BATCH_LIST = 100_000


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    conn = parser.add_argument_group("connections (default: environment)")
    conn.add_argument("--redis-url", default=None, help="Redis URL (REDIS_URL / AUDIO_OMNI_REDIS_URL)")
    conn.add_argument("--redis-prefix", default=None, help="key prefix of the deployment")
    if name == "submit":
        parser.add_argument(
            "spec", help="a JSON object (a job, or a workflow with `steps`), a .json file, or a .jsonl file (one batch)"
        )
        parser.add_argument("--batch-id", default=None, help="batch id (default: random); re-submitting is idempotent")
        parser.add_argument("--tenant", default=None, help="set this tenant on every spec that names none")
        parser.add_argument(
            "--idempotency-key", default=None, help="re-submitting with the same key returns the first job/batch"
        )
        parser.add_argument(
            "--out", type=Path, default=None, help="API only: run the .jsonl to the end, results into this folder"
        )
    elif name == "status":
        parser.add_argument("id", help="a job id, a workflow id or a batch id")
        parser.add_argument("--watch", action="store_true", help="a batch: live progress until it is done")
        parser.add_argument("--json", action="store_true", help="print the record as JSON")
    elif name == "cancel":
        parser.add_argument("id", help="the job or workflow to cancel")
    elif name == "results":
        parser.add_argument("id", help="a job id, a workflow id or a batch id")
        parser.add_argument("--out", type=Path, default=None, help="download results and metadata into this folder")
        parser.add_argument("--urls", action="store_true", help="print presigned download URLs")
        conn.add_argument("--s3-bucket", default=None, help="result bucket (S3_BUCKET)")
        conn.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (S3_ENDPOINT_URL)")
    else:  # pragma: no cover - the CLI registry names only the four above
        raise ValueError(f"unknown jobs command {name!r}; known: submit, status, cancel, results")


def uses_api() -> bool:
    """Whether the commands go through the HTTP API: `AUDIO_OMNI_API_URL` and `AUDIO_OMNI_API_KEY` set."""
    return bool(os.environ.get("AUDIO_OMNI_API_URL")) and bool(os.environ.get("AUDIO_OMNI_API_KEY"))


def run(args: argparse.Namespace) -> int:
    if uses_api():
        from orchestrator.commands import jobs_http

        return jobs_http.run(args, _read_specs)
    from orchestrator.errors import InvalidJobSpec, JobNotFound
    from orchestrator.queue import JobQueue
    from orchestrator.settings import Settings

    try:
        settings = Settings.from_env(
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            s3_bucket=getattr(args, "s3_bucket", None),
            s3_endpoint_url=getattr(args, "s3_endpoint_url", None),
        )
    except ValueError as exc:
        print(f"audio-omni {args.command}: {exc}", file=sys.stderr)
        return 2
    commands = {"submit": _submit, "status": _status, "cancel": _cancel, "results": _results}
    with JobQueue.from_settings(settings) as queue:
        try:
            return commands[args.command](args, queue, settings)
        except (InvalidJobSpec, JobNotFound, ValueError, OSError) as exc:
            print(f"audio-omni {args.command}: {exc}", file=sys.stderr)
            return 1


# --------------------------------------------------------------------------- submit


def _read_specs(text_or_path: str) -> tuple[list[dict[str, Any]], bool]:
    """(items, is_batch): a .jsonl file is a batch (one job or workflow per line); a .json file or
    inline JSON is one job or one workflow."""
    path = Path(text_or_path)
    if not text_or_path.lstrip().startswith("{") and path.is_file():
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            specs = []
            for line_no, line in enumerate(raw.splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    specs.append(_parse_object(line, f"{path}:{line_no}"))
            if not specs:
                raise ValueError(f"{path} holds no job specs")
            return specs, True
        return [_parse_object(raw, str(path))], False
    if not text_or_path.lstrip().startswith("{"):
        raise ValueError(f"{text_or_path!r} is neither a JSON object nor an existing .json/.jsonl file")
    return [_parse_object(text_or_path, "the spec")], False


def _parse_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _is_workflow(item: dict[str, Any]) -> bool:
    """A workflow is an object whose `steps` is a list (a job's `steps` is its step count)."""
    from orchestrator.workflows import is_workflow_data

    return is_workflow_data(item)


def _as_workflow(item: dict[str, Any], where: str) -> WorkflowSpec | JobSpec:
    """The workflow an item is (a workflow object, or a job that expands into a built-in chain), or
    the plain job. Raises `InvalidJobSpec` naming `where` and the field."""
    from pydantic import ValidationError

    from orchestrator.errors import InvalidJobSpec
    from orchestrator.jobs import JobSpec, format_validation_error
    from orchestrator.workflows import expand_job, parse_workflow

    what = "workflow" if _is_workflow(item) else "job spec"
    try:
        if _is_workflow(item):
            return parse_workflow(item)
        spec = JobSpec.model_validate(item)  # a built-in chain is a valid spec (not a runnable job)
        workflow = expand_job(spec)
    except ValidationError as exc:
        raise InvalidJobSpec(format_validation_error(exc, prefix=where), what=what) from None
    except InvalidJobSpec as exc:
        raise InvalidJobSpec([(".".join(p for p in (where, f) if p), m) for f, m in exc.errors], what=what) from None
    return spec if workflow is None else workflow


def _submit(args: argparse.Namespace, queue: JobQueue, settings: Settings) -> int:
    if args.out is not None:
        raise ValueError(
            "--out runs a manifest through the API: set AUDIO_OMNI_API_URL and AUDIO_OMNI_API_KEY "
            "(or run it in embedded mode with `audio-omni batch MANIFEST --out DIR`)"
        )
    specs, is_batch = _read_specs(args.spec)
    if args.idempotency_key:
        if is_batch:
            raise ValueError(
                "--idempotency-key names one job or workflow here; a batch is made idempotent by --batch-id"
            )
        specs[0]["idempotency_key"] = args.idempotency_key
    if args.tenant:
        for spec in specs:
            spec.setdefault("tenant", args.tenant)
    if is_batch:
        print(json.dumps(_submit_batch(queue, specs, args.batch_id)))
        return 0
    if args.batch_id:
        specs[0]["batch_id"] = args.batch_id
    from orchestrator.workflows import WorkflowSpec

    item = _as_workflow(specs[0], "")
    if isinstance(item, WorkflowSpec):
        status = queue.submit_workflow(item)
        print(json.dumps(_workflow_created(status)))
    else:
        record = queue.submit(item)
        print(json.dumps({"job_id": record.job_id, "status": record.status.value}))
    return 0


def _workflow_created(status: WorkflowStatus) -> dict[str, Any]:
    return {
        "workflow_id": status.workflow_id,
        "status": status.status.value,
        "job_ids": {step.id: step.job_id for step in status.steps},
    }


def _submit_batch(queue: JobQueue, items: list[dict[str, Any]], batch_id: str | None) -> dict[str, Any]:
    """Queue a JSONL batch whose lines are jobs or workflows, all under one batch id: the plain jobs
    as `{batch_id}-{j}` in one `submit_batch`, each workflow (line i) under the id
    `workflow_id_for_key(tenant, "{batch_id}/{i}")`, so re-submitting with `--batch-id` queues
    nothing twice. Every line is validated before anything is queued."""
    from orchestrator.errors import InvalidJobSpec
    from orchestrator.jobs import MAX_BATCH_ID_CHARS, new_batch_id, validate_id
    from orchestrator.workflows import WorkflowSpec, workflow_id_for_key

    batch_id = new_batch_id() if batch_id is None else validate_id(batch_id, "batch_id", max_chars=MAX_BATCH_ID_CHARS)
    plain: list[JobSpec] = []
    workflows: list[tuple[int, WorkflowSpec]] = []
    errors: list[tuple[str, str]] = []
    for i, raw in enumerate(items):
        try:
            item = _as_workflow(raw, f"specs[{i}]")
        except InvalidJobSpec as exc:
            errors.extend(exc.errors)
            continue
        if isinstance(item, WorkflowSpec):
            workflows.append((i, item.model_copy(update={"batch_id": batch_id})))
        else:
            plain.append(item)
    if errors:
        raise InvalidJobSpec(errors, what="batch")
    total = 0
    if plain:
        batch_id, job_ids = queue.submit_batch(plain, batch_id=batch_id)
        total += len(job_ids)
    created = []
    for i, workflow in workflows:
        workflow_id = workflow_id_for_key(workflow.tenant, f"{batch_id}/{i}")
        status = queue.submit_workflow(workflow, workflow_id=workflow_id)
        total += len(status.steps)
        created.append({"line": i + 1, **_workflow_created(status)})
    out: dict[str, Any] = {"batch_id": batch_id, "jobs": total}
    if created:
        out["workflows"] = created
    return out


# --------------------------------------------------------------------------- status


def _job_view(record: JobRecord) -> dict[str, Any]:
    view = {
        "job_id": record.job_id,
        "status": record.status.value,
        "stage": record.stage,
        "attempts": record.attempts,
        "task": record.spec.task.value if record.spec else None,
        "tenant": record.tenant,
        "batch_id": record.batch_id,
        "error": record.error,
        "result_uri": record.result_uri,
        "timings_s": record.timings or None,
        "text": record.extra.get("text"),
    }
    return {k: v for k, v in view.items() if v is not None}


def _batch_view(batch: BatchStatus) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        "total": batch.total,
        "finished": batch.finished,
        "counts": {s.value: n for s, n in batch.counts.items() if n},
        "failures": [f.model_dump(mode="json") for f in batch.failures],
        "failures_total": batch.failures_total,
    }


def _print_workflow(status: WorkflowStatus) -> None:
    where = f" at step {status.failed_step!r}" if status.failed_step else ""
    reason = f": {status.error}" if status.error else ""
    print(f"workflow {status.workflow_id}: {status.status.value}{where}{reason}")
    width = max(len(step.id) for step in status.steps)
    for step in status.steps:
        detail = step.result_uri if step.result_available and step.result_uri else ""
        if step.text is not None:
            detail = f"answer: {step.text[:60]!r}"
        elif step.error:
            detail = step.error
        task = step.task or "-"
        print(f"  {step.id.ljust(width)}  {task:<16} {step.status.value:<10} {step.job_id}  {detail}".rstrip())


def _status(args: argparse.Namespace, queue: JobQueue, settings: Settings) -> int:
    from orchestrator.errors import JobNotFound

    record = queue.get(args.id)
    if record is not None:
        view = _job_view(record)
        if args.json:
            print(json.dumps(view, indent=2))
        else:
            for key, value in view.items():
                print(f"{key:>10}: {value}")
        return 0
    workflow = _workflow_or_none(queue, args.id)
    if workflow is not None:
        if args.json:
            print(json.dumps(workflow.model_dump(mode="json", exclude_none=True), indent=2))
        else:
            _print_workflow(workflow)
        return 0
    batch = queue.batch_status(args.id)
    if batch is None:
        raise JobNotFound(args.id)
    if args.watch:
        batch = _watch(queue, batch)
    if args.json:
        print(json.dumps(_batch_view(batch), indent=2))
    else:
        counts = ", ".join(f"{s.value} {n}" for s, n in batch.counts.items() if n)
        print(f"batch {batch.batch_id}: {batch.finished}/{batch.total} finished ({counts})")
        for failure in batch.failures:
            print(f"  {failure.job_id}  {failure.status.value if failure.status else '?'}  {failure.error}")
        if batch.next_offset is not None:
            print(f"  ... {batch.failures_total - len(batch.failures)} more failures")
    return 0


def _watch(queue: JobQueue, batch: BatchStatus) -> BatchStatus:
    """A live progress bar over the batch until every job has finished; returns the last status."""
    from tqdm import tqdm

    with tqdm(total=batch.total, unit="job", file=sys.stderr, desc=batch.batch_id[:16]) as bar:
        while True:
            bar.update(batch.finished - bar.n)
            bar.set_postfix({s.value: n for s, n in batch.counts.items() if n}, refresh=True)
            if batch.done:
                return batch
            time.sleep(WATCH_EVERY_S)
            batch = queue.batch_status(batch.batch_id) or batch


# --------------------------------------------------------------------------- cancel


def _workflow_or_none(queue: JobQueue, id_: str) -> WorkflowStatus | None:
    """The workflow `id_`, or None (also for a string that cannot be a workflow id)."""
    from orchestrator.jobs import validate_id

    try:
        validate_id(id_, "workflow_id")
    except ValueError:
        return None
    return queue.workflow_status(id_)


def _cancel(args: argparse.Namespace, queue: JobQueue, settings: Settings) -> int:
    if queue.get(args.id) is None and _workflow_or_none(queue, args.id) is not None:
        workflow = queue.cancel_workflow(args.id)
        running = [step.id for step in workflow.steps if step.status.value == "running"]
        note = f" (steps {', '.join(running)} stop at their next stage)" if running else ""
        print(f"{args.id}: workflow {workflow.status.value}{note}")
        return 0
    status = queue.cancel(args.id)
    note = " (cancel requested; it stops at its next stage)" if status.value == "running" else ""
    print(f"{args.id}: {status.value}{note}")
    return 0


# --------------------------------------------------------------------------- results


def _records(queue: JobQueue, id_: str) -> list[JobRecord]:
    from orchestrator.errors import JobNotFound
    from orchestrator.jobs import batch_job_id

    record = queue.get(id_)
    if record is not None:
        return [record]
    workflow = _workflow_or_none(queue, id_)
    if workflow is not None:
        return [r for r in queue.get_many([step.job_id for step in workflow.steps]) if r is not None]
    batch = queue.batch_status(id_)
    if batch is None:
        raise JobNotFound(id_)
    if batch.total > MAX_BATCH_LIST:
        raise ValueError(f"batch {id_} has {batch.total} jobs; listing is limited to {MAX_BATCH_LIST}")
    ids = [batch_job_id(id_, i) for i in range(batch.total)]  # the plain items (fewer in a mixed batch)
    out: list[JobRecord] = []
    for start in range(0, len(ids), 500):
        out.extend(r for r in queue.get_many(ids[start : start + 500]) if r is not None)
    if len(out) == batch.total or batch.tenant is None:
        return out
    for workflow_id in _batch_workflow_ids(queue, id_, batch.tenant, batch.total):
        workflow = queue.workflow_status(workflow_id)
        if workflow is not None:
            out.extend(r for r in queue.get_many([s.job_id for s in workflow.steps]) if r is not None)
    return out


def _batch_workflow_ids(queue: JobQueue, batch_id: str, tenant: str, total: int) -> list[str]:
    """The workflows of a batch, in item order. Item i that is a workflow has the id
    `workflow_id_for_key(tenant, "{batch_id}/{i}")` (as `submit` and `POST /v1/batches` give it),
    and a batch of `total` jobs has at most `total` items."""
    from orchestrator.workflows import workflow_id_for_key

    candidates = [workflow_id_for_key(tenant, f"{batch_id}/{i}") for i in range(total)]
    with queue.redis.pipeline(transaction=False) as pipe:
        for workflow_id in candidates:
            pipe.exists(queue.keys.workflow(workflow_id))
        found = pipe.execute()
    return [w for w, hit in zip(candidates, found, strict=True) if hit]


def _key_of(uri: str, storage: Storage) -> str:
    key = storage.key_of(uri)
    if key is None:
        raise ValueError(f"result {uri} is not in the configured result storage (S3_BUCKET / --s3-bucket)")
    return key


def _results(args: argparse.Namespace, queue: JobQueue, settings: Settings) -> int:
    records = _records(queue, args.id)
    storage: Storage | None = None
    if args.out is not None or args.urls:
        from orchestrator.storage import storage_from_settings

        storage = storage_from_settings(**settings.storage_kwargs(embedded=False))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
    missing = 0
    for record in records:
        if record.status.value != "succeeded" or not record.result_uri:
            missing += 1
            print(f"{record.job_id}  {record.status.value}  {record.error or ''}".rstrip())
            continue
        uris = [record.result_uri]
        meta_uri = record.extra.get("metadata_uri")
        if meta_uri and meta_uri != record.result_uri:
            uris.append(meta_uri)
        line = f"{record.job_id}  succeeded  {'  '.join(uris)}"
        if storage is not None:
            keys = [_key_of(u, storage) for u in uris]
            if args.urls:
                line += "  " + "  ".join(storage.url(k) for k in keys)
            if args.out is not None:
                for key in keys:
                    (args.out / key.rsplit("/", 1)[-1]).write_bytes(storage.get(key))
        print(line)
    if args.out is not None:
        print(f"downloaded {len(records) - missing} result(s) into {args.out}", file=sys.stderr)
    return 0 if missing == 0 else 1
