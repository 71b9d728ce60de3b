"""System throughput: the whole job system next to a bare in-process loop over the model, same run.

One job mix (text-to-audio and text-to-music clips, `--steps` sampling steps, the `tiny` preset,
whose clip costs well over 50 ms on a CPU) runs twice:

(a) bare: `model.pipeline.AudioOmniPipeline` built in this process, one job per call, back to back;
(b) system: the jobs are submitted as one batch to the Redis queue; `Service` (the code behind
    `audio-omni serve`) runs the engine loop on the encoder and sampler Serve pools of a local Ray
    and writes every result (FLAC/WAV + metadata JSON) to an S3 endpoint; timed from the submit
    until the batch's last job is acknowledged. The pools are deployed and warmed up first.

Prints both rates, their ratio and the sampler's batch-size histogram for (b); the last line is one
JSON object: `bare_clips_per_s`, `system_clips_per_s`, `ratio`, `batch_hist` (+ the settings).

Run: `.venv/bin/python bench/system_throughput.py [--clips 16 --steps 24 --max-batch-size 4]`.
Needs Redis (`--redis-url`); starts a moto S3 server unless `--s3-endpoint` is given. Keys live
under `bench:{run}:` and are deleted at the end; the bucket is emptied and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _job_mix(clips: int, steps: int, duration_s: float) -> list[dict]:
    tasks = ("text_to_audio", "text_to_music")
    return [
        {"task": tasks[i % 2], "prompt": f"clip {i}", "duration_s": duration_s, "steps": steps, "seed": i}
        for i in range(clips)
    ]


def bare_rate(specs: list[dict], preset: str, threads: int) -> float:
    """Clips per second of a plain loop over the in-process pipeline (one job per call)."""
    import torch

    torch.set_num_threads(threads)  # as many as the sampler replica gets (`num_cpus`)

    from model.build import build_pipeline
    from model.config import load_config
    from model.pipeline import TaskInputs
    from model.tasks import Task

    pipeline = build_pipeline(load_config(preset))

    def inputs(spec: dict) -> TaskInputs:
        x = TaskInputs(task=Task(spec["task"]), steps=spec["steps"], cfg_scale=4.0, seed=spec["seed"])
        x.prompt, x.duration_s = spec["prompt"], spec["duration_s"]
        return x

    with torch.inference_mode():
        pipeline(inputs(specs[0]))  # warm-up, not timed
        started = time.perf_counter()
        for spec in specs:
            (out,) = pipeline(inputs(spec))
            assert out.audio is not None
        elapsed = time.perf_counter() - started
    return len(specs) / elapsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise SystemExit("moto_server not found; pass --s3-endpoint")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=0.5)
            return proc, url
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto server did not start")


def system_rate(specs: list[dict], args: argparse.Namespace, endpoint: str, bucket: str) -> tuple[float, dict]:
    """Clips per second through queue -> engine -> Serve pools -> S3, and the sampler histogram."""
    import ray

    from orchestrator.commands.serve import Service, ServiceOptions
    from orchestrator.queue import JobQueue
    from orchestrator.settings import Settings
    from workers.local_ray import init_ray
    from workers.settings import PoolSettings, WorkerSettings

    prefix = f"bench:{uuid.uuid4().hex[:10]}:"
    settings = Settings(
        redis_url=args.redis_url,
        redis_prefix=prefix,
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        s3_addressing_style="path",
    )
    workers = WorkerSettings(
        preset=args.preset,
        app_name=f"bench-{uuid.uuid4().hex[:6]}",
        encoder=PoolSettings(num_cpus=1.0, max_batch_size=args.max_batch_size, batch_wait_timeout_s=0.05),
        # The sampler replica runs `num_cpus` torch threads, the same count as the bare loop.
        sampler=PoolSettings(
            num_cpus=float(args.threads),
            max_batch_size=args.max_batch_size,
            batch_wait_timeout_s=args.batch_wait_s,
        ),
    )
    init_ray(num_cpus=max(4, (os.cpu_count() or 1) + 2))
    queue = JobQueue(args.redis_url, prefix=prefix)
    service = Service(settings, workers, ServiceOptions(max_in_flight=args.max_in_flight, drain=False))
    try:
        service.start()
        warm_id, _ = queue.submit_batch(specs[: args.max_batch_size])  # load and warm both pools
        _wait_batch(queue, warm_id, timeout_s=600)
        before = service.pools.sampler_stats()
        started = time.perf_counter()
        batch_id, _ = queue.submit_batch(specs)
        status = _wait_batch(queue, batch_id, timeout_s=1800)
        elapsed = time.perf_counter() - started
        after = service.pools.sampler_stats()
        if status.counts.get("succeeded", 0) != len(specs):
            raise SystemExit(f"system run did not succeed for every job: {status.counts}")
    finally:
        service.stop()
        service.wait(timeout_s=120)
        service.close()
        _delete_keys(queue, prefix)
        queue.close()
        ray.shutdown()
    hist = {size: after.get(size, 0) - before.get(size, 0) for size in sorted(after)}
    return len(specs) / elapsed, {k: v for k, v in hist.items() if v}


def _wait_batch(queue, batch_id: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = queue.batch_status(batch_id)
        if status is not None and status.done:
            return status
        time.sleep(0.05)
    raise SystemExit(f"batch {batch_id} did not finish in {timeout_s} s")


def _delete_keys(queue, prefix: str) -> None:
    keys = list(queue.redis.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        queue.redis.delete(*keys[i : i + 500])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-in-flight", type=int, default=8)
    # Every sampling loop is padded to the batch size (seeded bytes do not depend on batch-mates), so
    # a partial batch costs as much as a full one: waiting up to a second for batch-mates pays off.
    parser.add_argument("--batch-wait-s", type=float, default=1.0, help="sampler batch wait (s)")
    # On a shared 2-core machine 2 OpenMP threads spin against other load and run slower than 1.
    parser.add_argument("--threads", type=int, default=1, help="torch threads: bare loop and sampler replica")
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--s3-endpoint", default=None, help="S3 endpoint (default: start a moto server)")
    args = parser.parse_args()
    if args.clips < 1 or args.steps < 1:
        raise SystemExit(f"--clips and --steps must be >= 1, got {args.clips} and {args.steps}")

    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    moto, endpoint = (None, args.s3_endpoint) if args.s3_endpoint else _start_moto()
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    specs = _job_mix(args.clips, args.steps, args.duration_s)
    try:
        bare = bare_rate(specs, args.preset, args.threads)
        print(f"(a) bare pipeline loop : {bare:.3f} clips/s ({1000 / bare:.0f} ms/clip)")
        system, hist = system_rate(specs, args, endpoint, bucket)
        print(f"(b) whole system       : {system:.3f} clips/s ({1000 / system:.0f} ms/clip)")
        print(f"ratio (b)/(a)          : {system / bare:.3f}")
        print(f"sampler batch sizes    : {hist}  (loops per batch size, timed run only)")
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)
    print(
        json.dumps(
            {
                "bare_clips_per_s": round(bare, 4),
                "system_clips_per_s": round(system, 4),
                "ratio": round(system / bare, 4),
                "batch_hist": {str(k): v for k, v in hist.items()},
                "preset": args.preset,
                "clips": args.clips,
                "steps": args.steps,
                "max_batch_size": args.max_batch_size,
                "max_in_flight": args.max_in_flight,
                "batch_wait_s": args.batch_wait_s,
                "threads": args.threads,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
