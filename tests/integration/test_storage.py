"""S3Storage against a real S3 endpoint (moto's server over HTTP, through boto3 as in production)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.request

import boto3
import pytest

from orchestrator.storage import (
    MIN_PART_BYTES,
    ChecksumMismatch,
    InputNotAllowed,
    InputNotFound,
    InputPolicy,
    InputResolver,
    InputTooLarge,
    ObjectNotFound,
    RetryableError,
    S3Storage,
    StorageError,
    StorageUnavailable,
    input_resolver_from_settings,
    make_s3_client,
    storage_from_settings,
)

pytestmark = pytest.mark.integration

WAV = b"RIFF" + os.urandom(4096)


def _client(endpoint: str, **kwargs):
    return make_s3_client(
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        addressing_style="path",
        **kwargs,
    )


@pytest.fixture()
def raw(s3_endpoint):
    """A plain boto3 client, to look at (and tamper with) objects behind the storage's back."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture()
def store(s3_endpoint, s3_bucket) -> S3Storage:
    return S3Storage(
        s3_bucket,
        client=_client(s3_endpoint),
        prefix="results/",
        multipart_threshold_bytes=MIN_PART_BYTES,
        multipart_chunk_bytes=MIN_PART_BYTES,
        max_concurrency=2,
    )


@pytest.fixture()
def inputs(store: S3Storage, s3_bucket) -> InputResolver:
    """The input rules of a service: the tenant's own upload folder, plus its own results."""
    policy = InputPolicy([f"s3://{s3_bucket}/uploads/{{tenant}}/"])
    return InputResolver(store, policy, s3_client=store.client)


def _keys(raw, bucket: str) -> list[str]:
    return sorted(obj["Key"] for obj in raw.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_round_trip_with_checksum_and_content_type(store: S3Storage, raw, s3_bucket):
    key = store.result_key("acme", "j1", "flac")
    assert key == "results/acme/j1/j1.flac"
    assert not store.exists(key)
    assert store.head(key) is None
    info = store.put(key, WAV)
    assert store.exists(key)
    assert store.get(key) == WAV
    stored = raw.head_object(Bucket=s3_bucket, Key=key)
    assert stored["ContentType"] == "audio/flac"
    assert stored["Metadata"]["sha256"] == hashlib.sha256(WAV).hexdigest() == info.sha256
    head = store.head(key)
    assert (head.size_bytes, head.content_type, head.sha256) == (len(WAV), "audio/flac", info.sha256)
    assert store.uri(key) == f"s3://{s3_bucket}/results/acme/j1/j1.flac"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # absent: no error
    with pytest.raises(ObjectNotFound, match=r"j1\.flac"):
        store.get(key)


def test_multipart_above_threshold(store: S3Storage, raw, s3_bucket):
    data = os.urandom(MIN_PART_BYTES + MIN_PART_BYTES // 5)  # 6 MiB: two parts of 5 MiB + 1 MiB
    key = store.result_key("acme", "big", "wav", batch_id="b1")
    info = store.put(key, data)
    head = store.head(key)
    # S3's ETag of a multipart object is '<md5 of part md5s>-<parts>'.
    assert head.etag.endswith("-2"), head.etag
    assert head.sha256 == info.sha256 == hashlib.sha256(data).hexdigest()
    assert raw.head_object(Bucket=s3_bucket, Key=key)["ContentType"] == "audio/wav"
    assert store.get(key) == data
    small = store.result_key("acme", "small", "wav")
    store.put(small, WAV)
    assert "-" not in store.head(small).etag  # below the threshold: one PUT


def test_tampered_object_is_detected_on_read(store: S3Storage, inputs: InputResolver, raw, s3_bucket):
    key = store.result_key("acme", "j2", "wav")
    store.put(key, WAV)
    recorded = raw.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
    # Overwrite the bytes but keep the recorded checksum, as silent corruption would.
    raw.put_object(Bucket=s3_bucket, Key=key, Body=b"RIFF-tampered", Metadata=recorded)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch for s3://") as caught:
        store.get(key)
    assert caught.value.expected == hashlib.sha256(WAV).hexdigest()
    assert store.get(key, verify=False) == b"RIFF-tampered"
    with pytest.raises(ChecksumMismatch):
        inputs.read(store.uri(key), tenant="acme", max_bytes=1 << 20)


def test_presigned_url_serves_the_bytes(store: S3Storage):
    key = store.result_key("acme", "j3", "wav")
    store.put(key, WAV)
    url = store.url(key, expires_s=60)
    assert "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == WAV
        assert response.headers["Content-Type"] == "audio/wav"
    with pytest.raises(ValueError, match="expires_s 0 is invalid"):
        store.url(key, expires_s=0)


def test_put_result_is_deterministic_and_idempotent(store: S3Storage, raw, s3_bucket):
    meta = {"task": "text_to_audio", "seed": 11, "timings_s": {"sample": 1.5}}
    first = store.put_result(tenant="acme", job_id="j4", batch_id="b9", data=WAV, ext="wav", metadata=meta)
    assert first.result_key == "results/acme/b9/j4.wav"
    assert first.metadata_key == "results/acme/b9/j4.json"
    assert first.result_uri == f"s3://{s3_bucket}/results/acme/b9/j4.wav"
    # The replay after a crash before the ack: same keys, same bytes, still one object each.
    second = store.put_result(tenant="acme", job_id="j4", batch_id="b9", data=WAV, ext="wav", metadata=meta)
    assert second == first
    assert _keys(raw, s3_bucket) == ["results/acme/b9/j4.json", "results/acme/b9/j4.wav"]
    assert store.get(first.result_key) == WAV
    document = json.loads(store.get(first.metadata_key))
    assert document["seed"] == 11
    assert document["result_object"]["sha256"] == hashlib.sha256(WAV).hexdigest()
    assert document["result_object"]["key"] == first.result_key
    assert store.head(first.metadata_key).content_type == "application/json"


def test_input_policy_against_real_objects(store: S3Storage, inputs: InputResolver, raw, s3_bucket):
    for key in ("uploads/acme/in.wav", "uploads/globex/in.wav"):
        raw.put_object(Bucket=s3_bucket, Key=key, Body=WAV)
    own = store.put_result(tenant="acme", job_id="j5", data=WAV, metadata={})
    limit = 1 << 20
    assert inputs.read(f"s3://{s3_bucket}/uploads/acme/in.wav", tenant="acme", max_bytes=limit) == WAV
    # A tenant may read back its own results (editing a generated clip).
    assert inputs.read(own.result_uri, tenant="acme", max_bytes=limit) == WAV
    refused = [
        f"s3://{s3_bucket}/uploads/globex/in.wav",  # another tenant's uploads, object exists
        own.result_uri.replace("/acme/", "/globex/"),  # another tenant's results
        "s3://another-bucket/uploads/acme/in.wav",  # a bucket no rule names
        f"s3://{s3_bucket}/uploads/acme/../globex/in.wav",
    ]
    for uri in refused:
        with pytest.raises(InputNotAllowed, match="refused"):
            inputs.read(uri, tenant="acme", max_bytes=limit)
    with pytest.raises(InputNotAllowed, match="tenant 'globex' may read"):
        inputs.read(f"s3://{s3_bucket}/uploads/acme/in.wav", tenant="globex", max_bytes=limit)


def test_input_size_limit_and_missing_object(inputs: InputResolver, raw, s3_bucket):
    raw.put_object(Bucket=s3_bucket, Key="uploads/acme/big.wav", Body=WAV)
    uri = f"s3://{s3_bucket}/uploads/acme/big.wav"
    with pytest.raises(InputTooLarge, match=rf"is {len(WAV)} bytes, over the limit of 1000 bytes"):
        inputs.read(uri, tenant="acme", max_bytes=1000)
    assert inputs.read(uri, tenant="acme", max_bytes=len(WAV)) == WAV
    missing = f"s3://{s3_bucket}/uploads/acme/none.wav"
    with pytest.raises(InputNotFound, match="input not found") as caught:
        inputs.read(missing, tenant="acme", max_bytes=1000)
    assert caught.value.uri == missing


def test_unreachable_endpoint_is_retryable():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = _client(f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout_s=1, read_timeout_s=1)
    store = S3Storage("results", client=client)
    inputs = InputResolver(store, InputPolicy(), s3_client=client)
    with pytest.raises(StorageUnavailable, match="transient") as caught:
        inputs.read("s3://results/acme/j/j.wav", tenant="acme", max_bytes=10)
    assert isinstance(caught.value, RetryableError)
    with pytest.raises(StorageUnavailable):
        store.put("acme/j/j.wav", b"x")


def test_missing_bucket_is_permanent(s3_endpoint):
    store = S3Storage("no-such-bucket-here", client=_client(s3_endpoint))
    with pytest.raises(StorageError, match="NoSuchBucket") as caught:
        store.put("acme/j/j.wav", b"x")
    assert not isinstance(caught.value, RetryableError)


def test_factory_builds_working_s3_storage(s3_endpoint, s3_bucket, raw):
    store = storage_from_settings(
        bucket=s3_bucket,
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        addressing_style="path",
        prefix="svc",
        allowed_input_s3=[f"s3://{s3_bucket}/in/{{tenant}}/"],
    )
    assert isinstance(store, S3Storage)
    loc = store.put_result(tenant="acme", job_id="j6", data=WAV, ext="flac", metadata={"seed": 1})
    assert loc.result_key == "svc/acme/j6/j6.flac"
    assert raw.get_object(Bucket=s3_bucket, Key=loc.result_key)["Body"].read() == WAV
    raw.put_object(Bucket=s3_bucket, Key="in/acme/x.wav", Body=b"abc")
    inputs = input_resolver_from_settings(
        store, bucket=s3_bucket, prefix="svc", allowed_input_s3=[f"s3://{s3_bucket}/in/{{tenant}}/"]
    )
    assert inputs.s3_client is store.client  # service mode reads inputs with the storage's client
    assert inputs.read(f"s3://{s3_bucket}/in/acme/x.wav", tenant="acme", max_bytes=3) == b"abc"
    assert inputs.read(loc.result_uri, tenant="acme", max_bytes=len(WAV)) == WAV


def test_key_of_inverts_uri_for_own_objects_only(store: S3Storage, s3_bucket):
    key = store.result_key("acme", "j7", "wav")
    assert store.key_of(store.uri(key)) == key
    assert store.key_of(f"s3://{s3_bucket}/uploads/acme/in.wav") == "uploads/acme/in.wav"
    for uri in (
        f"s3://other-{s3_bucket}/{key}",
        f"s3://{s3_bucket}/",
        f"s3://{s3_bucket}/results/acme/../globex/x.wav",
        f"s3://{s3_bucket}/results//x.wav",
        f"s3:/{s3_bucket}/{key}",
        f"file:///{s3_bucket}/{key}",
    ):
        assert store.key_of(uri) is None, uri
