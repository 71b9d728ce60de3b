"""`audio-omni report BATCH --out DIR`: write a batch's HTML report (`DIR/report.html`).

Through the HTTP API (`GET /v1/batches/{id}/report`) when `AUDIO_OMNI_API_URL` and
`AUDIO_OMNI_API_KEY` are set, as the other commands: a remote tenant gets its own batches' pages.
Otherwise directly: the batch's jobs are read from the queue (`REDIS_URL`, prefix) and their results
and inputs from the storage (`S3_BUCKET`, `S3_ENDPOINT_URL`), with the deployment's input rules, as
`audio-omni results` does. One self-contained page: open it in any browser, offline. (Embedded
`audio-omni batch` writes the same page into its own `--out` folder.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.report import DEFAULT_MAX_JOBS, REPORT_FILE

MAX_INPUT_BYTES = 256 * 1024 * 1024
API_TIMEOUT_S = 600.0  # a large batch's page takes a while to build


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("batch_id", help="the batch to report on")
    parser.add_argument("--out", type=Path, required=True, help=f"folder to write {REPORT_FILE} into")
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=DEFAULT_MAX_JOBS,
        help=f"jobs shown with their audio, 1-2000 (default {DEFAULT_MAX_JOBS}; the summary counts them all)",
    )
    conn = parser.add_argument_group("connections (default: environment)")
    conn.add_argument("--redis-url", default=None, help="Redis URL (REDIS_URL / AUDIO_OMNI_REDIS_URL)")
    conn.add_argument("--redis-prefix", default=None, help="key prefix of the deployment")
    conn.add_argument("--s3-bucket", default=None, help="result bucket (S3_BUCKET)")
    conn.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (S3_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.jobs import uses_api

    if not 1 <= args.max_jobs <= 2000:
        print(f"audio-omni report: --max-jobs {args.max_jobs} is invalid: expected 1-2000", file=sys.stderr)
        return 2
    page = _via_api(args) if uses_api() else _direct(args)
    if page is None:
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    print(path)
    return 0


def _via_api(args: argparse.Namespace) -> str | None:
    """The page from `GET /v1/batches/{id}/report` (the key's tenant's batches only)."""
    import httpx

    from orchestrator.sdk.base import env_connection

    url, key = env_connection()
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/v1/batches/{args.batch_id}/report",
            params={"max_jobs": args.max_jobs},
            headers={"Authorization": f"Bearer {key}"},
            timeout=API_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        print(f"audio-omni report: the API at {url} did not answer: {exc}", file=sys.stderr)
        return None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        print(f"audio-omni report: {response.status_code} from the API: {message}", file=sys.stderr)
        return None
    return response.text


def _direct(args: argparse.Namespace) -> str | None:
    """The page built here from the queue and the storage."""
    from orchestrator.queue import JobQueue
    from orchestrator.report import jobs_from_queue, render_report
    from orchestrator.settings import Settings
    from orchestrator.storage import input_resolver_from_settings, storage_from_settings
    from orchestrator.tenants import TenantStore

    try:
        settings = Settings.from_env(
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            s3_bucket=args.s3_bucket,
            s3_endpoint_url=args.s3_endpoint_url,
        )
        storage_kwargs = settings.storage_kwargs(embedded=False)
    except ValueError as exc:
        print(f"audio-omni report: {exc}", file=sys.stderr)
        return None
    storage = storage_from_settings(**storage_kwargs)
    with JobQueue.from_settings(settings) as queue:
        tenants = TenantStore.from_settings(settings, client=queue.redis)
        inputs = input_resolver_from_settings(storage, tenant_rules=tenants.input_policy, **storage_kwargs)
        try:
            jobs, total = jobs_from_queue(
                queue,
                storage,
                args.batch_id,
                read_input=lambda uri, tenant: inputs.read(uri, tenant=tenant, max_bytes=MAX_INPUT_BYTES),
                max_jobs=args.max_jobs,
            )
        except KeyError:
            print(f"audio-omni report: batch {args.batch_id!r} not found", file=sys.stderr)
            return None
    return render_report(f"Batch {args.batch_id}", jobs, total=total)
