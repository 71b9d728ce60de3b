"""The engine reads a job's inputs with the same rules the API admitted them by (real Redis, S3 endpoint)."""

from __future__ import annotations

import io

import boto3
import numpy as np
import pytest
import soundfile as sf

from orchestrator.engine import EngineSettings, spec_to_inputs
from orchestrator.jobs import JobSpec
from orchestrator.sources import ClaimedJob
from orchestrator.storage import InputNotAllowed, InputPolicy, S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

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


def test_a_tenants_own_input_bucket_is_read_for_it_and_nobody_else(
    redis_url, redis_prefix, s3_endpoint, s3_bucket, own_bucket
):
    tenants = TenantStore(redis_url, prefix=redis_prefix)
    tenants.create("tenant-a")
    tenants.create("tenant-b", TenantLimits(allowed_input_s3=(f"s3://{own_bucket}/{{tenant}}/",)))
    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client, policy=InputPolicy())
    settings = EngineSettings()

    def job(tenant: str, key: str) -> ClaimedJob:
        spec = JobSpec.model_validate(
            {
                "task": "edit",
                "op": "remove",
                "prompt": "tone",
                "input_audio_uri": f"s3://{own_bucket}/{key}",
                "tenant": tenant,
            }
        )
        return ClaimedJob("j-" + tenant, spec)

    b = job("tenant-b", "tenant-b/in.wav")
    x = spec_to_inputs(b.spec, b, storage, settings, tenants.input_policy)
    assert x.audio.shape == (RATE,) and float(x.audio.abs().max()) > 0.09
    # Without the tenant's rules (the old behaviour) the deployment policy alone refuses it.
    with pytest.raises(InputNotAllowed):
        spec_to_inputs(b.spec, b, storage, settings)
    # Tenant B's rule names its own folder only; tenant A has no rule for that bucket at all.
    other = job("tenant-b", "tenant-a/in.wav")
    with pytest.raises(InputNotAllowed):
        spec_to_inputs(other.spec, other, storage, settings, tenants.input_policy)
    a = job("tenant-a", "tenant-a/in.wav")
    assert tenants.input_policy("tenant-a") is None and tenants.input_policy("nobody") is None
    with pytest.raises(InputNotAllowed):
        spec_to_inputs(a.spec, a, storage, settings, tenants.input_policy)
    # Inputs the deployment's own policy allows never cost a tenant lookup.
    storage_open = S3Storage(s3_bucket, client=client, policy=InputPolicy([f"s3://{own_bucket}/"]))
    looked_up: list[str] = []

    def counting(tenant_id: str):
        looked_up.append(tenant_id)
        return tenants.input_policy(tenant_id)

    spec_to_inputs(a.spec, a, storage_open, settings, counting)
    assert looked_up == []
    tenants.close()
