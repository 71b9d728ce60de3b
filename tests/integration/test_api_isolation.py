"""Tenant isolation over real HTTP: tenant B can neither see, cancel nor fetch tenant A's work, nor
name A's inputs (or any location not allowed to B) as its own; unsafe URIs are always refused."""

from __future__ import annotations

import io

import boto3
import httpx
import numpy as np
import pytest
import soundfile as sf

from orchestrator.api import create_app, serve_in_thread
from orchestrator.queue import JobQueue
from orchestrator.storage import S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = pytest.mark.integration

T2A = {"task": "text_to_audio", "prompt": "rain on a tin roof"}


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(4410, dtype=np.float32), 44100, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def edit_from(uri: str) -> dict:
    return {"task": "edit", "op": "add", "prompt": "birdsong", "input_audio_uri": uri}


@pytest.fixture()
def world(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    """One API, two tenants. B may also read `s3://{shared}/{tenant}/` (its own folder there)."""
    shared = f"{s3_bucket}-shared"[:63]
    boto = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    boto.create_bucket(Bucket=shared)
    queue = JobQueue(redis_url, prefix=redis_prefix)
    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("tenant-a")
    tenants.create("tenant-b", TenantLimits(allowed_input_s3=(f"s3://{shared}/{{tenant}}/",)))
    keys = {t: tenants.issue_key(t) for t in ("tenant-a", "tenant-b")}
    app = create_app(None, queue=queue, storage=storage, tenants=tenants)
    with serve_in_thread(app) as url:
        a = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['tenant-a']}"})
        b = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['tenant-b']}"})
        yield a, b, queue, storage, shared
        a.close()
        b.close()
    for obj in boto.list_objects_v2(Bucket=shared).get("Contents", []):
        boto.delete_object(Bucket=shared, Key=obj["Key"])
    boto.delete_bucket(Bucket=shared)
    queue.close()


def assert_refused(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error


def test_b_gets_404_for_a_jobs_batches_and_results_and_cannot_cancel(world):
    a, b, queue, storage, _ = world
    job_id = a.post("/v1/jobs", json=T2A).json()["job_id"]
    batch_id = a.post("/v1/batches", json={"jobs": [T2A, T2A]}).json()["batch_id"]

    # A's job runs to a result, so that B's request for it would have something to leak.
    (claim,) = queue.claim("test-engine", count=1, block_ms=2000)
    assert claim.job_id == job_id
    loc = storage.put_result(tenant="tenant-a", job_id=job_id, metadata={}, data=wav_bytes())
    queue.ack_success(claim, loc.result_uri, extra={"metadata_uri": loc.metadata_uri})
    assert a.get(f"/v1/jobs/{job_id}/result").status_code == 200

    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/result",
        f"/v1/batches/{batch_id}",
        f"/v1/jobs/{batch_id}-0",
    ):
        response = b.get(path)
        assert_refused(response, 404)
        assert "tenant-a" not in response.text  # nothing about the owner leaks
    assert_refused(b.delete(f"/v1/jobs/{batch_id}-1"), 404)
    assert a.get(f"/v1/jobs/{batch_id}-1").json()["status"] == "queued"  # B's cancel did nothing
    assert a.get(f"/v1/batches/{batch_id}").json()["counts"]["queued"] == 2


def test_b_cannot_name_a_inputs_or_unallowed_buckets(world):
    a, b, queue, storage, shared = world
    upload = a.post("/v1/uploads", files={"file": ("a.wav", wav_bytes())}).json()
    a_uri = upload["uri"]
    assert a.post("/v1/jobs", json=edit_from(a_uri)).status_code == 201  # A may use its own upload
    depth = sum(queue.queue_depths().values())

    refused = [
        a_uri,  # A's upload, in A's prefix of the results bucket
        f"s3://{storage.bucket}/tenant-a/anything.wav",
        f"s3://{shared}/tenant-a/x.wav",  # the shared bucket, but A's folder
        f"s3://{shared}/x.wav",  # the shared bucket outside B's folder
        "s3://some-other-bucket/tenant-b/x.wav",  # a bucket not allowed at all
        "s3://169.254.169.254/latest/meta-data",  # link-local metadata service as a "bucket"
        "file:///etc/passwd",
    ]
    for uri in refused:
        assert_refused(b.post("/v1/jobs", json=edit_from(uri)), 403, "input_audio_uri")
    rejected_by_schema = [
        "http://169.254.169.254/latest/meta-data",
        "https://example.com/a.wav",
        f"s3://{storage.bucket}/tenant-b/../tenant-a/x.wav",
        "gopher://x/y",
    ]
    for uri in rejected_by_schema:
        assert_refused(b.post("/v1/jobs", json=edit_from(uri)), 422, "input_audio_uri")
    batch = b.post("/v1/batches", json={"jobs": [T2A, edit_from(a_uri)]})
    assert_refused(batch, 403, "jobs[1].input_audio_uri")
    assert sum(queue.queue_depths().values()) == depth  # nothing refused was queued

    # B's own locations work: its uploads and its folder of the shared bucket.
    own = b.post("/v1/uploads", files={"file": ("b.wav", wav_bytes())}).json()["uri"]
    assert own.startswith(f"s3://{storage.bucket}/tenant-b/")
    assert b.post("/v1/jobs", json=edit_from(own)).status_code == 201
    assert b.post("/v1/jobs", json=edit_from(f"s3://{shared}/tenant-b/in.wav")).status_code == 201
    assert_refused(a.post("/v1/jobs", json=edit_from(own)), 403, "input_audio_uri")


def test_b_cannot_submit_as_a(world):
    a, b, queue, _, _ = world
    assert_refused(b.post("/v1/jobs", json={**T2A, "tenant": "tenant-a"}), 403, "tenant")
    assert_refused(b.post("/v1/batches", json={"jobs": [{**T2A, "tenant": "tenant-a"}]}), 403, "jobs[0].tenant")
    assert sum(queue.queue_depths().values()) == 0
    # Naming itself is fine; the job is B's.
    job = b.post("/v1/jobs", json={**T2A, "tenant": "tenant-b"}).json()
    assert queue.get(job["job_id"]).tenant == "tenant-b"
    assert_refused(a.get(f"/v1/jobs/{job['job_id']}"), 404)


def test_idempotency_keys_and_batch_keys_do_not_cross_tenants(world):
    a, b, _, _, _ = world
    ja = a.post("/v1/jobs", json={**T2A, "idempotency_key": "k1"}).json()
    jb = b.post("/v1/jobs", json={**T2A, "idempotency_key": "k1"})
    assert jb.status_code == 201 and jb.json()["job_id"] != ja["job_id"]
    headers = {"Idempotency-Key": "same"}
    ba = a.post("/v1/batches", json={"jobs": [T2A]}, headers=headers).json()
    bb = b.post("/v1/batches", json={"jobs": [T2A]}, headers=headers)
    assert bb.status_code == 201 and bb.json()["batch_id"] != ba["batch_id"]
