"""The worker node holding the sampler pool is lost mid-batch (its raylet, replica and agents
SIGKILLed) and comes back: the engine, on the head, keeps going; the sampler pool is rebuilt on the
new node; every job finishes with one whole result, none completed twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
from multinode_support import LEASE_S, check_done_once, wait_until

from tests.process_logs import log_excerpt

N_JOBS = 10
REPO_ROOT = Path(__file__).resolve().parents[2]


def _where(cluster) -> dict[str, list[str]]:
    return json.loads(cluster.pools("where").strip().splitlines()[-1])


def test_pools_are_placed_on_different_nodes(cluster):
    where = _where(cluster)
    assert len(where["encoder"]) == 1 and len(where["sampler"]) == 1, where
    assert where["encoder"] != where["sampler"], f"both pools on one node: {where}"


def test_local_ray_elsewhere_does_not_join_the_cluster(cluster):
    """What tests/conftest.py's `ray_cluster` and `init_ray()` start is their own Ray, not this cluster."""
    code = (
        "import ray; from workers.local_ray import init_ray; init_ray(num_cpus=1); "
        "print('GCS', ray.get_runtime_context().gcs_address); ray.shutdown()"
    )
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    gcs = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS ")]
    assert gcs and gcs[0] != cluster.address, (gcs, cluster.address)


def test_worker_node_killed_mid_batch_then_back(cluster, start_engine, mn_redis, mn_prefix, mn_s3, mn_bucket, tmp_path):
    from orchestrator.queue import JobQueue

    before = _where(cluster)
    queue = JobQueue(mn_redis.url, prefix=mn_prefix, lease_s=LEASE_S)
    specs = [
        {"task": "text_to_audio", "prompt": f"sound {i}", "duration_s": 1.0, "steps": 2, "seed": i}
        for i in range(N_JOBS)
    ]
    batch_id, job_ids = queue.submit_batch(specs)
    engine = start_engine("node-loss")
    log = tmp_path / "node-loss.log"

    def mid_batch() -> bool:
        assert engine.poll() is None, f"engine exited early:\n{log_excerpt(log)}"
        counts = queue.batch_status(batch_id).counts
        return counts["succeeded"] >= 2 and counts["succeeded"] + counts["failed"] + counts["dead"] < N_JOBS - 2

    wait_until(mid_batch, 240, "no mid-batch moment seen", every_s=0.1)
    # Freeze the engine while the node goes, so the loss lands while its jobs wait on the sampler.
    engine.send_signal(signal.SIGSTOP)
    try:
        in_flight = {r.job_id for r in queue.get_many(job_ids) if r.status.value == "running"}
        cluster.kill_worker()
    finally:
        engine.send_signal(signal.SIGCONT)
    time.sleep(3.0)  # the engine runs on without a sampler for a while: calls fail and are retried
    assert engine.poll() is None, f"engine died with the worker node:\n{log_excerpt(log)}"
    cluster.start_worker()

    assert engine.wait(timeout=300) == 0, log_excerpt(log)
    client = boto3.client("s3", endpoint_url=mn_s3.upstream, region_name="us-east-1")
    records = check_done_once(queue, client, mn_bucket, batch_id, job_ids)
    after = _where(cluster)
    assert after["encoder"] == before["encoder"], "the encoder pool on the head was not touched"
    assert after["sampler"] and after["sampler"] != before["sampler"], "the sampler pool was rebuilt on the new node"
    assert after["sampler"] != after["encoder"]
    # Whatever was in flight at the loss finished too; a job whose sampler call died took another attempt.
    assert in_flight and all(r.status.value == "succeeded" for r in records if r.job_id in in_flight)
    assert not queue.dead_letters(), "no job reached the dead-letter stream"
    queue.close()
