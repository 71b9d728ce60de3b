"""The engine reads a job's inputs with the same rules and the same decoder the API admits them by
(real Redis, S3 endpoint): one `InputResolver`, one `audio_io`."""

from __future__ import annotations

import io
import struct

import boto3
import numpy as np
import pytest
import soundfile as sf

from model.config import get_preset
from orchestrator.audio_io import BadAudio, probe_audio
from orchestrator.errors import PermanentError
from orchestrator.jobs import JobSpec
from orchestrator.model_inputs import InputLimits, load_inputs
from orchestrator.storage import InputNotAllowed, InputPolicy, InputResolver, S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = pytest.mark.integration

RATE = 44100


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(RATE) / RATE * 2 * np.pi * 440).astype(np.float32), RATE, format="WAV")
    return buf.getvalue()


@pytest.fixture()
def own_bucket(s3_endpoint, s3_bucket):
    """A second bucket that only tenant-b's own rule names, holding `tenant-b/in.wav` and `tenant-a/in.wav`."""
    name = f"{s3_bucket}-own"[:63]
    boto = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    boto.create_bucket(Bucket=name)
    for tenant in ("tenant-a", "tenant-b"):
        boto.put_object(Bucket=name, Key=f"{tenant}/in.wav", Body=_wav())
    yield name
    for obj in boto.list_objects_v2(Bucket=name).get("Contents", []):
        boto.delete_object(Bucket=name, Key=obj["Key"])
    boto.delete_bucket(Bucket=name)


def _edit(tenant: str, uri: str) -> JobSpec:
    return JobSpec.model_validate(
        {"task": "edit", "op": "remove", "prompt": "tone", "input_audio_uri": uri, "tenant": tenant}
    )


def _load(spec: JobSpec, inputs: InputResolver):
    return load_inputs(spec, seed=1, tenant=spec.tenant, inputs=inputs, config=CONFIG, limits=InputLimits()).inputs


CONFIG = get_preset("tiny")


def test_a_tenants_own_input_bucket_is_read_for_it_and_nobody_else(
    redis_url, redis_prefix, s3_endpoint, s3_bucket, own_bucket
):
    tenants = TenantStore(redis_url, prefix=redis_prefix)
    tenants.create("tenant-a")
    tenants.create("tenant-b", TenantLimits(allowed_input_s3=(f"s3://{own_bucket}/{{tenant}}/",)))
    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client)
    inputs = InputResolver(storage, InputPolicy(), tenant_rules=tenants.input_policy, s3_client=client)

    b = _edit("tenant-b", f"s3://{own_bucket}/tenant-b/in.wav")
    x = _load(b, inputs)
    assert x.audio is not None and x.audio.shape == (CONFIG.sample_rate,)
    assert float(x.audio.abs().max()) > 0.09
    # Without the tenant's rules the deployment policy alone refuses it.
    with pytest.raises(InputNotAllowed):
        _load(b, InputResolver(storage, InputPolicy(), s3_client=client))
    # Tenant B's rule names its own folder only; tenant A has no rule for that bucket at all.
    with pytest.raises(InputNotAllowed):
        _load(_edit("tenant-b", f"s3://{own_bucket}/tenant-a/in.wav"), inputs)
    a = _edit("tenant-a", f"s3://{own_bucket}/tenant-a/in.wav")
    assert tenants.input_policy("tenant-a") is None and tenants.input_policy("nobody") is None
    with pytest.raises(InputNotAllowed):
        _load(a, inputs)
    # Inputs the deployment's own policy allows never cost a tenant lookup.
    looked_up: list[str] = []

    def counting(tenant_id: str):
        looked_up.append(tenant_id)
        return tenants.input_policy(tenant_id)

    open_inputs = InputResolver(storage, InputPolicy([f"s3://{own_bucket}/"]), tenant_rules=counting, s3_client=client)
    _load(a, open_inputs)
    assert looked_up == []
    tenants.close()


def _riff(fmt: bytes, data: bytes, *, riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def _fmt(bits: int, *, channels: int = 1, rate: int = 16000) -> bytes:
    block = channels * ((bits + 7) // 8)
    return struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)


_PCM16 = (np.sin(np.arange(1600) / 5) * 8000).astype("<i2").tobytes()
HOSTILE = {
    "7-bit PCM": _riff(_fmt(7), _PCM16[:1600]),
    "RIFF size lies": _riff(_fmt(16), _PCM16, riff_size=10_000_000),
    "data chunk longer than the file": _riff(_fmt(16), _PCM16)[:-1000],
    "not audio at all": b"this is not a sound file" * 10,
    "empty": b"",
    "zero channels": _riff(_fmt(16, channels=0), _PCM16),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_read_as_an_s3_input_gets_the_upload_routes_answer(name, s3_endpoint, s3_bucket):
    """The engine decodes with `audio_io`, as the upload route probes: same refusal, same message."""
    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client)
    key = f"acme/uploads/{name.replace(' ', '-')}.wav"
    if HOSTILE[name]:
        storage.put(key, HOSTILE[name])
    else:  # S3 takes an empty object as well; write it around the checksum path
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"")
    inputs = InputResolver(storage, InputPolicy(), s3_client=client)
    with pytest.raises(BadAudio) as at_the_door:
        probe_audio(HOSTILE[name], max_duration_s=InputLimits().max_audio_s, what="input audio")
    with pytest.raises(PermanentError) as in_the_engine:
        _load(_edit("acme", storage.uri(key)), inputs)
    assert str(in_the_engine.value) == str(at_the_door.value)
    assert " object at 0x" not in str(in_the_engine.value) and "BytesIO" not in str(in_the_engine.value)
