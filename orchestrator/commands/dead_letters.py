"""`audio-omni dead-letters list | requeue JOB_ID`: the operator's view of jobs that ran out of
attempts (status `dead`), and putting one back on the queue (attempts reset).

Through the admin HTTP API (`GET /v1/admin/dead-letters`, `POST .../{job_id}/requeue`) when
`AUDIO_OMNI_API_URL` and `AUDIO_OMNI_API_KEY` are set (the key's tenant must be an admin:
`audio-omni tenants update TENANT --admin`); otherwise directly on the queue in Redis (`REDIS_URL`,
or the flags), for an operator without the API. A workflow's step cannot be re-queued alone:
submit the workflow again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.api.views import DeadLetterView, JobView


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    conn = parser.add_argument_group("direct Redis connection (when AUDIO_OMNI_API_URL/KEY are not set)")
    conn.add_argument("--redis-url", default=None, help="Redis URL (REDIS_URL / AUDIO_OMNI_REDIS_URL)")
    conn.add_argument("--redis-prefix", default=None, help="key prefix of the deployment")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list dead-lettered jobs, newest first")
    listing.add_argument("--limit", type=int, default=100, help="entries per page (1-500, default 100)")
    listing.add_argument("--cursor", default=None, help="the next_cursor printed by the previous page")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")
    requeue = actions.add_parser("requeue", help="queue a dead job again, attempts reset")
    requeue.add_argument("job_id", help="the dead job's id")


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.jobs import uses_api

    try:
        if uses_api():
            return _via_api(args)
        return _via_queue(args)
    except ValueError as exc:
        print(f"audio-omni dead-letters {args.action}: {exc}", file=sys.stderr)
        return 1


def _via_api(args: argparse.Namespace) -> int:
    import httpx

    from orchestrator.sdk import ApiError, Client

    try:
        with Client.from_env() as client:
            if args.action == "list":
                page = client.dead_letters(limit=args.limit, cursor=args.cursor)
                _print_page(page.items, page.next_cursor, as_json=args.json)
            else:
                _print_requeued(client.requeue_dead_letter(args.job_id))
    except ApiError as exc:
        hint = " (the API key's tenant needs the admin role)" if exc.status == 403 else ""
        print(f"audio-omni dead-letters {args.action}: {exc}{hint}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"audio-omni dead-letters {args.action}: the API is unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


def _via_queue(args: argparse.Namespace) -> int:
    from orchestrator.api.views import DeadLetterView, JobView
    from orchestrator.errors import OrchestratorError
    from orchestrator.queue import JobQueue
    from orchestrator.settings import Settings

    settings = Settings.from_env(redis_url=args.redis_url, redis_prefix=args.redis_prefix)
    with JobQueue.from_settings(settings) as queue:
        try:
            if args.action == "list":
                letters, cursor = queue.dead_letters_page(limit=args.limit, cursor=args.cursor)
                _print_page([DeadLetterView.of(letter) for letter in letters], cursor, as_json=args.json)
            else:
                _print_requeued(JobView.of(queue.requeue_dead(args.job_id)))
        except OrchestratorError as exc:  # not dead-lettered, a workflow's step
            print(f"audio-omni dead-letters {args.action}: {exc}", file=sys.stderr)
            return 1
    return 0


def _print_page(items: list[DeadLetterView], next_cursor: str | None, *, as_json: bool) -> None:
    if as_json:
        body = {"items": [item.model_dump(mode="json") for item in items], "next_cursor": next_cursor}
        print(json.dumps(body, indent=2))
        return
    if not items:
        print("no dead-lettered jobs")
    for item in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item.dead_at)) if item.dead_at else "?"
        code = f" [{item.error_code}]" if item.error_code else ""
        print(
            f"{item.job_id or '(no job)'}  {item.tenant or '-'}  {when}Z  attempts {item.attempts}{code}  {item.error}"
        )
    if next_cursor:
        print(f"more: audio-omni dead-letters list --cursor {next_cursor}")


def _print_requeued(job: JobView) -> None:
    print(f"{job.job_id}: {job.status.value} (attempts reset)")
