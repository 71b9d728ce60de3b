"""The S3 endpoint answers 503 to everything for a while mid-batch (writes refused before they reach
the store): jobs retry, no metadata ever describes a missing or partial result, no job is recorded
succeeded before its result is whole, and every job ends with one whole result written once."""

from __future__ import annotations

import time

import boto3
from multinode_support import LEASE_S, check_done_once, check_metadata_describes_result, wait_until

from tests.process_logs import log_excerpt

N_JOBS = 10
OUTAGE_S = 6.0


def _check_visible_state(queue, client, bucket: str, job_ids: list[str]) -> None:
    """What a reader sees now: each metadata object describes a whole result; each succeeded job's
    result and metadata exist."""
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    for key in keys:
        if key.endswith(".json"):
            check_metadata_describes_result(client, bucket, key)
    for record in queue.get_many(job_ids):
        if record.status.value == "succeeded":
            base = f"{record.tenant}/{record.batch_id}/{record.job_id}"
            assert {f"{base}.wav", f"{base}.json"} <= keys, f"{record.job_id} succeeded without its result"


def test_s3_outage_mid_write(cluster, start_engine, mn_redis, mn_prefix, mn_s3, mn_bucket, tmp_path):
    from orchestrator.queue import JobQueue

    queue = JobQueue(mn_redis.url, prefix=mn_prefix, lease_s=LEASE_S)
    client = boto3.client("s3", endpoint_url=mn_s3.upstream, region_name="us-east-1")  # behind the proxy
    specs = [
        {"task": "text_to_audio", "prompt": f"sound {i}", "duration_s": 1.0, "steps": 2, "seed": i}
        for i in range(N_JOBS)
    ]
    batch_id, job_ids = queue.submit_batch(specs)
    engine = start_engine("s3-outage")
    log = tmp_path / "s3-outage.log"

    def mid_batch() -> bool:
        assert engine.poll() is None, f"engine exited early:\n{log_excerpt(log)}"
        counts = queue.batch_status(batch_id).counts
        return counts["succeeded"] >= 2 and counts["succeeded"] < N_JOBS - 2

    wait_until(mid_batch, 240, "no mid-batch moment seen", every_s=0.1)
    mn_s3.refused.clear()
    mn_s3.failing.set()
    try:
        started = time.monotonic()
        # At least OUTAGE_S, and until a result write was refused (a job reached its write).
        while time.monotonic() - started < OUTAGE_S or not mn_s3.refused.get("PUT"):
            assert time.monotonic() - started < 120, "no job reached its write during the outage"
            _check_visible_state(queue, client, mn_bucket, job_ids)
            time.sleep(0.5)
        succeeded_during = queue.batch_status(batch_id).counts["succeeded"]
    finally:
        mn_s3.failing.clear()
    assert engine.poll() is None, f"engine died with S3:\n{log_excerpt(log)}"

    assert engine.wait(timeout=300) == 0, log_excerpt(log)
    _check_visible_state(queue, client, mn_bucket, job_ids)
    records = check_done_once(queue, client, mn_bucket, batch_id, job_ids)
    assert succeeded_during < N_JOBS, "the outage landed mid-batch"
    assert len(records) == N_JOBS and mn_s3.refused["PUT"] >= 1, "writes were refused and retried"
    assert not queue.dead_letters()
    queue.close()
