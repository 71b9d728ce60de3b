"""A queue consumer run as a separate process by the crash-recovery and soak tests (which SIGKILL it).

Modes:
- `hold`: claim one job, print `CLAIMED <job_id> <attempt>`, then sleep until killed (a consumer
  that dies holding a lease).
- `work`: claim up to `--count` jobs at a time; per group of `--write-every` jobs "work"
  `--work-ms` each, then "write the results" (like the engine's storage write, before the ack:
  INCR a per-job run counter and SET a result key, both under the test prefix); then ack the
  claimed jobs and append the acked ids to `--ack-log`. Runs until killed or `--idle-exit-s`
  without work.

Run as `python tests/integration/queue_consumer.py --redis-url ... --prefix ... --consumer NAME`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Importable without installing the project: the repo root is two levels up.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis

from orchestrator.queue import JobQueue


def result_key(prefix: str, job_id: str) -> str:
    return f"{prefix}test:result:{job_id}"


def runs_key(prefix: str, job_id: str) -> str:
    return f"{prefix}test:runs:{job_id}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--consumer", required=True)
    ap.add_argument("--mode", choices=("hold", "work"), default="work")
    ap.add_argument("--lease-s", type=float, default=1.0)
    ap.add_argument("--max-attempts", type=int, default=5)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--work-ms", type=float, default=0.0, help="simulated work per job")
    ap.add_argument("--write-every", type=int, default=1, help="jobs per result-write round trip")
    ap.add_argument("--ack-log", type=Path)
    ap.add_argument("--idle-exit-s", type=float, default=0.0, help="0 = run until killed")
    args = ap.parse_args(argv)

    client = redis.Redis.from_url(args.redis_url)
    queue = JobQueue(client, prefix=args.prefix, lease_s=args.lease_s, max_attempts=args.max_attempts)

    if args.mode == "hold":
        claims = queue.claim(args.consumer, count=1, block_ms=10_000)
        if not claims:
            print("NOTHING", flush=True)
            return 1
        print(f"CLAIMED {claims[0].job_id} {claims[0].attempt}", flush=True)
        while True:  # never renews, never acks: waits for SIGKILL
            time.sleep(60)

    log = args.ack_log.open("a", buffering=1) if args.ack_log else None
    renew_every_s = args.lease_s / 3
    idle_since = time.monotonic()
    while True:
        claims = queue.claim(args.consumer, count=args.count, block_ms=200)
        if not claims:
            if args.idle_exit_s and time.monotonic() - idle_since > args.idle_exit_s:
                return 0
            continue
        idle_since = time.monotonic()
        last_renew = time.monotonic()
        for start in range(0, len(claims), args.write_every):
            if time.monotonic() - last_renew > renew_every_s:
                queue.renew_many(claims[start:])  # heartbeat for everything still held
                last_renew = time.monotonic()
            group = claims[start : start + args.write_every]
            if args.work_ms:
                time.sleep(args.work_ms * len(group) / 1000)
            # Results are written as soon as their jobs are done (the engine's storage write); the
            # acks follow for the whole claim, so a kill in between replays the written jobs.
            pipe = client.pipeline(transaction=False)
            for claim in group:
                pipe.incr(runs_key(args.prefix, claim.job_id))
                pipe.set(result_key(args.prefix, claim.job_id), args.consumer)
            pipe.execute()
        recorded = queue.ack_success_many([(c, f"test://{c.job_id}", {"consumer": args.consumer}) for c in claims])
        # False = taken over after a stall; the new holder records the outcome.
        if log is not None:
            log.write("".join(c.job_id + "\n" for c, ok in zip(claims, recorded, strict=True) if ok))


if __name__ == "__main__":
    sys.exit(main())
