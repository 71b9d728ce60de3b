"""An engine process (`audio-omni serve`, a real subprocess) is SIGKILLed mid-batch and restarted:
every job still finishes, and each has exactly one result object and one metadata object on S3."""

from __future__ import annotations

import io
import json
import signal
import time

import boto3
import pytest
import soundfile as sf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_JOBS = 12


def test_sigkill_mid_batch_then_restart(tmp_path, start_engine, redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.queue import JobQueue

    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=3.0)
    specs = [
        {"task": "text_to_audio", "prompt": f"sound {i}", "duration_s": 1.0, "steps": 2, "seed": i}
        for i in range(N_JOBS)
    ]
    batch_id, job_ids = queue.submit_batch(specs)
    log = tmp_path / "engine.log"

    first = start_engine("crash-a", log)
    deadline = time.monotonic() + 240
    try:
        # Kill once some jobs are done and others are in flight (claimed, not finished). The engine is
        # frozen (SIGSTOP) while the in-flight set is read, so no job can finish between that read
        # and the kill; if the moment passed (everything in flight finished), it runs on and we wait.
        killed_running: set[str] = set()
        while time.monotonic() < deadline:
            counts = queue.batch_status(batch_id).counts
            if counts["succeeded"] >= 2 and counts["running"] >= 1:
                first.send_signal(signal.SIGSTOP)
                killed_running = {r.job_id for r in queue.get_many(job_ids) if r.status.value == "running"}
                if killed_running:
                    break
                first.send_signal(signal.SIGCONT)
            assert first.poll() is None, f"engine exited early:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        else:
            pytest.fail(f"no mid-batch moment seen:\n{log.read_text()[-3000:]}")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()

    second = start_engine("crash-b", log)
    try:
        assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()

    batch = queue.batch_status(batch_id)
    assert batch.counts["succeeded"] == N_JOBS, (batch.counts, log.read_text()[-3000:])
    records = queue.get_many(job_ids)
    # The jobs that were running at the kill were taken over after their lease lapsed.
    assert killed_running and all(r.attempts >= 2 for r in records if r.job_id in killed_running)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    for job_id in job_ids:
        mine = sorted(k for k in keys if k.rsplit("/", 1)[-1].rsplit(".", 1)[0] == job_id)
        assert mine == [f"default/{batch_id}/{job_id}.json", f"default/{batch_id}/{job_id}.wav"], mine
        body = client.get_object(Bucket=s3_bucket, Key=f"default/{batch_id}/{job_id}.wav")["Body"].read()
        info = sf.info(io.BytesIO(body))
        assert info.samplerate == 44_100 and abs(info.duration - 1.0) < 1e-3
        meta = json.loads(client.get_object(Bucket=s3_bucket, Key=f"default/{batch_id}/{job_id}.json")["Body"].read())
        record = next(r for r in records if r.job_id == job_id)
        assert meta["attempt"] == record.attempts  # the metadata is the final attempt's
    queue.close()
