"""Building the storage and the input resolver from settings (service or embedded mode)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from orchestrator.storage.base import MiB, Storage
from orchestrator.storage.inputs import InputPolicy, InputResolver, TenantRules
from orchestrator.storage.local import LocalStorage
from orchestrator.storage.s3 import S3Client, S3Storage, make_s3_client

__all__ = ["input_resolver_from_settings", "storage_from_settings"]


def _client_args(
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    addressing_style: str,
    max_attempts: int,
) -> dict[str, Any]:
    """The `make_s3_client` arguments both builders below take from the same settings."""
    return {
        "endpoint_url": endpoint_url,
        "region": region,
        "access_key_id": access_key_id,
        "secret_access_key": secret_access_key,
        "session_token": session_token,
        "addressing_style": addressing_style,
        "max_attempts": max_attempts,
    }


def storage_from_settings(
    *,
    bucket: str | None = None,
    local_root: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
    public_endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    prefix: str = "",
    addressing_style: str = "auto",
    input_root: str | os.PathLike[str] | None = None,
    allowed_input_s3: Sequence[str] = (),
    multipart_threshold_bytes: int = 64 * MiB,
    multipart_chunk_bytes: int = 16 * MiB,
    max_concurrency: int = 4,
    max_attempts: int = 5,
) -> Storage:
    """Build the storage for service mode (`bucket`) or embedded mode (`local_root`); give exactly one.

    - `bucket`: results go to this S3 bucket (service mode).
    - `local_root`: results go under this folder (embedded mode); local inputs become possible.
    - `endpoint_url`: S3-compatible endpoint (None = AWS); `public_endpoint_url`: the address to
      put in presigned URLs when clients reach S3 differently from this process.
    - `region`, `access_key_id`, `secret_access_key`, `session_token`: S3 credentials; None uses
      boto3's default chain (environment, profile, instance role).
    - `prefix`: key prefix prepended to every result key, e.g. `audio-omni/`.
    - `addressing_style`: `auto`, `path` (MinIO, moto, most self-hosted) or `virtual`.
    - `input_root`, `allowed_input_s3`: input rules, used by `input_resolver_from_settings`
      (validated here too, so a bad setting fails at start-up whichever is built first).
    - `multipart_threshold_bytes`, `multipart_chunk_bytes`, `max_concurrency`: upload tuning.
    - `max_attempts`: botocore's retry budget per request (standard mode).
    """
    if (bucket is None) == (local_root is None):
        raise ValueError(
            f"give exactly one of bucket ({bucket!r}) for S3 or local_root ({local_root!r}) for embedded mode"
        )
    embedded = local_root is not None
    if input_root is not None and not embedded:
        raise ValueError(f"input_root {input_root!r} is invalid in service mode: local inputs need local_root")
    InputPolicy(allowed_input_s3, input_root=input_root, embedded=embedded)  # validate the rules
    client_args = _client_args(
        endpoint_url, region, access_key_id, secret_access_key, session_token, addressing_style, max_attempts
    )
    if local_root is not None:
        return LocalStorage(local_root, prefix=prefix)
    assert bucket is not None  # exactly one of the two, checked above
    client = make_s3_client(**client_args)
    presign_client = None
    if public_endpoint_url is not None and public_endpoint_url != endpoint_url:
        presign_client = make_s3_client(**{**client_args, "endpoint_url": public_endpoint_url})
    return S3Storage(
        bucket,
        client=client,
        prefix=prefix,
        multipart_threshold_bytes=multipart_threshold_bytes,
        multipart_chunk_bytes=multipart_chunk_bytes,
        max_concurrency=max_concurrency,
        presign_client=presign_client,
    )


def input_resolver_from_settings(
    storage: Storage,
    *,
    tenant_rules: TenantRules | None = None,
    input_root: str | os.PathLike[str] | None = None,
    allowed_input_s3: Sequence[str] = (),
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    addressing_style: str = "auto",
    max_attempts: int = 5,
    **_storage_only: object,
) -> InputResolver:
    """The one `InputResolver` of a process, from the same keyword arguments as
    `storage_from_settings` (`Settings.storage_kwargs`; the storage-only ones are ignored).

    Embedded mode (a `LocalStorage`) allows local inputs under `input_root`; it reads `s3://`
    inputs only when `allowed_input_s3` is set (then with a client of its own). Service mode reads
    them with the storage's client. `tenant_rules`: tenant id -> that tenant's own input rules.
    """
    embedded = isinstance(storage, LocalStorage)
    policy = InputPolicy(allowed_input_s3, input_root=input_root, embedded=embedded)
    s3_client: S3Client | None = None
    if isinstance(storage, S3Storage):
        s3_client = storage.client
    elif allowed_input_s3:
        s3_client = make_s3_client(
            **_client_args(
                endpoint_url, region, access_key_id, secret_access_key, session_token, addressing_style, max_attempts
            )
        )
    return InputResolver(storage, policy, tenant_rules=tenant_rules, s3_client=s3_client)
