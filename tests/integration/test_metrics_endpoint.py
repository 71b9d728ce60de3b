"""The engine started from the deployment's environment serves `/metrics` on the configured address
and port, uses pools another process deployed (as the RayService does), and exports what the
dashboard reads: its own figures, the shared state (it is the only contender here) and the pool
replicas'. On SIGTERM it exits cleanly and hands the metrics locks back.

The environment is `infra/k8s/config.env` + `workers.env` as the pod gets them, with only the
addresses and names a test machine must change replaced (Redis, S3, the Ray cluster, the metrics
port, the pools' application name and their `tiny` preset); `AUDIO_OMNI_DEPLOY_POOLS=false`,
`AUDIO_OMNI_METRICS_ADDR=0.0.0.0` and everything else stay as deployed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import leader_key
from orchestrator.queue import JobQueue

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "infra" / "k8s"


def env_file(name: str) -> dict[str, str]:
    out = {}
    for raw in (K8S / name).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        assert proc.poll() is None, f"the engine exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.25)


def test_engine_from_the_deployment_environment_serves_metrics(
    tiny_pools, redis_url, redis_prefix, s3_endpoint, s3_bucket, tmp_path
):
    import ray

    port = free_port()
    deployed = {**env_file("config.env"), **env_file("workers.env")}
    assert deployed["AUDIO_OMNI_DEPLOY_POOLS"] == "false" and deployed["AUDIO_OMNI_METRICS_ADDR"] == "0.0.0.0"
    local = {
        "REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": redis_prefix,
        "AUDIO_OMNI_BACKLOG_REDIS_URL": redis_url,
        "AUDIO_OMNI_BACKLOG_PREFIX": redis_prefix,
        "S3_BUCKET": s3_bucket,
        "S3_ENDPOINT_URL": s3_endpoint,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "AUDIO_OMNI_METRICS_PORT": str(port),
        "AUDIO_OMNI_APP_NAME": tiny_pools.app_name,
        "AUDIO_OMNI_PRESET": "tiny",
        "AUDIO_OMNI_WEIGHTS": "none",
        "AUDIO_OMNI_DEVICE": "cpu",
    }
    assert set(local) <= set(deployed) | {"S3_ENDPOINT_URL"}  # replacing the deployment's, adding no setting
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIO_OMNI_", "RAY_ADDRESS", "S3_"))}
    env = {**keep, **deployed, **local, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    log = tmp_path / "engine.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve"],  # the pod's command: `audio-omni serve`
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    queue = JobQueue(redis_url, prefix=redis_prefix)
    try:
        # /metrics answers on the configured port before anything else, then the shared state appears.
        first = wait_for("/metrics", lambda: scrape(port), proc, log)
        (build,) = first["audio_omni_build_info"]
        assert build.labels["component"] == "engine"
        wait_for("the shared state", lambda: "audio_omni_queue_depth" in scrape(port), proc, log)

        job = queue.submit({"task": "text_to_audio", "prompt": "rain", "tenant": "acme", "duration_s": 1, "steps": 2})
        wait_for("the job", lambda: (r := queue.get(job.job_id)) is not None and r.status.is_final, proc, log)
        assert queue.get(job.job_id).status.value == "succeeded", queue.get(job.job_id)

        metrics = wait_for(
            "the replicas' figures", lambda: (m := scrape(port)).get("audio_omni_sampler_replicas") and m, proc, log
        )
        one = {s.labels.get("status"): s.value for s in metrics["audio_omni_jobs_total"]}
        assert one["succeeded"] == 1
        assert metrics["audio_omni_queue_wait_seconds_count"][0].value == 1
        latency = {s.labels["status"]: s.value for s in metrics["audio_omni_job_latency_seconds_count"]}
        assert latency == {"succeeded": 1}
        assert metrics["audio_omni_engines"][0].value == 1
        assert metrics["audio_omni_sampler_replicas"][0].value >= 1
        (leader,) = metrics["audio_omni_metrics_leader"]
        assert queue.redis.get(leader_key(redis_prefix, "shared")).decode() == leader.labels["holder"]
        # The process logs JSON lines.
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        assert any(x.get("event") == "serving" and x.get("deployed_pools") is False for x in lines)
        assert any(x.get("event") == "job succeeded" and x.get("job_id") == job.job_id for x in lines)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
        for role in ("shared", "pools"):  # handed back at once, not left to expire
            assert not queue.redis.exists(leader_key(redis_prefix, role))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        queue.close()
