"""Redis (append-only file on, as deployed) is stopped for about 10 s mid-batch and restarted: the
engine and the API reconnect by themselves, the API answers 503 with Retry-After meanwhile, and
every job finishes once, nothing lost and nothing duplicated."""

from __future__ import annotations

import time

import boto3
import httpx
from multinode_support import check_done_once, wait_until

from tests.process_logs import log_excerpt

N_JOBS = 10
OUTAGE_S = 10.0
# Longer than the outage: a job whose holder was cut off from Redis is still its own when Redis is
# back, so the holder records it (a shorter lease hands it to a new attempt; also correct, but slower).
LEASE_S = 30.0


def test_redis_restart_mid_batch(cluster, start_engine, start_api, mn_redis, mn_prefix, mn_s3, mn_bucket, tmp_path):
    from orchestrator.queue import JobQueue

    api = start_api()
    auth = {"Authorization": f"Bearer {api.key}"}
    specs = [
        {"task": "text_to_audio", "prompt": f"sound {i}", "duration_s": 1.0, "steps": 2, "seed": i}
        for i in range(N_JOBS)
    ]
    with httpx.Client(base_url=api.url, headers=auth, timeout=10) as http:
        resp = http.post("/v1/batches", json={"jobs": specs})
        assert resp.status_code in (200, 201, 202), resp.text
        batch = resp.json()
        batch_id, job_ids = batch["batch_id"], batch["job_ids"]
        engine = start_engine("redis-restart", "--lease-s", str(LEASE_S))
        log = tmp_path / "redis-restart.log"
        queue = JobQueue(mn_redis.url, prefix=mn_prefix, lease_s=LEASE_S)

        def mid_batch() -> bool:
            assert engine.poll() is None, f"engine exited early:\n{log_excerpt(log)}"
            counts = queue.batch_status(batch_id).counts
            return counts["succeeded"] >= 2 and counts["succeeded"] < N_JOBS - 2

        wait_until(mid_batch, 240, "no mid-batch moment seen", every_s=0.1)
        queue.close()
        mn_redis.stop()
        down_at = time.monotonic()
        try:
            # The API is up and says so: 503, Retry-After, the error shape, for reads and writes alike.
            for method, path, body in (
                ("GET", f"/v1/jobs/{job_ids[0]}", None),
                ("GET", f"/v1/batches/{batch_id}", None),
                ("POST", "/v1/jobs", {"task": "text_to_audio", "prompt": "late", "duration_s": 1.0, "steps": 2}),
            ):
                resp = http.request(method, path, json=body)
                assert resp.status_code == 503, (method, path, resp.status_code, resp.text)
                assert int(resp.headers["Retry-After"]) > 0
                assert resp.json()["error"]["code"] == "unavailable", resp.text
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            assert engine.poll() is None, f"engine died with Redis:\n{log_excerpt(log)}"
        finally:
            mn_redis.start()

        # Both reconnect: the API answers from the restored data, the engine drains the batch.
        wait_until(lambda: http.get(f"/v1/batches/{batch_id}").status_code == 200, 60, "the API did not reconnect")
        assert engine.wait(timeout=300) == 0, log_excerpt(log)
        done = http.get(f"/v1/batches/{batch_id}").json()
        assert done["counts"]["succeeded"] == N_JOBS, done
    queue = JobQueue(mn_redis.url, prefix=mn_prefix, lease_s=LEASE_S)
    client = boto3.client("s3", endpoint_url=mn_s3.upstream, region_name="us-east-1")
    records = check_done_once(queue, client, mn_bucket, batch_id, job_ids)
    assert sum(r.attempts for r in records) <= N_JOBS + 4, "at most the jobs in flight took one more attempt"
    assert not queue.dead_letters()
    queue.close()
