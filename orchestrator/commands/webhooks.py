"""`audio-omni webhooks`: run the delivery loop in the foreground; list a tenant's deliveries.

    audio-omni webhooks run                            # until SIGTERM / Ctrl-C; as many as you like
    audio-omni webhooks deliveries --tenant acme [--status failed] [--limit 50] [--cursor C] [--json]

Reads `REDIS_URL` / `AUDIO_OMNI_REDIS_PREFIX` like the API does, and `AUDIO_OMNI_WEBHOOK_*`
(`orchestrator.webhooks.settings`). `audio-omni serve` runs the same loop in a thread.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

    from orchestrator.settings import Settings
    from orchestrator.webhooks.settings import WebhookSettings


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--redis-prefix", default=None, help="Redis key prefix (default: aomni:)")
    sub = parser.add_subparsers(dest="webhooks_action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="deliver webhook events until stopped (SIGTERM, Ctrl-C)")
    run.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default AUDIO_OMNI_LOG_LEVEL, else info",
    )
    listing = sub.add_parser("deliveries", help="list a tenant's webhook deliveries, newest first")
    listing.add_argument("--tenant", required=True, help="tenant id")
    listing.add_argument("--status", choices=["pending", "delivered", "failed"], default=None)
    listing.add_argument("--limit", type=int, default=50, help="deliveries per page (1-200, default 50)")
    listing.add_argument("--cursor", default=None, help="the next_cursor printed by the previous page")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from orchestrator.jobs import format_validation_error
    from orchestrator.settings import Settings
    from orchestrator.webhooks.settings import WebhookSettings

    try:
        settings = Settings.from_env(redis_url=args.redis_url, redis_prefix=args.redis_prefix)
        webhook_settings = WebhookSettings.from_env()
    except ValidationError as exc:
        # name the environment variable of a webhook setting (the one place it is set)
        env = "AUDIO_OMNI_WEBHOOK_" if exc.title == WebhookSettings.__name__ else ""
        for field, message in format_validation_error(exc):
            name = f"{env}{field.upper()}" if env and field else field
            print(f"audio-omni webhooks: {name + ': ' if name else ''}{message}", file=sys.stderr)
        return 2
    client = settings.redis_client()
    try:
        if args.webhooks_action == "run":
            return _run_loop(args, client, settings, webhook_settings)
        return _list(args, client, settings)
    finally:
        client.close()


def _run_loop(
    args: argparse.Namespace, client: redis.Redis, settings: Settings, webhook_settings: WebhookSettings
) -> int:
    from orchestrator.logging import configure
    from orchestrator.settings import ObservabilitySettings
    from orchestrator.webhooks.dispatcher import WebhookDispatcher

    obs = ObservabilitySettings.from_env(log_level=args.log_level)
    configure(json=obs.log_format == "json", level=obs.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dispatcher = WebhookDispatcher(client, settings.keys, webhook_settings)
    dispatcher.run(stop)
    return 0


def _list(args: argparse.Namespace, client: redis.Redis, settings: Settings) -> int:
    from orchestrator.webhooks.deliveries import DeliveryStore

    store = DeliveryStore(client, settings.keys)
    try:
        page = store.page(args.tenant, status=args.status, limit=args.limit, cursor=args.cursor)
    except ValueError as exc:
        print(f"audio-omni webhooks: {exc}", file=sys.stderr)
        return 2
    for d in page.items:
        if args.json:
            print(d.model_dump_json())
            continue
        code = "-" if d.last_status_code is None else str(d.last_status_code)
        extra = f"  next {_when(d.next_attempt_at)}" if d.status == "pending" else ""
        error = f"  error: {d.last_error}" if d.last_error and d.status != "delivered" else ""
        print(
            f"{d.delivery_id}  {d.type}  {d.object_id}  {d.status}  attempts {d.attempts}  last {code}  "
            f"created {_when(d.created_at)}{extra}  {d.url}{error}"
        )
    if not page.items and not args.json:
        print("no deliveries")
    if page.next_cursor:
        print(f"next_cursor: {page.next_cursor}", file=sys.stderr if args.json else sys.stdout)
    return 0
