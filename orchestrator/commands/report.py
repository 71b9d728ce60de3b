"""`audio-omni report BATCH --out DIR`: write a batch's HTML report (`DIR/report.html`).

Service mode: the batch's jobs are read from the queue (`REDIS_URL`, prefix) and their results and
inputs from the storage (`S3_BUCKET`, `S3_ENDPOINT_URL`), with the deployment's input rules, as
`audio-omni results` does. One self-contained page: open it in any browser, offline. (Embedded
`audio-omni batch` writes the same page into its own `--out` folder.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.report import DEFAULT_MAX_JOBS, REPORT_FILE

MAX_INPUT_BYTES = 256 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("batch_id", help="the batch to report on")
    parser.add_argument("--out", type=Path, required=True, help=f"folder to write {REPORT_FILE} into")
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=DEFAULT_MAX_JOBS,
        help=f"jobs shown with their audio (default {DEFAULT_MAX_JOBS}; the summary counts them all)",
    )
    conn = parser.add_argument_group("connections (default: environment)")
    conn.add_argument("--redis-url", default=None, help="Redis URL (REDIS_URL / AUDIO_OMNI_REDIS_URL)")
    conn.add_argument("--redis-prefix", default=None, help="key prefix of the deployment")
    conn.add_argument("--s3-bucket", default=None, help="result bucket (S3_BUCKET)")
    conn.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (S3_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    from orchestrator.queue import JobQueue
    from orchestrator.report import jobs_from_queue, render_report
    from orchestrator.settings import Settings
    from orchestrator.storage import input_resolver_from_settings, storage_from_settings
    from orchestrator.tenants import TenantStore

    if not 1 <= args.max_jobs <= 10_000:
        print(f"audio-omni report: --max-jobs {args.max_jobs} is invalid: expected 1-10000", file=sys.stderr)
        return 2
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
        return 2
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
            return 1
    page = render_report(f"Batch {args.batch_id}", jobs, total=total)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    print(path)
    return 0
