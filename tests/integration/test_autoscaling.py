"""Backlog-driven autoscaling on the local Ray: with a Redis backlog the sampler pool grows from its
minimum (1) to its maximum (2), and shrinks back once the queue is empty; no job fails or runs twice."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAVE = 32  # jobs per submitted wave
MAX_WAVES = 8  # more waves are submitted only while the pool has not grown


def test_waiting_work_sums_live_reports_and_skips_stale_ones():
    from workers.autoscaling import backlog_report, waiting_work

    now = 1000.0
    raw = {
        b"a": backlog_report(10, 3, 2, now_s=now - 1),
        b"b": backlog_report(7, 1, 4, now_s=now - 0.5),  # the freshest queue depth wins
        b"dead": backlog_report(500, 50, 50, now_s=now - 60),
        b"junk": b"not json",
    }
    assert waiting_work(raw, "sampler", now_s=now) == 7 + 2 + 4
    assert waiting_work(raw, "encoder", now_s=now) == 7 + 3 + 1
    assert waiting_work({}, "sampler", now_s=now) == 0
    with pytest.raises(ValueError, match="pool must be one of"):
        waiting_work(raw, "vae", now_s=now)
    with pytest.raises(ValueError, match="queued must be >= 0"):
        backlog_report(-1, 0, 0)


def test_backlog_drops_to_zero_when_polls_keep_failing(redis_url, redis_prefix):
    """A Redis outage where every poll fails fast must not hold the last backlog (and the pool's
    size) for ever: `stale_s` after the last successful read the policy sees no backlog."""
    import asyncio

    import redis

    from workers.autoscaling import BacklogPolicy, backlog_report

    key = f"{redis_prefix}:backlog"
    client = redis.Redis.from_url(redis_url)
    client.hset(key, "engine-a", backlog_report(9, 0, 3))
    policy = BacklogPolicy(
        redis_url, key, "sampler", jobs_per_replica=4, target_ongoing_requests=2, poll_interval_s=0.05, stale_s=0.6
    )

    class Ctx:
        total_num_requests = 0

    async def ticks_until(waiting: int, timeout_s: float = 10.0) -> list[float]:
        """Autoscaling ticks (as Serve's controller runs them) until the policy sees `waiting` jobs."""
        seen, end = [], time.monotonic() + timeout_s
        while time.monotonic() < end:
            seen.append(policy(Ctx())[1]["backlog_waiting"])
            if seen[-1] == waiting:
                return seen
            await asyncio.sleep(0.02)
        pytest.fail(f"the policy never saw {waiting} waiting jobs within {timeout_s} s: {seen[-20:]}")

    try:
        asyncio.run(ticks_until(12))  # 9 queued + 3 upstream of the sampler
        policy.redis_url, policy._client = "redis://127.0.0.1:1/0", None  # nothing listens: polls fail at once
        seen = asyncio.run(ticks_until(0))
        # The last good value is kept while polls fail, and dropped once it is older than stale_s.
        assert seen[0] == 12, seen
    finally:
        client.delete(key)
        client.close()


def _running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return int(status.deployments[deployment].replica_states.get("RUNNING", 0))


def test_sampler_scales_with_the_backlog(ray_cluster, redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.commands.serve import Service, ServiceOptions
    from orchestrator.queue import JobQueue
    from orchestrator.settings import Settings
    from workers.settings import PoolSettings, WorkerSettings

    settings = Settings(
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_endpoint,
        s3_addressing_style="path",
        lease_s=60.0,
    )
    pool = {"num_cpus": 0.5, "max_batch_size": 4, "batch_wait_timeout_s": 0.2}
    workers = WorkerSettings(
        preset="tiny",  # the system under test, not the model: the fastest preset
        app_name=f"t-scale-{uuid.uuid4().hex[:6]}",
        understand_max_new_tokens=4,
        encoder=PoolSettings(**pool),
        sampler=PoolSettings(**pool, min_replicas=1, max_replicas=2, upscale_delay_s=1.0, downscale_delay_s=3.0),
        backlog_jobs_per_replica=4.0,
    )
    queue = JobQueue(redis_url, prefix=redis_prefix)

    def submit_wave(wave: int) -> tuple[str, list[str]]:
        specs = [
            {"task": "text_to_audio", "prompt": f"w{wave}-{i}", "duration_s": 1.0, "steps": 2} for i in range(WAVE)
        ]
        return queue.submit_batch(specs)

    batches = [submit_wave(0)]

    def all_done() -> bool:
        return all(queue.batch_status(b).done for b, _ in batches)

    service = Service(settings, workers, ServiceOptions(max_in_flight=8))
    app, deployment = f"{workers.app_name}-sampler", "SamplerDeployment"
    seen: list[int] = []
    try:
        service.start()
        # Keep a backlog until the pool has grown: a fast machine can drain one wave of tiny jobs before
        # a second replica has started (autoscaling reacts in seconds, a replica starts in seconds).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            seen.append(_running_replicas(app, deployment))
            grown, more = 2 in seen, len(batches) < MAX_WAVES
            if (grown or not more) and all_done():
                break
            if not grown and more and queue.batch_status(batches[-1][0]).finished >= WAVE // 2:
                batches.append(submit_wave(len(batches)))
            time.sleep(0.5)
        assert all_done(), [queue.batch_status(b).counts for b, _ in batches]
        # The queue is empty now: the pool shrinks back to its minimum after the downscale delay.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and _running_replicas(app, deployment) != 1:
            time.sleep(0.5)
        final = _running_replicas(app, deployment)
    finally:
        service.stop()
        service.wait(timeout_s=120)
        service.close()

    assert max(seen) == 2, f"the sampler never grew to 2 replicas: {seen}"
    assert 1 in seen[: seen.index(2)], f"the pool did not start at its minimum: {seen}"
    assert final == 1
    job_ids = [j for _, ids in batches for j in ids]
    records = queue.get_many(job_ids)
    assert [r.status.value for r in records] == ["succeeded"] * len(job_ids)
    assert all(r.attempts == 1 for r in records), [r.attempts for r in records]  # nothing ran twice
    queue.close()
