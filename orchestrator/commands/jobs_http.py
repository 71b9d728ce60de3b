"""`audio-omni submit | status | cancel | results` through the HTTP API (the SDK), used when
`AUDIO_OMNI_API_URL` and `AUDIO_OMNI_API_KEY` are set: the API key decides the tenant, and the
API's admission, quotas and limits apply as to any client. Output matches the direct path's."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

if TYPE_CHECKING:
    from orchestrator.sdk import BatchView, Client, JobView, WorkflowView

T = TypeVar("T")
WATCH_EVERY_S = 1.0
ReadSpecs = Callable[[str], tuple[list[dict[str, Any]], bool]]


def run(args: argparse.Namespace, read_specs: ReadSpecs) -> int:
    from orchestrator.sdk import ApiError, Client, WaitTimeout

    commands: dict[str, Callable[[argparse.Namespace, Client], int]] = {
        "status": _status,
        "cancel": _cancel,
        "results": _results,
    }
    try:
        with Client.from_env() as client:
            if args.command == "submit":
                return _submit(args, client, read_specs)
            return commands[args.command](args, client)
    except ApiError as exc:
        print(f"audio-omni {args.command}: {exc}", file=sys.stderr)
        for detail in exc.details[1:]:
            print(f"  {detail['field'] or '-'}: {detail['message']}", file=sys.stderr)
        return 1
    except (httpx.TransportError, WaitTimeout, ValueError, OSError) as exc:
        print(f"audio-omni {args.command}: {exc}", file=sys.stderr)
        return 1


def _or_none(fetch: Callable[[], T]) -> T | None:
    """`fetch()`, or None when the API answers 404 (not this kind of id, or not the caller's)."""
    from orchestrator.sdk import ApiError

    try:
        return fetch()
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    except ValueError:  # not even a valid id
        return None


def _lookup(client: Client, id_: str) -> JobView | WorkflowView | BatchView:
    """The job, workflow or batch `id_` names (tried in that order)."""
    found = (
        _or_none(lambda: client.status(id_))
        or _or_none(lambda: client.workflow(id_))
        or _or_none(lambda: client.batch_status(id_))
    )
    if found is None:
        raise ValueError(f"no job, workflow or batch {id_!r} for this API key")
    return found


# --------------------------------------------------------------------------- submit


def _submit(
    args: argparse.Namespace, client: Client, read_specs: Callable[[str], tuple[list[dict[str, Any]], bool]]
) -> int:
    from orchestrator.sdk import JobView, run_jsonl
    from orchestrator.workflows import is_workflow_data

    if args.tenant:
        raise ValueError("--tenant is not used with the API: the API key decides the tenant")
    if args.batch_id:
        raise ValueError("--batch-id is for the direct Redis path; with the API use --idempotency-key")
    if args.out is not None:
        if not str(args.spec).endswith(".jsonl"):
            raise ValueError("--out runs a .jsonl manifest to the end; give a .jsonl file")
        summary = run_jsonl(client, args.spec, args.out, progress=sys.stderr.isatty())
        print(json.dumps({"results": str(summary.results_path), "lines": summary.total, "counts": summary.counts}))
        return 0 if summary.succeeded == summary.total else 1
    specs, is_batch = read_specs(args.spec)
    if is_batch:
        created = client.submit_batch(specs, idempotency_key=args.idempotency_key)
        out: dict[str, Any] = {"batch_id": created.batch_id, "jobs": created.total}
        if created.workflows:
            out["workflows"] = [
                {"line": w.index + 1, "workflow_id": w.workflow_id, "job_ids": w.job_ids} for w in created.workflows
            ]
        print(json.dumps(out))
        return 0
    spec = specs[0]
    if is_workflow_data(spec):
        result: JobView | WorkflowView = client.submit_workflow(spec, idempotency_key=args.idempotency_key)
    else:
        if args.idempotency_key:
            spec = {**spec, "idempotency_key": args.idempotency_key}
        result = client.submit(spec)
    if isinstance(result, JobView):
        print(json.dumps({"job_id": result.job_id, "status": result.status.value}))
    else:
        steps = {step.id: step.job_id for step in result.steps}
        print(json.dumps({"workflow_id": result.workflow_id, "status": result.status.value, "job_ids": steps}))
    return 0


# --------------------------------------------------------------------------- status


def _status(args: argparse.Namespace, client: Client) -> int:
    from orchestrator.sdk import BatchView, JobView

    found = _lookup(client, args.id)
    if isinstance(found, BatchView) and args.watch:
        found = _watch(client, found)
    if args.json:
        print(json.dumps(found.model_dump(mode="json", exclude_none=True), indent=2))
    elif isinstance(found, JobView):
        view = found.model_dump(mode="json", exclude_none=True, exclude={"spec"})
        view["task"] = (found.spec or {}).get("task")
        for key, value in view.items():
            print(f"{key:>16}: {value}")
    elif isinstance(found, BatchView):
        _print_batch(found)
    else:
        _print_workflow(found)
    return 0


def _print_batch(batch: BatchView) -> None:
    counts = ", ".join(f"{status} {n}" for status, n in batch.counts.items() if n)
    print(f"batch {batch.batch_id}: {batch.finished}/{batch.total} finished ({counts})")
    for failure in batch.failures:
        code = f" [{failure.error_code}]" if failure.error_code else ""
        print(f"  {failure.job_id}  {failure.status.value if failure.status else '?'}{code}  {failure.error}")
    if batch.next_offset is not None:
        print(f"  ... {batch.failures_total - len(batch.failures)} more failures")


def _print_workflow(workflow: WorkflowView) -> None:
    where = f" at step {workflow.failed_step!r}" if workflow.failed_step else ""
    reason = f": {workflow.error}" if workflow.error else ""
    print(f"workflow {workflow.workflow_id}: {workflow.status.value}{where}{reason}")
    width = max((len(step.id) for step in workflow.steps), default=0)
    for step in workflow.steps:
        detail = "result available" if step.result_available else ""
        if step.text is not None:
            detail = f"answer: {step.text[:60]!r}"
        elif step.error:
            detail = step.error
        print(
            f"  {step.id.ljust(width)}  {step.task.value:<16} {step.status.value:<10} {step.job_id}  {detail}".rstrip()
        )


def _watch(client: Client, batch: BatchView) -> BatchView:
    """A live progress bar over the batch until every job has finished; returns the last view."""
    import time

    from tqdm import tqdm

    with tqdm(total=batch.total, unit="job", file=sys.stderr, desc=batch.batch_id[:16]) as bar:
        while True:
            bar.update(batch.finished - bar.n)
            bar.set_postfix({s: n for s, n in batch.counts.items() if n}, refresh=True)
            if batch.done:
                return batch
            time.sleep(WATCH_EVERY_S)
            batch = client.batch_status(batch.batch_id)


# --------------------------------------------------------------------------- cancel


def _cancel(args: argparse.Namespace, client: Client) -> int:
    cancelled = _or_none(lambda: client.cancel(args.id))
    if cancelled is not None:
        note = " (cancel requested; it stops at its next stage)" if cancelled.cancel_requested else ""
        print(f"{args.id}: {cancelled.status.value}{note}")
        return 0
    workflow = _or_none(lambda: client.cancel_workflow(args.id))
    if workflow is None:
        raise ValueError(f"no job or workflow {args.id!r} for this API key")
    running = [step.id for step in workflow.steps if step.status.value == "running"]
    note = f" (steps {', '.join(running)} stop at their next stage)" if running else ""
    print(f"{args.id}: workflow {workflow.status.value}{note}")
    return 0


# --------------------------------------------------------------------------- results


def _rows(client: Client, found: JobView | WorkflowView | BatchView) -> list[tuple[str, str, str | None, str | None]]:
    """(job id, status, error, text) of every job the id names (a batch's in batch order)."""
    from orchestrator.sdk import BatchView, JobView

    if isinstance(found, JobView):
        return [(found.job_id, found.status.value, found.error, found.text)]
    if isinstance(found, BatchView):
        return [
            (line.job_id, line.status.value if line.status else "expired", line.error, line.text)
            for line in client.iter_batch_results(found.batch_id)
        ]
    return [(step.job_id, step.status.value, step.error, step.text) for step in found.steps]


def _results(args: argparse.Namespace, client: Client) -> int:
    from orchestrator.sdk import ApiError

    rows = _rows(client, _lookup(client, args.id))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    missing = 0
    for job_id, status, error, text in rows:
        if status != "succeeded":
            missing += 1
            print(f"{job_id}  {status}  {error or ''}".rstrip())
            continue
        line = f"{job_id}  succeeded"
        if text is not None:
            line += f"  answer: {text[:60]!r}"
        if args.urls:
            try:
                line += f"  {client.result(job_id).url}"
            except ApiError as exc:  # embedded mode serves the bytes: its API URL is the link
                if exc.code != "not_json":
                    raise
                line += f"  {client.base_url}/v1/jobs/{job_id}/result"
        if args.out is not None:
            line += f"  {_save(client, job_id, args.out)}"
        print(line)
    if args.out is not None:
        print(f"downloaded {len(rows) - missing} result(s) into {args.out}", file=sys.stderr)
    return 0 if missing == 0 else 1


def _save(client: Client, job_id: str, out: Path) -> Path:
    """The result into `out`, and its metadata JSON beside it when the API gives its URL."""
    from orchestrator.sdk import ApiError

    path = client.save_result(job_id, out)
    try:
        metadata_url = client.result(job_id).metadata_url
    except ApiError as exc:
        if exc.code != "not_json":
            raise
        metadata_url = None
    if metadata_url and path.suffix != ".json":
        response = httpx.get(metadata_url, timeout=client.config.timeout_s)
        response.raise_for_status()
        path.with_suffix(".json").write_bytes(response.content)
    return path
