"""Engine-level faults on the real queue (Redis), S3 endpoint and tiny Serve pools (local Ray):

- a job cancelled while the engine runs it stops at the next stage and is recorded once, cancelled;
- an engine frozen past its lease (SIGSTOP) while another consumer takes its job over records
  nothing for that job once it runs again (SIGCONT);
- a transient error raised in a pool call is retried by the engine with backoff and reaches the
  dead-letter stream after the configured attempts.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from tests.process_logs import log_excerpt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T2A = {"task": "text_to_audio", "duration_s": 1.0, "steps": 2}


class FaultyPools:
    """The deployed pools with a fault hook run before each call (`hooks[name]()`: it may act, or
    raise as the pool would). Counts the calls and keeps their times per pool."""

    def __init__(self, pools: Any, hooks: dict[str, Callable[[], None]]) -> None:
        self._pools = pools
        self._hooks = hooks
        self.calls: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, arg: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls.setdefault(name, []).append(time.monotonic())
        hook = self._hooks.get(name)
        if hook is not None:
            hook()
        return getattr(self._pools, name)(arg, **kwargs)

    def encode(self, prompt: Any) -> Any:
        return self._call("encode", prompt)

    def understand(self, request: Any) -> Any:
        return self._call("understand", request)

    def generate(self, request: Any, keep_samples: int | None = None) -> Any:
        return self._call("generate", request, keep_samples=keep_samples)

    def __getattr__(self, name: str) -> Any:  # any other pool call passes through untouched
        return getattr(self._pools, name)


def _engine(queue, pools, s3_endpoint: str, s3_bucket: str, tiny_pools, results: list) -> Any:
    from orchestrator.engine import Engine, EngineSettings
    from orchestrator.sources import RedisSource
    from orchestrator.storage import InputPolicy, InputResolver, S3Storage, make_s3_client

    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client)
    inputs = InputResolver(storage, InputPolicy(), s3_client=client)
    settings = EngineSettings(max_in_flight=2, renew_every_s=1.0, claim_block_s=0.2, model_version="tiny-random")
    return Engine(
        RedisSource(queue, consumer="faults"),
        storage,
        inputs,
        pools,
        tiny_pools.load_config(),
        settings,
        on_done=results.append,
    )


def _run(engine: Any, timeout_s: float = 180) -> None:
    t = threading.Thread(target=engine.run, kwargs={"until_exhausted": True}, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        engine.stop()
        t.join(30)
        pytest.fail(f"the engine did not drain within {timeout_s:g} s")


def _keys(s3_endpoint: str, bucket: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_cancel_while_running_stops_at_the_next_stage(tiny_pools, redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.errors import Outcome
    from orchestrator.queue import JobQueue
    from workers.app import ServePools

    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30.0)
    record = queue.submit({**T2A, "prompt": "cancel me", "seed": 1})
    job_id = record.job_id
    answers: list[str] = []
    # The client cancels while the engine is inside the encoder call: the job is running then.
    pools = FaultyPools(
        ServePools.connect(tiny_pools.app_name, timeout_s=120),
        {"encode": lambda: answers.append(queue.cancel(job_id).value)},
    )
    results: list = []
    _run(_engine(queue, pools, s3_endpoint, s3_bucket, tiny_pools, results))

    assert answers == ["running"], "cancelled while it ran (the record said running)"
    assert len(pools.calls["encode"]) == 1 and "generate" not in pools.calls, "stopped before the next stage"
    assert [(r.job_id, r.outcome) for r in results] == [(job_id, Outcome.CANCELLED)], "one outcome, cancelled"
    final = queue.get(job_id)
    assert final.status.value == "cancelled" and final.attempts == 1 and final.result_uri is None
    assert _keys(s3_endpoint, s3_bucket) == [], "nothing written for a cancelled job"
    assert not queue.dead_letters()
    queue.close()


def test_transient_pool_error_retried_with_backoff_then_dead_lettered(
    tiny_pools, redis_url, redis_prefix, s3_endpoint, s3_bucket
):
    from orchestrator.errors import Outcome
    from orchestrator.queue import JobQueue
    from workers.app import ServePools

    attempts, base_s = 3, 0.3
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30.0, max_attempts=attempts, backoff_base_s=base_s)
    job_id = queue.submit({**T2A, "prompt": "never generated", "seed": 2}).job_id

    def replica_restarting() -> None:
        raise RuntimeError("sampler replica is restarting (injected)")

    pools = FaultyPools(ServePools.connect(tiny_pools.app_name, timeout_s=120), {"generate": replica_restarting})
    results: list = []
    _run(_engine(queue, pools, s3_endpoint, s3_bucket, tiny_pools, results))

    final = queue.get(job_id)
    assert final.status.value == "dead" and final.attempts == attempts, (final.status, final.attempts)
    assert "generate failed" in (final.error or "") and "injected" in (final.error or ""), final.error
    assert [r.outcome for r in results] == [Outcome.RETRY] * attempts
    calls = pools.calls["generate"]
    assert len(calls) == attempts and len(pools.calls["encode"]) == attempts
    # Backoff: the retry after attempt n waits at least half of base * 2**(n-1) (the jitter's floor).
    for n, (earlier, later) in enumerate(itertools.pairwise(calls), start=1):
        assert later - earlier >= 0.5 * base_s * 2 ** (n - 1), (n, later - earlier)
    dead = [d for d in queue.dead_letters() if d.get("job") == job_id]
    assert len(dead) == 1 and dead[0]["error_code"] == "retries_exhausted", queue.dead_letters()
    assert _keys(s3_endpoint, s3_bucket) == []
    queue.close()


@pytest.fixture()
def versioned(s3_endpoint, s3_bucket):
    """The test's bucket with versioning on (every write leaves a version to count); its versions
    are removed afterwards so the bucket fixture can delete it."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    yield client
    for page in client.get_paginator("list_object_versions").paginate(Bucket=s3_bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(Bucket=s3_bucket, Key=v["Key"], VersionId=v["VersionId"])


def test_engine_frozen_past_its_lease_records_nothing_for_the_job_it_lost(
    tmp_path, start_engine, versioned, redis_url, redis_prefix, s3_bucket
):
    from orchestrator.queue import JobQueue

    client = versioned
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=3.0)
    n_jobs = 4
    batch_id, job_ids = queue.submit_batch(
        [{**T2A, "prompt": f"sound {i}", "steps": 4, "seed": i} for i in range(n_jobs)]
    )
    log = tmp_path / "engines.log"
    frozen = start_engine("frozen-a", log)
    lost: set[str] = set()
    try:
        deadline = time.monotonic() + 240
        # Freeze A while it holds jobs that have not reached their write; read the stages only
        # after the freeze has settled (a stage update A sent before it stopped has landed by then).
        while not lost:
            assert time.monotonic() < deadline, f"no moment with A mid-job:\n{log_excerpt(log)}"
            assert frozen.poll() is None, f"engine A exited early:\n{log_excerpt(log)}"
            held = [r for r in queue.get_many(job_ids) if r.status.value == "running" and r.consumer == "frozen-a-0"]
            if held:
                frozen.send_signal(signal.SIGSTOP)
                time.sleep(0.5)
                lost = {
                    r.job_id
                    for r in queue.get_many(job_ids)
                    if r.status.value == "running" and r.stage in ("load", "encode", "generate")
                }
                if not lost:
                    frozen.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        takeover = start_engine("takeover-b", log)  # reclaims A's jobs once their leases lapse
        assert takeover.wait(timeout=300) == 0, log_excerpt(log)
        before = {r.job_id: r.model_dump() for r in queue.get_many(job_ids)}
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(timeout=120) == 0, log_excerpt(log)  # A runs on, then drains and exits

    after = {r.job_id: r.model_dump() for r in queue.get_many(job_ids)}
    assert after == before, "the resumed engine changed no record"
    assert all(r["status"] == "succeeded" for r in after.values()), {k: r["status"] for k, r in after.items()}
    versions: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=s3_bucket):
        for v in page.get("Versions", []):
            versions[v["Key"]] = versions.get(v["Key"], 0) + 1
    for job_id in lost:
        record = after[job_id]
        assert record["attempts"] == 2 and record["consumer"] == "takeover-b-0", record
        base = f"default/{batch_id}/{job_id}"
        # One write of each object: the taker's. A lost the job before writing anything.
        assert versions.get(f"{base}.wav") == 1 and versions.get(f"{base}.json") == 1, versions
        meta = json.loads(client.get_object(Bucket=s3_bucket, Key=f"{base}.json")["Body"].read())
        assert meta["attempt"] == 2
    queue.close()
