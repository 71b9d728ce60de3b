"""The HTTP API over real HTTP (uvicorn on a loopback port), real Redis and the moto S3 endpoint.

The GPU engine is not started here: where a job must finish, the test plays the engine with the
real queue API (claim, `put_result` into the real storage, `ack_success`)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf

from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.api.views import JobView
from orchestrator.client import ApiError, Client
from orchestrator.queue import JobQueue
from orchestrator.storage import LocalStorage, S3Storage, input_resolver_from_settings, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = pytest.mark.integration

T2A = {"task": "text_to_audio", "prompt": "rain on a tin roof"}
UPLOAD_LIMIT_BYTES = 256 * 1024


def wav_bytes(seconds: float = 0.2, rate: int = 44100, channels: int = 2, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # (N,)
    buf = io.BytesIO()
    sf.write(buf, np.stack([tone] * channels, axis=1), rate, format=fmt, subtype="PCM_16")  # (N, C)
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3_client(s3_endpoint):
    return make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")


@pytest.fixture()
def api(redis_url, redis_prefix, s3_client, s3_bucket):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = S3Storage(s3_bucket, client=s3_client)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    app = create_app(
        None,
        queue=queue,
        storage=storage,
        tenants=tenants,
        api_settings=ApiSettings(max_upload_bytes=UPLOAD_LIMIT_BYTES, max_batch_jobs=5000),
    )
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        yield SimpleNamespace(url=url, key=key, http=http, queue=queue, storage=storage, tenants=tenants)
    queue.close()


def finish(api, job_id: str, data: bytes) -> str:
    """Play the engine for one job: claim it, write a real result, acknowledge it."""
    (claim,) = api.queue.claim("test-engine", count=1, block_ms=2000)
    assert claim.job_id == job_id
    location = api.storage.put_result(
        tenant=claim.tenant, job_id=claim.job_id, batch_id=claim.batch_id, metadata={"seed": claim.seed}, data=data
    )
    api.queue.ack_success(claim, location.result_uri, extra={"metadata_uri": location.metadata_uri})
    return location.result_uri


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "field"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    return error


def queued_total(api) -> int:
    return sum(api.queue.queue_depths().values())


# --------------------------------------------------------------------------- happy paths


def test_job_submitted_over_http_runs_to_a_downloadable_result(api, tmp_path):
    response = api.http.post("/v1/jobs", json=T2A)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["spec"]["prompt"] == T2A["prompt"]
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    record = api.queue.get(job["job_id"])
    assert record.tenant == "acme"  # the key's tenant, not the spec's default

    not_ready = api.http.get(f"/v1/jobs/{job['job_id']}/result")
    assert_error(not_ready, 409, "not_ready")

    audio = wav_bytes()
    result_uri = finish(api, job["job_id"], audio)
    assert result_uri.startswith(f"s3://{api.storage.bucket}/acme/")
    done = api.http.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["status"] == "succeeded" and done["result_available"]

    result = api.http.get(f"/v1/jobs/{job['job_id']}/result").json()
    assert result["content_type"] == "audio/wav" and result["size_bytes"] == len(audio)
    assert httpx.get(result["url"]).content == audio  # the presigned URL works without the API key
    assert httpx.get(result["metadata_url"]).json()["result_object"]["sha256"] == result["sha256"]

    with Client(api.url, api.key) as client:
        assert client.wait(job["job_id"], timeout_s=5).status == "succeeded"
        assert client.download(job["job_id"], tmp_path / "out.wav") == len(audio)
    assert (tmp_path / "out.wav").read_bytes() == audio


def test_sdk_submit_wait_cancel_and_batch(api, tmp_path):
    with Client(api.url, api.key) as client:
        job = client.submit(T2A, steps=8, duration_s=2.0, seed=7)
        assert isinstance(job, JobView)
        assert client.status(job.job_id).spec["steps"] == 8

        # A background "engine" finishes the job while the client waits on it.
        worker = threading.Thread(target=finish, args=(api, job.job_id, wav_bytes()))
        worker.start()
        done = client.wait(job.job_id, timeout_s=10, poll_s=0.1)
        worker.join()
        assert done.status == "succeeded"

        other = client.submit({"task": "text_to_music", "prompt": "slow piano"})
        assert isinstance(other, JobView)
        assert client.cancel(other.job_id).status == "cancelled"
        assert client.wait(other.job_id, timeout_s=2).status == "cancelled"

        batch = client.submit_batch([{**T2A, "seed": i} for i in range(5)])
        assert batch.total == 5 and client.batch_status(batch.batch_id).counts["queued"] == 5

        upload = client.upload(wav_bytes(fmt="FLAC"), filename="voice.flac")
        assert upload.format == "flac" and upload.uri.endswith(".flac")

        with pytest.raises(ApiError) as err:
            client.status("0" * 32)
        assert err.value.status == 404 and err.value.code == "not_found"


def test_batch_of_thousands_is_queued_in_chunks_with_counts_and_failure_paging(api):
    jobs = [{**T2A, "prompt": f"rain number {i}", "steps": 10} for i in range(2000)]
    response = api.http.post("/v1/batches", json={"jobs": jobs}, timeout=60)
    assert response.status_code == 201, response.text
    batch = response.json()
    batch_id = batch["batch_id"]
    assert batch["total"] == 2000 and batch["job_ids"][1999] == f"{batch_id}-1999"
    assert queued_total(api) == 2000

    view = api.http.get(f"/v1/batches/{batch_id}").json()
    assert view["total"] == 2000 and view["counts"]["queued"] == 2000 and not view["done"]

    claims = api.queue.claim("test-engine", count=3, block_ms=2000)
    for claim in claims:
        api.queue.fail(claim, f"bad input for {claim.job_id}", retryable=False)
    page = api.http.get(f"/v1/batches/{batch_id}", params={"offset": 0, "limit": 2}).json()
    assert page["counts"]["failed"] == 3 and page["failures_total"] == 3
    assert len(page["failures"]) == 2 and page["next_offset"] == 2
    assert page["failures"][0]["error"].startswith("bad input for")
    last = api.http.get(f"/v1/batches/{batch_id}", params={"offset": 2, "limit": 2}).json()
    assert len(last["failures"]) == 1 and last["next_offset"] is None

    job = api.http.get(f"/v1/jobs/{batch_id}-1999").json()
    assert job["batch_id"] == batch_id and job["status"] == "queued"
    assert_error(api.http.get(f"/v1/batches/{batch_id}", params={"limit": 0}), 422, field="limit")


def test_idempotent_job_and_batch_resubmits(api):
    first = api.http.post("/v1/jobs", json={**T2A, "idempotency_key": "order-17"})
    again = api.http.post("/v1/jobs", json={**T2A, "idempotency_key": "order-17"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["job_id"] == again.json()["job_id"]

    body = {"jobs": [T2A, {**T2A, "seed": 3}]}
    headers = {"Idempotency-Key": "nightly-2024-05-01"}
    b1 = api.http.post("/v1/batches", json=body, headers=headers)
    b2 = api.http.post("/v1/batches", json=body, headers=headers)
    assert (b1.status_code, b2.status_code) == (201, 200)
    assert b1.json() == b2.json()
    assert queued_total(api) == 3
    conflict = api.http.post("/v1/batches", json={"jobs": [T2A]}, headers=headers)
    assert_error(conflict, 409, "conflict")


def test_cancel_queued_running_and_finished_jobs(api):
    queued = api.http.post("/v1/jobs", json=T2A).json()["job_id"]
    response = api.http.delete(f"/v1/jobs/{queued}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.http.delete(f"/v1/jobs/{queued}").status_code == 200  # idempotent
    assert api.http.get(f"/v1/jobs/{queued}").json()["status"] == "cancelled"

    running = api.http.post("/v1/jobs", json=T2A).json()["job_id"]
    (claim,) = api.queue.claim("test-engine", count=1, block_ms=2000)
    assert claim.job_id == running
    response = api.http.delete(f"/v1/jobs/{running}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    assert api.queue.is_cancel_requested(running)
    api.queue.ack_cancelled(claim)

    finished = api.http.post("/v1/jobs", json=T2A).json()["job_id"]
    finish(api, finished, wav_bytes())
    assert_error(api.http.delete(f"/v1/jobs/{finished}"), 409, "conflict")


def test_upload_is_decoded_stored_under_the_tenant_and_usable_as_input(api):
    audio = wav_bytes(0.5, rate=22050, channels=1)
    response = api.http.post("/v1/uploads", files={"file": ("src.wav", audio, "audio/wav")})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["uri"].startswith(f"s3://{api.storage.bucket}/acme/uploads/")
    assert (upload["sample_rate"], upload["channels"], upload["frames"]) == (22050, 1, 11025)
    key = upload["uri"].split("/", 3)[3]
    assert api.storage.get(key) == audio

    edit = {"task": "edit", "op": "remove", "prompt": "the hum", "input_audio_uri": upload["uri"]}
    job = api.http.post("/v1/jobs", json=edit)
    assert job.status_code == 201, job.text
    # What the engine will do with it: the input rules let this tenant read its own upload.
    inputs = input_resolver_from_settings(api.storage, tenant_rules=api.tenants.input_policy)
    assert inputs.read(upload["uri"], tenant="acme", max_bytes=1 << 20) == audio


def test_embedded_mode_serves_result_bytes_and_reads_only_own_files(redis_url, redis_prefix, tmp_path):
    """A local folder as storage (embedded mode): results come back as bytes, and a tenant may name
    files under its own prefix of that folder as inputs, nobody else's."""
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = LocalStorage(tmp_path / "out")
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    keys = {}
    for tenant in ("acme", "other"):
        tenants.create(tenant)
        keys[tenant] = tenants.issue_key(tenant)
    app = create_app(None, queue=queue, storage=storage, tenants=tenants)
    with serve_in_thread(app) as url:
        acme = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['acme']}"})
        other = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['other']}"})
        upload = acme.post("/v1/uploads", files={"file": ("src.wav", wav_bytes(), "audio/wav")}).json()
        assert upload["uri"].startswith((tmp_path / "out" / "acme" / "uploads").as_uri())
        edit = {"task": "edit", "op": "remove", "prompt": "the hum", "input_audio_uri": upload["uri"]}
        job = acme.post("/v1/jobs", json=edit)
        assert job.status_code == 201, job.text
        assert_error(other.post("/v1/jobs", json=edit), 403, "input_not_allowed", "input_audio_uri")
        outside = {**edit, "input_audio_uri": (tmp_path / "elsewhere.wav").as_uri()}
        assert_error(acme.post("/v1/jobs", json=outside), 403, "input_not_allowed", "input_audio_uri")

        audio = wav_bytes(0.3)
        finish(SimpleNamespace(queue=queue, storage=storage), job.json()["job_id"], audio)
        result = acme.get(f"/v1/jobs/{job.json()['job_id']}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "audio/wav"
        assert result.content == audio
        acme.close()
        other.close()
    queue.close()


def test_healthz_metrics_and_openapi(api):
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok", "redis": True}
    api.http.post("/v1/jobs", json=T2A)
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'audio_omni_api_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in metrics
    assert 'audio_omni_queue_depth{priority="normal"} 1.0' in metrics
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/batches", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/uploads"} <= set(
        spec["paths"]
    )
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()


# --------------------------------------------------------------------------- auth and bad input


def test_missing_wrong_and_revoked_keys_get_401(api):
    assert_error(httpx.post(f"{api.url}/v1/jobs", json=T2A), 401, "unauthorized")
    wrong = httpx.get(f"{api.url}/v1/jobs/abc", headers={"Authorization": "Bearer aok_not-a-key"})
    assert_error(wrong, 401, "unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{api.url}/v1/jobs/abc", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401)
    assert api.tenants.revoke("acme") == 1
    assert_error(api.http.post("/v1/jobs", json=T2A), 401, "unauthorized")
    assert queued_total(api) == 0


BAD_BODIES = [
    (b'{"task": "text_to_audio", "prompt": ', 400, "invalid_json", None),
    (b"[1, 2, 3]", 400, "invalid_body", None),
    (b"", 400, "invalid_body", None),
    (b'{"task": "text_to_audio", "prompt": "x", "steps": "ten"}', 422, "invalid_field", "steps"),
    (b'{"task": "text_to_audio", "prompt": "x", "duration_s": -1}', 422, "invalid_field", "duration_s"),
    (b'{"task": "make_coffee", "prompt": "x"}', 422, "invalid_field", "task"),
    (b'{"task": "text_to_audio"}', 422, "invalid_field", "prompt"),
    (b'{"task": "text_to_audio", "prompt": "x", "colour": "red"}', 422, "invalid_field", "colour"),
    (b'{"task": "text_to_audio", "prompt": "x", "batch_id": "b1"}', 422, "invalid_field", "batch_id"),
    (b'{"task": "text_to_audio", "prompt": "x", "steps": 1e308}', 422, "invalid_field", "steps"),
]


def test_bad_job_bodies_get_clear_4xx_and_nothing_is_queued(api):
    for body, status, code, field in BAD_BODIES:
        response = api.http.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert_error(response, status, code, field)
    as_text = api.http.post("/v1/jobs", content=b'{"task": "tts"}', headers={"Content-Type": "text/plain"})
    assert_error(as_text, 400, "invalid_body")
    bad_batch = api.http.post("/v1/batches", json={"jobs": [T2A, {"task": "tts"}, {**T2A, "steps": 0}]})
    error = assert_error(bad_batch, 422, "invalid_field", "jobs[1].transcript")
    assert {d["field"] for d in error["details"]} == {"jobs[1].transcript", "jobs[2].steps"}
    assert_error(api.http.post("/v1/batches", json={"jobs": []}), 422, field="jobs")
    assert queued_total(api) == 0
    assert api.http.get("/healthz").status_code == 200


def test_huge_bodies_get_413_and_the_server_stays_up(api):
    huge = b'{"task": "text_to_audio", "prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_error(
        api.http.post("/v1/jobs", content=huge, headers={"Content-Type": "application/json"}), 413, "too_large"
    )

    def chunked():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b"x" * 65536

    response = api.http.post("/v1/jobs", content=chunked(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "too_large")
    big_upload = api.http.post("/v1/uploads", files={"file": ("big.wav", wav_bytes(3.0))})
    assert_error(big_upload, 413, "too_large")
    too_many = {"jobs": [T2A] * 5001}
    assert_error(api.http.post("/v1/batches", json=too_many), 413, "too_large", "jobs")
    assert queued_total(api) == 0
    assert api.http.get("/healthz").status_code == 200
    assert api.http.post("/v1/jobs", json=T2A).status_code == 201


def _lying_wavs() -> dict[str, bytes]:
    good = wav_bytes(0.1)
    data_at = good.find(b"data")
    longer = bytearray(good)
    longer[data_at + 4 : data_at + 8] = (10_000_000).to_bytes(4, "little")  # claims 10 MB of samples
    channels = bytearray(good)
    channels[22:24] = (7).to_bytes(2, "little")  # 7 channels in a 2-channel block alignment
    riff = bytearray(good)
    riff[4:8] = (len(good) * 3).to_bytes(4, "little")
    flac = wav_bytes(0.5, fmt="FLAC")
    return {
        "data chunk longer than the file": bytes(longer),
        "channel count disagrees with block align": bytes(channels),
        "RIFF size disagrees with the file": bytes(riff),
        "truncated file": good[: len(good) // 2],
        "truncated FLAC": flac[: len(flac) * 2 // 3],
        "text": b"this is not audio at all " * 50,
        "PNG": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "empty": b"",
    }


def test_non_audio_and_lying_uploads_are_refused(api):
    for case, data in _lying_wavs().items():
        response = api.http.post("/v1/uploads", files={"file": ("x.wav", data, "audio/wav")})
        error = assert_error(response, 422, "invalid_audio", "file")
        assert error["message"].startswith("the uploaded file "), (case, error)
    assert not api.storage.client.list_objects_v2(Bucket=api.storage.bucket).get("Contents")


def test_upload_without_a_file_part_is_a_clear_4xx(api):
    assert_error(api.http.post("/v1/uploads", data={"other": "x"}), 422, field="file")
    response = api.http.post("/v1/uploads", content=b"raw", headers={"Content-Type": "application/octet-stream"})
    assert response.status_code in (400, 422), response.text
    assert "error" in response.json()


def test_unknown_ids_and_routes_are_404(api):
    assert_error(api.http.get("/v1/jobs/does-not-exist"), 404, "not_found")
    assert_error(api.http.get("/v1/jobs/..%2F..%2Fetc"), 404)
    assert_error(api.http.get("/v1/batches/nope"), 404, "not_found")
    assert_error(api.http.delete("/v1/jobs/nope"), 404, "not_found")
    assert_error(api.http.get("/v1/jobs/nope/result"), 404, "not_found")
    assert_error(api.http.get("/v2/whatever"), 404, "not_found")
    assert_error(api.http.put("/v1/jobs", json=T2A), 405, "method_not_allowed")


# --------------------------------------------------------------------------- tenant limits


def test_tenant_duration_and_steps_limits(api):
    api.tenants.update("acme", limits=TenantLimits(max_duration_s=30.0, max_steps=50))
    long = api.http.post("/v1/jobs", json={**T2A, "duration_s": 60.0})
    assert_error(long, 422, "limit_exceeded", "duration_s")
    steps = api.http.post("/v1/batches", json={"jobs": [{**T2A, "steps": 10}, {**T2A, "steps": 51}, T2A]})
    error = assert_error(steps, 422, "limit_exceeded", "jobs[1].steps")
    assert [d["field"] for d in error["details"]] == ["jobs[1].steps", "jobs[2].steps"]
    assert api.http.post("/v1/jobs", json={**T2A, "duration_s": 30.0, "steps": 50}).status_code == 201
    assert queued_total(api) == 1


def test_rate_limit_gives_429_with_retry_after(api):
    api.tenants.update("acme", limits=TenantLimits(submissions_per_minute=3))
    statuses = [api.http.post("/v1/jobs", json=T2A).status_code for _ in range(3)]
    assert statuses == [201, 201, 201]
    limited = api.http.post("/v1/jobs", json=T2A)
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert_error(api.http.post("/v1/batches", json={"jobs": [T2A]}), 429, "rate_limited")
    assert queued_total(api) == 3


def test_in_flight_quota_gives_429_and_frees_up_as_jobs_finish(api):
    api.tenants.update("acme", limits=TenantLimits(max_in_flight=3))
    ids = [api.http.post("/v1/jobs", json=T2A).json()["job_id"] for _ in range(3)]
    full = api.http.post("/v1/jobs", json=T2A)
    assert_error(full, 429, "quota_exceeded")
    assert int(full.headers["retry-after"]) >= 1
    assert_error(api.http.post("/v1/batches", json={"jobs": [T2A] * 4}), 413, "too_large", "jobs")

    api.http.delete(f"/v1/jobs/{ids[0]}")  # a finished (cancelled) job no longer counts
    assert api.http.post("/v1/jobs", json=T2A).status_code == 201
    assert_error(api.http.post("/v1/jobs", json=T2A), 429, "quota_exceeded")
    assert queued_total(api) == 3


def test_audio_omni_api_command_serves_from_the_environment(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    """`audio-omni api --port N` reads REDIS_URL and the S3 settings from the environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tenants = TenantStore(redis_url, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": redis_prefix,
        "S3_BUCKET": s3_bucket,
        "S3_ENDPOINT_URL": s3_endpoint,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
    }
    launcher = (
        "import argparse, sys; from orchestrator.commands import api; p = argparse.ArgumentParser(); "
        "api.add_arguments(p, 'api'); sys.exit(api.run(p.parse_args(sys.argv[1:])))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)
        with Client(url, key) as client:
            job = client.submit(T2A)
            assert client.status(job.job_id).status == "queued"
            assert client.upload(wav_bytes()).uri.startswith(f"s3://{s3_bucket}/acme/uploads/")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        tenants.close()
