"""Soak: 10,000 jobs, three consumer processes, random ones SIGKILLed and restarted throughout.

Every job must end in exactly one final state (succeeded), no job may be acknowledged twice, and
every acknowledged job's result must exist. Consumers "write the result" before the ack, as the
engine writes to storage first; a consumer killed between the write and the ack makes the job
replay on another consumer, which rewrites the same result (allowed; counted below).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from orchestrator.jobs import JobStatus
from orchestrator.queue import JobQueue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSUMER = Path(__file__).with_name("queue_consumer.py")

N_JOBS = 10_000
N_CONSUMERS = 3
LEASE_S = 1.0
DEADLINE_S = 120.0


def test_soak_sigkill_consumers(redis_url, redis_prefix, tmp_path):
    client = redis.Redis.from_url(redis_url)
    q = JobQueue(client, prefix=redis_prefix, lease_s=LEASE_S, max_attempts=50)
    rng = random.Random(1234)
    bid, job_ids = q.submit_batch(
        [{"task": "text_to_audio", "prompt": f"soak {i}"} for i in range(N_JOBS)], chunk_size=1000
    )
    assert len(set(job_ids)) == N_JOBS

    procs: dict[int, subprocess.Popen] = {}
    logs: dict[int, Path] = {}
    generation = Counter()

    def start(slot: int) -> None:
        generation[slot] += 1
        name = f"soak-{slot}-{generation[slot]}"
        logs[slot] = tmp_path / f"{name}.log"
        procs[slot] = subprocess.Popen(
            [sys.executable, str(CONSUMER), "--redis-url", redis_url, "--prefix", redis_prefix,
             "--consumer", name, "--mode", "work", "--lease-s", str(LEASE_S), "--max-attempts", "50",
             "--count", "20", "--work-ms", "1.5", "--write-every", "5", "--ack-log", str(logs[slot])],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    kills = 0
    t0 = time.monotonic()
    try:
        for slot in range(N_CONSUMERS):
            start(slot)
        # Kill at points of progress, not of time: on a fast machine the batch takes a few seconds,
        # and a timed schedule (it was every 1.5-2.5 s) sometimes got only two kills in.
        kill_at = [round(f * N_JOBS) for f in (0.15, 0.35, 0.55, 0.75)]
        while True:
            status = q.batch_status(bid)
            assert status is not None
            if status.done:
                break
            now = time.monotonic()
            assert now - t0 < DEADLINE_S, f"soak did not finish: {status.counts}"
            for slot, proc in procs.items():
                assert proc.poll() is None, f"consumer {slot} exited on its own with {proc.returncode}"
            # Kill only consumers that are working (have acked something), so that every kill
            # leaves claimed, unacknowledged jobs behind.
            working = [s for s in procs if logs[s].exists() and logs[s].stat().st_size > 0]
            succeeded = status.counts.get(JobStatus.SUCCEEDED, 0)
            if kill_at and succeeded >= kill_at[0] and working:
                kill_at.pop(0)
                slot = rng.choice(working)
                os.kill(procs[slot].pid, signal.SIGKILL)  # no cleanup, no ack, leases left behind
                procs[slot].wait(timeout=10)
                kills += 1
                start(slot)
            time.sleep(0.05)
        elapsed_s = time.monotonic() - t0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    # --- exactly one final state per job, counted once
    status = q.batch_status(bid)
    assert status is not None
    assert status.total == N_JOBS
    assert {k: v for k, v in status.counts.items() if v} == {JobStatus.SUCCEEDED: N_JOBS}, status.counts
    records = q.get_many(job_ids)
    assert all(r is not None and r.status is JobStatus.SUCCEEDED for r in records)
    assert all(r is not None and r.result_uri == f"test://{r.job_id}" for r in records)

    # --- no job acknowledged twice: the ack logs hold each job at most once
    acked = Counter()
    for log in tmp_path.glob("soak-*.log"):
        acked.update(line for line in log.read_text().splitlines() if line)
    assert not [j for j, n in acked.items() if n > 1]
    # A consumer killed between its acks and its log line leaves those jobs out of the logs;
    # bounded by one claim batch (20) per kill.
    assert N_JOBS - kills * 20 <= len(acked) <= N_JOBS

    # --- no result lost: every job's result was written before its ack (a replay rewrites it).
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.get(f"{redis_prefix}test:result:{job_id}")
        pipe.get(f"{redis_prefix}test:runs:{job_id}")
    replies = pipe.execute()
    results, runs = replies[0::2], [int(r or 0) for r in replies[1::2]]
    assert all(r is not None for r in results)
    assert all(n >= 1 for n in runs)
    replayed = sum(1 for n in runs if n > 1)
    # Only jobs held by a killed consumer replay: at most one claim batch (20) per kill.
    assert replayed <= kills * 20

    # --- the queue is empty and clean
    assert q.queue_depths() == {"high": 0, "normal": 0, "low": 0}
    assert q.running_count() == 0
    assert q.dead_letters() == []
    assert kills >= 3, f"only {kills} kills happened during the run"
    print(f"soak: {N_JOBS} jobs in {elapsed_s:.1f} s, {kills} SIGKILLs, {replayed} jobs replayed")
    client.close()
