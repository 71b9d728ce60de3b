"""Fixtures of the crash tests: tiny Serve pools, and engines started as real `audio-omni serve`
subprocesses against the test's Redis prefix and S3 bucket (so they can be SIGKILLed)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

StartEngine = Callable[[str, Path], subprocess.Popen]


@pytest.fixture()
def tiny_pools(ray_cluster, request) -> Iterator:
    """Both pools on the `tiny` preset (the system under test, not the model: the fastest preset)."""
    from workers.app import deploy, shutdown
    from workers.settings import PoolSettings, WorkerSettings

    settings = WorkerSettings(
        preset="tiny",
        app_name=f"t-{request.module.__name__.rsplit('.', 1)[-1][5:12]}-{uuid.uuid4().hex[:6]}",
        understand_max_new_tokens=4,
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.2),
    )
    deploy(settings)
    yield settings
    shutdown(settings)


@pytest.fixture()
def start_engine(tiny_pools, redis_url, redis_prefix, s3_endpoint, s3_bucket) -> StartEngine:
    """`start_engine(consumer, log)`: an engine process on `tiny_pools` (3 s leases, drains and
    exits when the queue is empty), its output appended to `log`."""
    import ray

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

    def start(consumer: str, log: Path) -> subprocess.Popen:
        cmd = [
            sys.executable, "-m", "orchestrator.cli", "serve",
            "--no-deploy", "--app-name", tiny_pools.app_name, "--preset", "tiny",  # as the pools were deployed
            "--ray-address", ray.get_runtime_context().gcs_address,
            "--lease-s", "3", "--max-in-flight", "4", "--consumer", consumer, "--drain",
        ]  # fmt: skip
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    return start
