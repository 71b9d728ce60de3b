"""infra/local/services.sh: start, status and stop Redis and the S3 endpoint on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "infra" / "local" / "services.sh"

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=120)


def test_start_status_stop_on_free_ports(tmp_path):
    import redis

    redis_port, s3_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "REDIS_PORT": str(redis_port),
        "S3_PORT": str(s3_port),
        "RUN_DIR": str(tmp_path),
        "MOTO": str(REPO_ROOT / ".venv" / "bin" / "moto_server"),
    }
    try:
        started = _run("start", env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert redis.Redis(port=redis_port).ping()
        urllib.request.urlopen(f"http://127.0.0.1:{s3_port}/moto-api/", timeout=5)
        assert _run("status", env).stdout.split()[:4] == ["redis:", "up", "s3:", "up"]
        again = _run("start", env)  # idempotent: a second start finds both up
        assert again.returncode == 0 and "already up" in again.stdout
    finally:
        stopped = _run("stop", env)
    assert stopped.returncode == 0
    status = _run("status", env).stdout.split()
    assert status[:4] == ["redis:", "down", "s3:", "down"]
    assert status[4:] in (["chromium:", "installed"], ["chromium:", "missing"])  # the browser tests' need
