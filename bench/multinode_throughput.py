"""Throughput of the same tiny job mix on one Ray node and on a head + worker cluster, in one run.

Two clusters are brought up one after the other with `infra/local/cluster.sh` (each with its own
temp dir and ports, loopback only, the same CPUs in all):

- one node: a head with both marker resources; the encoder and the sampler pool share it;
- two nodes: a head (`cpu_node`, the encoder pool) and a worker (`gpu_node`, the sampler pool), so
  every encoder output crosses from one node to the other on its way to the sampler.

Both are up at once. On each, the tiny pools are deployed once (tests/multinode/pools.py), one
engine process (`audio-omni serve --no-deploy`) joins with `--ray-address` and a warm-up batch
runs; then measured batches alternate between the two (`--rounds` each, so a change in the
machine's load hits both alike): jobs/s from a batch's submission until its last job is recorded,
the median per setup. The job mix is
text-to-audio and text-to-music of 1-2 s with 2-4 sampling steps on the `tiny` preset (the system
under test, not the model).

Needs Redis and an S3 endpoint (`bash infra/local/services.sh start`); keys live under
`bench:mn:{run}:` and the results in a bucket of their own, both removed at the end.

Run: `.venv/bin/python bench/multinode_throughput.py [--jobs 32] [--rounds 3]`. The last line
printed is one JSON object: both median rates, their ratio (two nodes / one node), every round's
rate and where each pool ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CLUSTER_SH = REPO_ROOT / "infra" / "local" / "cluster.sh"
POOLS_PY = REPO_ROOT / "tests" / "multinode" / "pools.py"
APP = "mnbench"
CPUS = 4  # logical CPUs in each setup: 4 on the one node, 2 + 2 on the two


def job_mix(n: int, tag: str) -> list[dict[str, Any]]:
    """`n` tiny generation jobs, the same list for every setup."""
    jobs = []
    for i in range(n):
        task = "text_to_audio" if i % 3 else "text_to_music"
        jobs.append(
            {
                "task": task,
                "prompt": f"{tag} {task} {i}",
                "duration_s": 1.0 + (i % 2),
                "steps": 2 + 2 * (i % 2),
                "seed": i,
            }
        )
    return jobs


def sh(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["bash", str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_batch(queue: Any, batch_id: str, total: int, timeout_s: float, engine: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = queue.batch_status(batch_id).counts
        finished = sum(counts[s] for s in ("succeeded", "failed", "dead", "cancelled"))
        if finished >= total:
            if counts["succeeded"] != total:
                raise RuntimeError(f"batch {batch_id}: not every job succeeded: {counts}")
            return
        if engine.poll() is not None:
            raise RuntimeError(f"the engine exited ({engine.returncode}) with the batch at {counts}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} not done in {timeout_s:g} s: {counts}")
        time.sleep(0.05)


class Setup:
    """One cluster with its pools and one engine process; `round()` times one measured batch."""

    def __init__(self, name: str, workers: int, args: argparse.Namespace, run: str) -> None:
        from orchestrator.queue import JobQueue

        self.name, self.workers, self.args = name, workers, args
        self.directory = Path(tempfile.mkdtemp(prefix=f"aomb{workers}-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        both = {"cpu_node": 1, "gpu_node": 1}
        env.update(
            CLUSTER_DIR=str(self.directory),
            WORKERS=str(workers),
            HEAD_CPUS=str(CPUS if workers == 0 else CPUS // 2),
            WORKER_CPUS=str(CPUS // 2),
            HEAD_RESOURCES=json.dumps(both if workers == 0 else {"cpu_node": 1}),
            WORKER_RESOURCES=json.dumps({"gpu_node": 1}),
            PY=sys.executable,
            RAY=str(Path(sys.executable).with_name("ray")),
            RAY_AUTH_MODE="disabled",
        )
        self.env = env
        self.prefix = f"bench:mn:{run}:{name}:"
        self.queue = JobQueue(args.redis_url, prefix=self.prefix, lease_s=60.0)
        self.engine: subprocess.Popen | None = None
        self.placement: dict[str, list[str]] = {}
        self.rates: list[float] = []

    def start(self) -> None:
        sh(self.env, "start")
        address = (self.directory / "address").read_text().strip()
        pools = [sys.executable, str(POOLS_PY)]
        target = ["--address", address, "--app-name", APP]
        resources = ["--encoder-resource", "cpu_node", "--sampler-resource", "gpu_node"]
        subprocess.run(
            [*pools, "deploy", *target, *resources], env=self.env, check=True, capture_output=True, timeout=600
        )
        where = subprocess.run(
            [*pools, "where", *target], env=self.env, check=True, capture_output=True, text=True, timeout=120
        )
        self.placement = json.loads(where.stdout.strip().splitlines()[-1])
        engine_env = {
            **self.env,
            "AUDIO_OMNI_REDIS_URL": self.args.redis_url,
            "AUDIO_OMNI_REDIS_PREFIX": self.prefix,
            "AUDIO_OMNI_S3_BUCKET": self.args.bucket,
            "AUDIO_OMNI_S3_ENDPOINT_URL": self.args.s3_endpoint,
            "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
            "AUDIO_OMNI_LOG_LEVEL": "WARNING",
        }
        cmd = [
            sys.executable, "-m", "orchestrator.cli", "serve", "--no-deploy", "--app-name", APP, "--preset", "tiny",
            "--ray-address", address, "--max-in-flight", str(self.args.max_in_flight),
            "--consumer", f"bench-{self.name}",
        ]  # fmt: skip
        log = (self.directory / "engine.log").open("ab")
        self.engine = subprocess.Popen(cmd, cwd=REPO_ROOT, env=engine_env, stdout=log, stderr=subprocess.STDOUT)
        warm_id, _ = self.queue.submit_batch(job_mix(self.args.warmup, "warm-up"))
        wait_batch(self.queue, warm_id, self.args.warmup, 600, self.engine)

    def round(self, i: int) -> float:
        assert self.engine is not None
        t0 = time.perf_counter()
        batch_id, _ = self.queue.submit_batch(job_mix(self.args.jobs, f"round {i}"))
        wait_batch(self.queue, batch_id, self.args.jobs, 1800, self.engine)
        rate = self.args.jobs / (time.perf_counter() - t0)
        self.rates.append(rate)
        return rate

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.workers + 1,
            "jobs_per_round": self.args.jobs,
            "rounds_jobs_per_s": [round(r, 3) for r in self.rates],
            "median_jobs_per_s": round(statistics.median(self.rates), 3),
            "placement": self.placement,
        }

    def stop(self) -> None:
        if self.engine is not None and self.engine.poll() is None:
            self.engine.send_signal(signal.SIGTERM)
            try:
                self.engine.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.engine.kill()
                self.engine.wait(timeout=10)
        try:
            sh(self.env, "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            keys = list(self.queue.redis.scan_iter(match=self.prefix + "*", count=1000))
            for i in range(0, len(keys), 500):
                self.queue.redis.delete(*keys[i : i + 500])
            self.queue.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=32, help="jobs in each measured batch (default 32)")
    ap.add_argument("--rounds", type=int, default=3, help="measured batches per setup, alternating (default 3)")
    ap.add_argument("--warmup", type=int, default=6, help="jobs in the warm-up batch (default 6)")
    ap.add_argument("--max-in-flight", type=int, default=8, help="the engine's jobs in flight (default 8)")
    ap.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--s3-endpoint", default=os.environ.get("TEST_S3_ENDPOINT", "http://127.0.0.1:9000"))
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.warmup < 1 or args.rounds < 1:
        ap.error("--jobs, --warmup and --rounds must be >= 1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    run = uuid.uuid4().hex[:8]
    args.bucket = f"bench-mn-{run}"
    s3 = boto3.client("s3", endpoint_url=args.s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=args.bucket)
    setups = [Setup("one", 0, args, run), Setup("two", 1, args, run)]
    try:
        for setup in setups:
            setup.start()
        # Rounds alternate between the setups, so a change in the machine's load hits both alike.
        for i in range(args.rounds):
            for setup in setups:
                rate = setup.round(i)
                print(f"round {i} {setup.name} node(s): {rate:.3f} jobs/s", flush=True)
    finally:
        for setup in setups:
            setup.stop()
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=args.bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=args.bucket)
        except Exception as exc:  # the endpoint went away: the figures still stand
            print(f"could not remove the bucket {args.bucket}: {exc}", file=sys.stderr)
    one, two = setups[0].summary(), setups[1].summary()
    ratio = two["median_jobs_per_s"] / one["median_jobs_per_s"]
    print(
        json.dumps(
            {
                "bench": "multinode_throughput",
                "preset": "tiny",
                "cpus_per_setup": CPUS,
                "one_node_jobs_per_s": one["median_jobs_per_s"],
                "two_nodes_jobs_per_s": two["median_jobs_per_s"],
                "ratio_two_over_one": round(ratio, 3),
                "one_node": one,
                "two_nodes": two,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
