"""Fixtures of the multi-node fault tests: a real two-node Ray cluster on this machine, the tiny pools
placed one per node, a dedicated Redis (AOF on, as deployed) and a dedicated S3 endpoint behind a
proxy that can fail, and engines started as `audio-omni serve` processes that join the cluster.

Isolation from every other test session on the machine: the cluster is `infra/local/cluster.sh`
with its own short temp dir and free ports (it never writes /tmp/ray/ray_current_cluster, so a plain
`ray.init()` elsewhere starts its own local Ray), and this process never joins the cluster: the pools
are deployed by a subprocess (tests/multinode/pools.py) and the engines are subprocesses, so the
session may also hold tests/conftest.py's local `ray_cluster`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from multinode_support import LEASE_S, FaultProxy, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "infra" / "local" / "cluster.sh"
POOLS_PY = Path(__file__).with_name("pools.py")
APP_NAME = "mn"
HEAD_RESOURCE, WORKER_RESOURCE = "cpu_node", "gpu_node"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------- the Ray cluster


@dataclass
class Cluster:
    """`infra/local/cluster.sh` on a temp dir of its own: head (cpu_node) + worker 1 (gpu_node)."""

    directory: Path
    env: dict[str, str]
    address: str = ""

    def sh(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            ["bash", str(CLUSTER_SH), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}")
        return done.stdout

    def logs(self, tail: int = 3000) -> str:
        out = []
        for log in sorted(self.directory.glob("*.log")):
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def kill_worker(self) -> None:
        self.sh("kill-worker", "1")

    def start_worker(self) -> None:
        self.sh("start-worker", "1", "2")

    def pools(self, action: str, *extra: str) -> str:
        cmd = [sys.executable, str(POOLS_PY), action, "--address", self.address, "--app-name", APP_NAME, *extra]
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"pools.py {action} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A head and a worker node (separate `ray start` process trees), with the tiny encoder pool
    placed on the head (cpu_node) and the sampler pool on the worker (gpu_node), deployed once."""
    directory = Path(tempfile.mkdtemp(prefix="aomn-", dir="/tmp"))  # short: unix socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        CLUSTER_DIR=str(directory),
        HEAD_CPUS="2",
        WORKER_CPUS="2",
        HEAD_RESOURCES=json.dumps({HEAD_RESOURCE: 1}),
        WORKER_RESOURCES=json.dumps({WORKER_RESOURCE: 1}),
        PY=sys.executable,
        RAY=str(Path(sys.executable).with_name("ray")),
        RAY_AUTH_MODE="disabled",
        # Find a lost node in seconds, not the default half minute (this cluster's processes only).
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    c = Cluster(directory, env)
    try:
        c.sh("start")
        c.address = (directory / "address").read_text().strip()
        c.pools("deploy", "--encoder-resource", HEAD_RESOURCE, "--sampler-resource", WORKER_RESOURCE)
        yield c
    finally:
        try:
            c.sh("stop", timeout=120)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- Redis (AOF on, own port)


@dataclass
class RedisServer:
    """A redis-server of our own with `--appendonly yes` (as infra/k8s/redis.yaml runs it)."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed; run `bash infra/local/services.sh start`")
        cmd = [
            exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(up, 30, "dedicated redis-server did not start")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: Redis flushes its append-only file and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="session")
def mn_redis() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="aomn-redis-"))
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (moto, own port, behind a proxy)


@pytest.fixture(scope="session")
def mn_s3() -> Iterator[FaultProxy]:
    """A moto server of our own, reached through a loopback proxy that can answer 503 for a while."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proxy = FaultProxy(f"http://127.0.0.1:{port}")
    try:
        import urllib.request

        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                return True
            except OSError:
                return False

        wait_until(up, 30, "dedicated moto server did not start")
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def mn_bucket(mn_s3: FaultProxy) -> Iterator[str]:
    """A fresh versioned bucket (every write leaves a version to count), deleted afterwards."""
    import boto3

    client = boto3.client("s3", endpoint_url=mn_s3.upstream, region_name="us-east-1")
    name = f"mn-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    yield name
    for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
    client.delete_bucket(Bucket=name)


@pytest.fixture()
def mn_prefix(mn_redis: RedisServer) -> Iterator[str]:
    import redis

    prefix = f"mn:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(mn_redis.url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    except redis.RedisError:  # the server is being restarted by a failed test: nothing to clean
        pass
    client.close()


# --------------------------------------------------------------------------- processes: engines and the API

StartProcess = Callable[..., subprocess.Popen]


@pytest.fixture()
def service_env(
    cluster: Cluster, mn_redis: RedisServer, mn_prefix: str, mn_s3: FaultProxy, mn_bucket: str
) -> dict[str, str]:
    """The environment of an engine or API process on this test's Redis prefix and bucket."""
    return {
        **cluster.env,
        "AUDIO_OMNI_REDIS_URL": mn_redis.url,
        "AUDIO_OMNI_REDIS_PREFIX": mn_prefix,
        "AUDIO_OMNI_S3_BUCKET": mn_bucket,
        "AUDIO_OMNI_S3_ENDPOINT_URL": mn_s3.url,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AUDIO_OMNI_LEASE_S": str(LEASE_S),
        # Faults take attempts (a pool call to a lost node, a refused write): room for a few.
        "AUDIO_OMNI_MAX_ATTEMPTS": "10",
        "AUDIO_OMNI_BACKOFF_BASE_S": "0.5",
        "AUDIO_OMNI_BACKOFF_MAX_S": "4",
        "AUDIO_OMNI_LOG_LEVEL": "WARNING",
    }


@pytest.fixture()
def start_engine(cluster: Cluster, service_env: dict[str, str], tmp_path: Path) -> Iterator[StartProcess]:
    """`start_engine(consumer)`: `audio-omni serve --no-deploy` joining the cluster (the pools were
    deployed once), draining: it exits once the queue is empty. Output in tmp_path/<consumer>.log."""
    procs: list[subprocess.Popen] = []

    def start(consumer: str, *extra: str) -> subprocess.Popen:
        cmd = [
            sys.executable, "-m", "orchestrator.cli", "serve",
            "--no-deploy", "--app-name", APP_NAME, "--preset", "tiny", "--ray-address", cluster.address,
            "--max-in-flight", "4", "--consumer", consumer, "--drain", *extra,
        ]  # fmt: skip
        log = (tmp_path / f"{consumer}.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=service_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)


@dataclass
class Api:
    url: str
    key: str
    proc: subprocess.Popen


@pytest.fixture()
def start_api(
    service_env: dict[str, str], mn_redis: RedisServer, mn_prefix: str, tmp_path: Path
) -> Iterator[Callable[[], Api]]:
    """`start_api()`: `audio-omni api` on this test's Redis prefix and bucket, with a tenant `acme`."""
    import httpx
    import redis

    from orchestrator.tenants import TenantStore

    procs: list[subprocess.Popen] = []

    def start() -> Api:
        client = redis.Redis.from_url(mn_redis.url)
        tenants = TenantStore(client, prefix=mn_prefix)
        tenants.create("acme")
        key = tenants.issue_key("acme")
        client.close()
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        log = (tmp_path / "api.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=service_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            try:
                return httpx.get(url + "/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "audio-omni api did not start")
        return Api(url, key, proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
