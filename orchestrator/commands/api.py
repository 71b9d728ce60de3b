"""`audio-omni api --port N`: serve the HTTP API under uvicorn.

Connects to Redis (`REDIS_URL`) and S3 (`S3_BUCKET`, `S3_ENDPOINT_URL`, credentials) as read by
`Settings.from_env`; with `--out DIR` (or `AUDIO_OMNI_OUTPUT_ROOT`) and no bucket it serves
embedded mode, results from a local folder. The API is stateless: run as many as needed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--redis-prefix", default=None, help="Redis key prefix (default: aomni:)")
    parser.add_argument("--bucket", default=None, help="S3 results bucket (default: $S3_BUCKET)")
    parser.add_argument("--out", default=None, help="embedded mode: serve results from this folder")
    parser.add_argument("--max-upload-mb", type=int, default=100, help="upload size limit in MiB (default 100)")
    parser.add_argument("--max-batch-jobs", type=int, default=10_000, help="jobs per batch request (default 10000)")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default AUDIO_OMNI_LOG_LEVEL, else info (JSON lines; AUDIO_OMNI_LOG_FORMAT=console for a terminal)",
    )
    parser.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* (behind a load balancer)")


def build_app(args: argparse.Namespace) -> FastAPI:
    """The app for these arguments (separate from `run` so it can be checked without serving)."""
    from orchestrator.api import ApiSettings, create_app
    from orchestrator.queue import JobQueue
    from orchestrator.settings import Settings
    from orchestrator.storage import input_resolver_from_settings, storage_from_settings
    from orchestrator.tenants import TenantStore

    settings = Settings.from_env(
        redis_url=args.redis_url, redis_prefix=args.redis_prefix, s3_bucket=args.bucket, output_root=args.out
    )
    embedded = settings.s3_bucket is None and settings.output_root is not None
    storage_kwargs = settings.storage_kwargs(embedded=embedded)
    storage = storage_from_settings(**storage_kwargs)
    queue = JobQueue.from_settings(settings, client=settings.redis_client())  # its timeouts: 503s, not hangs
    tenants = TenantStore.from_settings(settings, client=queue.redis)
    # The engine builds its resolver from the same settings: the door and the engine apply the same input rules.
    inputs = input_resolver_from_settings(storage, tenant_rules=tenants.input_policy, **storage_kwargs)
    api_settings = ApiSettings(max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_batch_jobs=args.max_batch_jobs)
    return create_app(settings, queue=queue, storage=storage, tenants=tenants, api_settings=api_settings, inputs=inputs)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if not 0 < args.port <= 65535:
        print(f"audio-omni api: --port {args.port} is invalid: expected 1-65535", file=sys.stderr)
        return 2
    from orchestrator.logging import configure
    from orchestrator.settings import ObservabilitySettings

    try:
        obs = ObservabilitySettings.from_env(log_level=args.log_level)
    except ValueError as exc:
        print(f"audio-omni api: {exc}", file=sys.stderr)
        return 2
    configure(json=obs.log_format == "json", level=obs.log_level)  # uvicorn's loggers too (log_config=None)
    try:
        app = build_app(args)
    except ValueError as exc:
        print(f"audio-omni api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=obs.log_level.lower(),
        log_config=None,
        access_log=False,  # one line per request comes from the request-id middleware, with its id
        proxy_headers=args.proxy_headers,
        timeout_graceful_shutdown=30,
    )
    return 0
