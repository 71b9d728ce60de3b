"""The SDK (`orchestrator.sdk`: `Client`, `AsyncClient`, `RetryPolicy`) against the real API over
real HTTP, real Redis and the moto S3 endpoint.

Faults are real too: a port with nothing listening yet (connection refused), and a thin ASGI layer
in front of the real app that answers 503 + `Retry-After` or 500 instead of (or after) the app's own
answer, so a retried submit meets a server that already queued the job. The engine is played with
the real queue API (claim, `put_result` into the real storage, `ack_success`)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf

from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.client import Client as LegacyImportClient
from orchestrator.queue import JobQueue
from orchestrator.sdk import (
    ApiError,
    AsyncClient,
    BatchCreated,
    Client,
    JobFailed,
    JobView,
    RetryPolicy,
    WaitTimeout,
    WorkflowView,
)
from orchestrator.storage import S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = pytest.mark.integration

T2A = {"task": "text_to_audio", "prompt": "rain on a tin roof", "duration_s": 1.0, "steps": 2}
FAST = RetryPolicy(max_retries=4, initial_s=0.05, max_wait_s=0.2, jitter_s=0.02, max_retry_after_s=0.5)


def wav_bytes(seconds: float = 0.2, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class Faults:
    """An ASGI layer over the real app. `plan[(method, path)]` lists what to do to the next
    requests: "503" (answer 503 + Retry-After: 0 without calling the app), "500", or "lost" (the
    app handles the request, then its answer is replaced by a 503, as when a response is lost)."""

    def __init__(self, app) -> None:
        self.app = app
        self.plan: dict[tuple[str, str], list[str]] = {}
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = (scope["method"], scope["path"])
        todo = self.plan.get(key) or []
        fault = todo.pop(0) if todo else None
        if fault is None:
            await self.app(scope, receive, send)
            self.seen.append((*key, 0))
            return
        if fault == "lost":

            async def swallow(message) -> None:
                return None

            await self.app(scope, receive, swallow)
        status = 500 if fault == "500" else 503
        self.seen.append((*key, status))
        body = b'{"error": {"code": "unavailable", "message": "injected fault", "field": null, "details": []}}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 503:
            headers.append((b"retry-after", b"0"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def attempts(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.seen if (m, p) == (method, path))


@pytest.fixture()
def api(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30, max_attempts=1)
    storage = S3Storage(
        s3_bucket, client=make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    )
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme", TenantLimits(max_in_flight=50, max_steps=100))
    key = tenants.issue_key("acme")
    faults = Faults(create_app(None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings()))
    with serve_in_thread(faults) as url:
        yield SimpleNamespace(url=url, key=key, queue=queue, storage=storage, tenants=tenants, faults=faults)
    queue.close()


def finish(api, data: bytes | None = None, *, fail: str | None = None) -> str:
    """Play the engine for the next queued job: a real result, or a permanent failure."""
    (claim,) = api.queue.claim("test-engine", count=1, block_ms=2000)
    if fail is not None:
        api.queue.fail(claim, fail, retryable=False)
        return claim.job_id
    location = api.storage.put_result(
        tenant=claim.tenant,
        job_id=claim.job_id,
        batch_id=claim.batch_id,
        metadata={"seed": claim.seed},
        data=data or wav_bytes(),
    )
    api.queue.ack_success(claim, location.result_uri, extra={"metadata_uri": location.metadata_uri})
    return claim.job_id


def queued(api) -> int:
    return sum(api.queue.queue_depths().values())


# --------------------------------------------------------------------------- typed returns


def test_sdk_returns_the_api_models(api, tmp_path):
    audio = wav_bytes(0.3)
    assert LegacyImportClient is Client  # the historical import path still works
    with Client(api.url, api.key, retry=FAST) as client:
        job = client.submit(T2A, seed=7, custom_id="clip-1", metadata={"take": 3})
        assert isinstance(job, JobView) and job.status.value == "queued"
        assert job.custom_id == "clip-1" and job.metadata == {"take": 3}
        assert job.spec is not None and job.spec["idempotency_key"].startswith("sdk-")  # made by the SDK

        worker = threading.Thread(target=finish, args=(api, audio))
        worker.start()
        done = client.wait(job.job_id, timeout_s=20, poll_s=0.1, raise_on_failure=True)
        worker.join()
        assert done.status.value == "succeeded" and done.result_available
        assert client.download(job.job_id, tmp_path / "a.wav") == len(audio)
        assert (tmp_path / "a.wav").read_bytes() == audio
        saved = client.save_result(job.job_id, tmp_path / "out", stem="clip-1")
        assert saved.name == "clip-1.wav" and saved.read_bytes() == audio
        assert not list((tmp_path / "out").glob(".*"))  # no partial files left behind
        view = client.result(job.job_id)
        assert view.size_bytes == len(audio) and view.sha256
        buffer = io.BytesIO()
        assert client.download(job.job_id, buffer) == len(audio) and buffer.getvalue() == audio

        batch = client.submit_batch([T2A, {**T2A, "custom_id": "b"}])
        assert isinstance(batch, BatchCreated) and batch.total == 2
        assert client.batch_status(batch.batch_id).counts["queued"] == 2
        lines = list(client.iter_batch_results(batch.batch_id, page_size=1))
        assert [line.job_id for line in lines] == batch.job_ids and lines[1].custom_id == "b"
        report = client.batch_report(batch.batch_id, tmp_path / "report.html")
        assert "<html" in report.read_text().lower() and batch.batch_id in report.read_text()

        page = client.jobs(limit=2)
        assert len(page.items) == 2 and page.next_cursor
        listed = list(client.iter_jobs(page_size=2))
        assert sorted(j.job_id for j in listed) == sorted([job.job_id, *batch.job_ids])
        assert [b.batch_id for b in client.iter_batches()] == [batch.batch_id]

        cancelled = client.cancel(batch.job_ids[0])
        assert cancelled.status.value == "cancelled" and not cancelled.cancel_requested

        wf = client.submit_workflow(
            [{"id": "a", **T2A}, {"id": "b", "task": "understand", "prompt": "what?", "input_audio_uri": "{{a.audio}}"}]
        )
        assert isinstance(wf, WorkflowView) and [s.id for s in wf.steps] == ["a", "b"]
        assert client.workflow(wf.workflow_id) == wf
        chain = client.submit({**T2A, "reasoning": True})
        assert isinstance(chain, WorkflowView) and [s.id for s in chain.steps] == ["reason", "generate"]
        assert client.health().redis


def test_errors_are_api_errors_with_codes_and_waits_end(api):
    with Client(api.url, api.key, retry=FAST) as client:
        with pytest.raises(ApiError) as missing:
            client.status("nope")
        assert missing.value.status == 404 and missing.value.code == "not_found"
        with pytest.raises(ApiError) as invalid:
            client.submit({"task": "text_to_audio"})
        assert invalid.value.status == 422 and invalid.value.field == "prompt"
        with pytest.raises(ValueError, match="job_id"):
            client.status("a/b")  # refused before anything is sent
        with pytest.raises(ValueError, match="limit"):
            client.jobs(limit=0)

        job = client.submit(T2A)
        with pytest.raises(WaitTimeout, match="still queued"):
            client.wait(job.job_id, timeout_s=0.3, poll_s=0.1)
        finish(api, fail="input not found: x.wav")
        with pytest.raises(JobFailed, match="ended failed") as failed:
            client.wait(job.job_id, timeout_s=10, poll_s=0.1, raise_on_failure=True)
        assert failed.value.job.error_code and "input not found" in (failed.value.job.error or "")


# --------------------------------------------------------------------------- retries


def test_a_retried_submit_whose_answer_was_lost_queues_one_job(api):
    api.faults.plan[("POST", "/v1/jobs")] = ["lost", "lost"]
    api.faults.plan[("POST", "/v1/batches")] = ["lost"]
    api.faults.plan[("POST", "/v1/workflows")] = ["lost"]
    with Client(api.url, api.key, retry=FAST) as client:
        job = client.submit(T2A)
        batch = client.submit_batch([T2A] * 3)
        wf = client.submit_workflow([{"id": "only", **T2A}])
    assert api.faults.attempts("POST", "/v1/jobs") == 3
    assert api.faults.attempts("POST", "/v1/batches") == 2
    assert queued(api) == 1 + 3 + 1  # the server acted on every lost answer, yet nothing twice
    assert api.queue.get(job.job_id) is not None and len(batch.job_ids) == 3
    assert api.queue.workflow_status(wf.workflow_id) is not None
    assert api.tenants.in_flight("acme") == 5  # the retries reserved nothing extra


def test_503_and_500_are_retried_for_reads_and_the_retry_budget_ends(api):
    path = "/v1/batches"
    api.faults.plan[("GET", "/v1/jobs")] = ["503", "500", "503"]
    with Client(api.url, api.key, retry=FAST) as client:
        assert client.jobs().items == []
        assert api.faults.attempts("GET", "/v1/jobs") == 4
        api.faults.plan[("GET", path)] = ["503"] * 10
        with pytest.raises(ApiError) as exhausted:
            client.batches()
        assert exhausted.value.status == 503 and api.faults.attempts("GET", path) == FAST.max_retries + 1
    with Client(api.url, api.key, retry=FAST.replace(max_retries=0)) as client:
        api.faults.plan[("GET", "/healthz")] = ["503"]
        with pytest.raises(ApiError):
            client.health()


def test_a_server_not_up_yet_is_waited_for(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    """Connection refused (nothing listens on the port yet), then the API comes up: the call succeeds."""
    queue = JobQueue(redis_url, prefix=redis_prefix)
    storage = S3Storage(
        s3_bucket, client=make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    )
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(None, queue=queue, storage=storage, tenants=tenants)
    ready = threading.Event()
    stop = threading.Event()

    def serve_later() -> None:
        time.sleep(0.5)
        with serve_in_thread(app, port=port):
            ready.set()
            stop.wait(30)

    server = threading.Thread(target=serve_later, daemon=True)
    server.start()
    policy = RetryPolicy(max_retries=30, initial_s=0.05, max_wait_s=0.3, jitter_s=0.05)
    try:
        with Client(f"http://127.0.0.1:{port}", key, retry=policy) as client:
            job = client.submit(T2A)  # the first tries are refused: retried until the API answers
            assert ready.is_set() and client.status(job.job_id).status.value == "queued"
    finally:
        stop.set()
        server.join(timeout=20)
        queue.close()


def test_retry_policy_rules():
    policy = RetryPolicy()
    busy = ApiError(503, "unavailable", "x", retry_after_s=7.0)
    assert policy.should_retry(busy, idempotent=False) and policy.wait_s(busy, 1) == 7.0
    assert policy.wait_s(ApiError(429, "rate_limited", "x", retry_after_s=1e6), 1) == policy.max_retry_after_s
    assert policy.should_retry(ApiError(500, "internal", "x"), idempotent=True)
    assert not policy.should_retry(ApiError(500, "internal", "x"), idempotent=False)
    assert not policy.should_retry(ApiError(422, "invalid_field", "x"), idempotent=True)
    quota = ApiError(429, "quota_exceeded", "x", retry_after_s=10)
    assert policy.should_retry(quota, idempotent=True) and not policy.replace(retry_quota=False).should_retry(
        quota, idempotent=True
    )
    request = httpx.Request("POST", "http://x")
    assert policy.should_retry(httpx.ConnectError("refused", request=request), idempotent=False)
    assert not policy.should_retry(httpx.ReadTimeout("slow", request=request), idempotent=False)
    assert policy.should_retry(httpx.ReadTimeout("slow", request=request), idempotent=True)
    waits = [policy.wait_s(None, n) for n in range(1, 12)]
    assert all(w <= policy.max_wait_s + policy.jitter_s for w in waits) and waits[-1] >= policy.max_wait_s
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


def test_run_jsonl_names_the_manifest_line_the_api_refused(api, tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [T2A, {**T2A, "seed": 1}, {**T2A, "steps": 500}]  # valid specs; the tenant allows 100 steps
    manifest.write_text("# header\n" + "\n".join(json.dumps(line) for line in lines))
    with Client(api.url, api.key, retry=FAST) as client, pytest.raises(ApiError) as refused:
        client.run_jsonl(manifest, tmp_path / "out", progress=False)
    assert refused.value.code == "limit_exceeded" and refused.value.status == 422
    assert "line 4.steps" in str(refused.value) and refused.value.field == "line 4.steps"
    assert queued(api) == 0  # the chunk was refused as a whole
    journal = [json.loads(raw) for raw in (tmp_path / "out" / "run_state.jsonl").read_text().splitlines()]
    assert [r["op"] for r in journal] == ["manifest", "chunk", "refused"]


# --------------------------------------------------------------------------- async


def test_async_client_has_the_same_surface(api, tmp_path):
    audio = wav_bytes(0.25)
    sync_methods = {n for n in dir(Client) if not n.startswith("_") and callable(getattr(Client, n))}
    async_methods = {n for n in dir(AsyncClient) if not n.startswith("_") and callable(getattr(AsyncClient, n))}
    assert sync_methods - {"close"} <= async_methods

    async def scenario() -> None:
        async with AsyncClient(api.url, api.key, retry=FAST) as client:
            api.faults.plan[("POST", "/v1/jobs")] = ["lost"]
            jobs = await asyncio.gather(*(client.submit(T2A, seed=i) for i in range(3)))
            assert all(isinstance(j, JobView) for j in jobs) and queued(api) == 3
            engine = threading.Thread(target=lambda: [finish(api, audio) for _ in range(3)])
            engine.start()
            done = await asyncio.gather(*(client.wait(j.job_id, timeout_s=20, poll_s=0.1) for j in jobs))
            engine.join()
            assert {d.status.value for d in done} == {"succeeded"}
            assert await client.download(jobs[0].job_id, tmp_path / "x.wav") == len(audio)
            path = await client.save_result(jobs[1].job_id, tmp_path)
            assert path.read_bytes() == audio
            seen = [j.job_id async for j in client.iter_jobs(page_size=1)]
            assert sorted(seen) == sorted(j.job_id for j in jobs)
            with pytest.raises(ApiError) as missing:
                await client.workflow("nope")
            assert missing.value.status == 404

    asyncio.run(scenario())
