"""An engine process (`audio-omni serve`, a real subprocess) is SIGKILLed mid-batch and restarted:
every job still finishes, and each has exactly one result object and one metadata object on S3."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import soundfile as sf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
N_JOBS = 12


@pytest.fixture()
def pools(ray_cluster):
    from workers.app import deploy, shutdown
    from workers.settings import PoolSettings, WorkerSettings

    settings = WorkerSettings(
        preset="tiny",  # the system under test, not the model: the fastest preset
        app_name=f"t-crash-{uuid.uuid4().hex[:6]}",
        understand_max_new_tokens=4,
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.2),
    )
    deploy(settings)
    yield settings
    shutdown(settings)


def _engine(app_name: str, consumer: str, env: dict, log: Path) -> subprocess.Popen:
    import ray

    cmd = [
        sys.executable, "-m", "orchestrator.cli", "serve",
        "--no-deploy", "--app-name", app_name, "--preset", "tiny",  # the preset the pools were deployed with
        "--ray-address", ray.get_runtime_context().gcs_address,
        "--lease-s", "3", "--max-in-flight", "4", "--consumer", consumer, "--drain",
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_sigkill_mid_batch_then_restart(tmp_path, pools, redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.queue import JobQueue

    env = {
        **os.environ,
        "AUDIO_OMNI_REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": redis_prefix,
        "AUDIO_OMNI_S3_BUCKET": s3_bucket,
        "AUDIO_OMNI_S3_ENDPOINT_URL": s3_endpoint,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
        "AUDIO_OMNI_MAX_ATTEMPTS": "5",
        "AUDIO_OMNI_LOG_LEVEL": "WARNING",
    }
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=3.0)
    specs = [
        {"task": "text_to_audio", "prompt": f"sound {i}", "duration_s": 1.0, "steps": 2, "seed": i}
        for i in range(N_JOBS)
    ]
    batch_id, job_ids = queue.submit_batch(specs)
    log = tmp_path / "engine.log"

    first = _engine(pools.app_name, "crash-a", env, log)
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

    second = _engine(pools.app_name, "crash-b", env, log)
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
