"""Request ids and the API's answers when Redis is away, over real HTTP (uvicorn on loopback).

Every response carries `X-Request-ID` (the client's when it is tame, else a new one), every error
body its `request_id`, every log line of the request the same id; an unexpected failure is a 500
that tells the user the id to quote. A Redis that stops (or hangs past the client's socket timeout)
is a 503 `unavailable` with `Retry-After` on every route (a Redis server of the test's own, on its
own port, with AOF so it comes back with its data), and the API serves again by itself once Redis
is back."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.api import create_app, serve_in_thread
from orchestrator.logging import configure
from orchestrator.queue import JobQueue
from orchestrator.settings import Settings
from orchestrator.storage import LocalStorage
from orchestrator.tenants import TenantStore

pytestmark = pytest.mark.integration

T2A = {"task": "text_to_audio", "prompt": "rain on a tin roof"}


@pytest.fixture()
def log_lines():
    """The process's JSON log lines while the test runs (structlog and the standard library)."""
    stream = io.StringIO()
    configure(json=True, level="INFO", stream=stream)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]

    yield lines
    configure(json=True, level="WARNING")


def _api(queue: JobQueue, tenants: TenantStore, tmp_path: Path):
    app = create_app(None, queue=queue, storage=LocalStorage(tmp_path / "out"), tenants=tenants)

    def boom() -> dict:
        raise RuntimeError("a bug")

    app.add_api_route("/test-boom", boom, methods=["GET"])
    return app


@pytest.fixture()
def api(redis_url, redis_prefix, tmp_path):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    with serve_in_thread(_api(queue, tenants, tmp_path)) as url, httpx.Client(base_url=url) as http:
        yield http, key
    queue.close()


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


def test_every_response_carries_a_request_id_and_keeps_a_tame_one(api):
    http, key = api
    auth = {"Authorization": f"Bearer {key}"}
    fresh = http.get("/healthz")
    assert fresh.status_code == 200 and len(fresh.headers["X-Request-ID"]) == 32
    assert http.get("/healthz").headers["X-Request-ID"] != fresh.headers["X-Request-ID"]
    assert http.get("/healthz", headers={"X-Request-ID": "lb-7f3a:42"}).headers["X-Request-ID"] == "lb-7f3a:42"
    for hostile in ("a" * 129, "has space", "{json}", "\u00e9t\u00e9".encode()):
        got = http.get("/healthz", headers={"X-Request-ID": hostile})
        assert got.headers["X-Request-ID"] != hostile and len(got.headers["X-Request-ID"]) == 32
    created = http.post("/v1/jobs", json=T2A, headers={**auth, "X-Request-ID": "client-1"})
    assert created.status_code == 201 and created.headers["X-Request-ID"] == "client-1"


def test_every_error_body_carries_the_request_id(api):
    http, key = api
    auth = {"Authorization": f"Bearer {key}"}
    assert _error(http.get("/v1/jobs/nope"), 401, "unauthorized")
    assert _error(http.get("/v1/jobs/nope", headers=auth), 404, "not_found")
    assert _error(http.get("/no/such/endpoint"), 404, "not_found")
    given = _error(
        http.post("/v1/jobs", json={"task": "nope"}, headers={**auth, "X-Request-ID": "r-1"}), 422, "invalid_field"
    )
    assert given["request_id"] == "r-1"
    too_big = http.post(
        "/v1/jobs", content=b"x" * (2 * 1024 * 1024), headers={**auth, "content-type": "application/json"}
    )
    _error(too_big, 413, "too_large")  # answered by the body-limit middleware, inside the request-id one


def test_an_unexpected_failure_is_a_500_naming_the_id_to_quote_and_logged_under_it(api, log_lines):
    http, _ = api
    response = http.get("/test-boom", headers={"X-Request-ID": "quote-me"})
    error = _error(response, 500, "internal")
    assert "quote request id quote-me" in error["message"]
    assert "a bug" not in response.text  # the traceback goes to the log, not to the user
    mine = [line for line in log_lines() if line.get("request_id") == "quote-me"]
    failure = [line for line in mine if line["event"] == "unhandled error"]
    assert failure and "RuntimeError: a bug" in failure[0]["exception"] and failure[0]["level"] == "error"
    (request,) = [line for line in mine if line["event"] == "request"]
    assert request["status"] == 500 and request["route"] == "/test-boom" and request["method"] == "GET"


def test_log_lines_of_a_request_carry_its_id(api, log_lines):
    http, key = api
    http.post("/v1/jobs", json=T2A, headers={"Authorization": f"Bearer {key}", "X-Request-ID": "trace-9"})
    (line,) = [x for x in log_lines() if x.get("request_id") == "trace-9" and x["event"] == "request"]
    assert line["status"] == 201 and line["route"] == "/v1/jobs" and line["level"] == "info"
    assert "timestamp" in line and line["duration_ms"] >= 0
    assert not [x for x in log_lines() if x.get("request_id") is None and x.get("event") == "request"]


# --------------------------------------------------------------------------- Redis away


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server of this test on its own port (append-only, as the deployment runs it)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.dir = _free_port(), tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_away_is_a_503_with_retry_after_on_every_route_and_the_api_reconnects(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    try:
        settings = Settings(redis_url=server.url, redis_prefix="t503:", redis_socket_timeout_s=2)
        queue = JobQueue.from_settings(settings, client=settings.redis_client())
        tenants = TenantStore(queue.redis, prefix="t503:")
        tenants.create("acme")
        auth = {"Authorization": f"Bearer {tenants.issue_key('acme')}"}
        with serve_in_thread(_api(queue, tenants, tmp_path)) as url, httpx.Client(base_url=url) as http:
            job_id = http.post("/v1/jobs", json=T2A, headers=auth).json()["job_id"]
            server.stop()
            for method, path, body in (
                ("GET", "/healthz", None),
                ("POST", "/v1/jobs", T2A),
                ("GET", f"/v1/jobs/{job_id}", None),
                ("DELETE", f"/v1/jobs/{job_id}", None),
                ("POST", "/v1/batches", {"jobs": [T2A]}),
                ("GET", "/v1/jobs", None),
            ):
                response = http.request(method, path, json=body, headers=auth)
                error = _error(response, 503, "unavailable")
                assert response.headers["Retry-After"].isdigit(), (method, path)
                assert "retry later" in error["message"] or "unreachable" in error["message"]
            assert http.get("/metrics").status_code == 200  # the process's own metrics are still served
            server.start()  # the same data back from its append-only file
            assert http.get("/healthz").status_code == 200
            status = http.get(f"/v1/jobs/{job_id}", headers=auth)
            assert status.status_code == 200 and status.json()["status"] == "queued"
            # A Redis that hangs (frozen, not gone) times out into the same 503, not a hung request.
            server.proc.send_signal(signal.SIGSTOP)
            try:
                _error(http.get(f"/v1/jobs/{job_id}", headers=auth, timeout=30), 503, "unavailable")
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert http.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
        queue.close()
    finally:
        server.stop()


def test_the_sdk_error_carries_the_request_id(api):
    from orchestrator.client import ApiError, Client

    http, key = api
    with Client(str(http.base_url), key) as client, pytest.raises(ApiError) as raised:
        client.status("no-such-job")
    assert raised.value.status == 404 and raised.value.request_id
    assert f"(request id {raised.value.request_id})" in str(raised.value)
