"""Shared fixtures: the parity vectors, real Redis, a real S3 endpoint (moto's server over HTTP),
and one local Ray cluster per test session. No in-process mocks of any of them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests either way
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


# --------------------------------------------------------------------------- parity vectors


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """`../shared/parity` beside the checkout (CI lays shared/ there), or $AUDIO_OMNI_PARITY_DIR."""
    path = Path(os.environ.get("AUDIO_OMNI_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
    if not (path / "tiny_vectors.safetensors").exists():
        if os.environ.get("CI"):
            pytest.fail(f"parity vectors missing at {path}; CI must have shared/ beside the clone")
        pytest.skip(f"parity vectors not found at {path}")
    return path


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    import redis

    try:
        redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis is not reachable at {url} ({exc}); run `make services`")
    return url


@pytest.fixture()
def redis_prefix(redis_url):
    """A unique key prefix per test; every key under it is deleted afterwards."""
    import redis

    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


# --------------------------------------------------------------------------- S3 (moto server over HTTP)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_up(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url + "/moto-api/", timeout=0.5)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback: $TEST_S3_ENDPOINT if set, else a moto server we start."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    given = os.environ.get("TEST_S3_ENDPOINT")
    if given:
        yield given
        return
    port = _free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not _http_up(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("moto server did not start")
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh bucket per test, emptied and deleted afterwards."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


# --------------------------------------------------------------------------- Ray (one local cluster per session)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        # Loopback only: a local test cluster never needs the machine's external address.
        ray.init(
            address="local",  # never a cluster found in /tmp/ray or $RAY_ADDRESS (tests/multinode runs its own)
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            _node_ip_address="127.0.0.1",
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
