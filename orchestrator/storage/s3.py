"""S3 (and S3-compatible) storage: `S3Storage`, the client factory and the error mapping."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any, Protocol

from orchestrator.storage.base import (
    BUCKET_RE,
    MAX_PART_BYTES,
    MAX_PRESIGN_EXPIRY_S,
    MIN_PART_BYTES,
    READ_CHUNK,
    SHA256_META,
    Data,
    MiB,
    ObjectInfo,
    Storage,
    check_sha256,
    content_type_for,
    hash_data,
    int_in_range,
    normalize_prefix,
    validate_key,
)
from orchestrator.storage.errors import InputTooLarge, ObjectNotFound, StorageError, StorageUnavailable

__all__ = ["S3Client", "S3Storage", "make_s3_client", "read_s3_object"]


class S3Client(Protocol):
    """The calls this package makes on a boto3 S3 client (keyword arguments as boto3 takes them)."""

    def head_object(self, **kwargs: Any) -> Any: ...

    def get_object(self, **kwargs: Any) -> Any: ...

    def put_object(self, **kwargs: Any) -> Any: ...

    def delete_object(self, **kwargs: Any) -> Any: ...

    def upload_fileobj(self, fileobj: Any, bucket: str, key: str, **kwargs: Any) -> Any: ...

    def generate_presigned_url(self, method: str, **kwargs: Any) -> str: ...


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    addressing_style: str = "auto",
    max_attempts: int = 5,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_pool_connections: int = 16,
) -> S3Client:
    """A boto3 S3 client that works against AWS and S3-compatible endpoints (MinIO, Ceph, R2, moto).

    Credentials left as None come from boto3's usual chain (environment, profile, instance role).
    `addressing_style` is `auto`, `path` (most self-hosted endpoints) or `virtual`.
    """
    import boto3
    from botocore.config import Config

    if addressing_style not in ("auto", "path", "virtual"):
        raise ValueError(f"addressing_style {addressing_style!r} is invalid: expected 'auto', 'path' or 'virtual'")
    if (access_key_id is None) != (secret_access_key is None):
        raise ValueError("access_key_id and secret_access_key must be given together (or both left out)")
    int_in_range("max_attempts", max_attempts, 1, 20)
    int_in_range("max_pool_connections", max_pool_connections, 1, 1024)
    for name, value in (("connect_timeout_s", connect_timeout_s), ("read_timeout_s", read_timeout_s)):
        if not isinstance(value, int | float) or not 0 < value <= 3600:
            raise ValueError(f"{name} {value!r} is invalid: expected seconds in (0, 3600]")
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": addressing_style},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
        # Newer botocore adds CRC checksums to every request and expects them back; many
        # S3-compatible endpoints reject or omit them. Only send/verify them where S3 requires it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region,
    )
    client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
    return client


def _s3_failure(exc: Exception, what: str) -> Exception:
    """Map a botocore exception to ours: not found, transient (retry) or permanent."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        IncompleteReadError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("404", "NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
            return ObjectNotFound(what)
        if status >= 500 or status in (408, 429) or code in _RETRYABLE_S3_CODES:
            return StorageUnavailable(f"S3 {code or status} on {what} (transient): {error.get('Message', '')}")
        return StorageError(f"S3 {code or status} on {what}: {error.get('Message', '')}")
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return StorageUnavailable(f"S3 connection failed on {what} (transient): {exc}")
    return StorageError(f"S3 failed on {what}: {exc}")


_RETRYABLE_S3_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "OperationAborted",
    }
)


def _s3_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def _read_body_bounded(body: Any, limit: int) -> bytes:
    """Read at most `limit` bytes from a streaming body (fewer at EOF)."""
    chunks: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            chunk = body.read(min(READ_CHUNK, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        body.close()
    return b"".join(chunks)


def read_s3_object(client: S3Client, bucket: str, key: str, uri: str, max_bytes: int) -> bytes:
    """An object's bytes, refused before the download when over `max_bytes`, checksum verified.

    Raises `ObjectNotFound` (named by `uri`), `InputTooLarge`, `ChecksumMismatch`, `StorageError`
    or `StorageUnavailable`.
    """
    int_in_range("max_bytes", max_bytes, 1)
    errors = _s3_errors()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except errors as exc:
        raise _s3_failure(exc, uri) from exc
    size = int(head.get("ContentLength", 0))
    if size > max_bytes:
        raise InputTooLarge(uri, size, max_bytes)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        # One byte over the limit tells us the object grew between HEAD and GET.
        data = _read_body_bounded(response["Body"], max_bytes + 1)
    except errors as exc:
        raise _s3_failure(exc, uri) from exc
    if len(data) > max_bytes:
        raise InputTooLarge(uri, int(response.get("ContentLength", len(data))), max_bytes)
    check_sha256(uri, response.get("Metadata", {}).get(SHA256_META), data)
    return data


class S3Storage(Storage):
    """Objects in one S3 (or S3-compatible) bucket under an optional key prefix.

    Uploads at or above `multipart_threshold_bytes` go through boto3's managed transfer
    (multipart, `multipart_chunk_bytes` per part, `max_concurrency` threads); smaller ones are a
    single PUT with Content-MD5 so the endpoint rejects bytes damaged in transit. The SHA-256 of
    the bytes is stored as user metadata `sha256` and checked on every verified read.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: S3Client | None = None,
        prefix: str = "",
        multipart_threshold_bytes: int = 64 * MiB,
        multipart_chunk_bytes: int = 16 * MiB,
        max_concurrency: int = 4,
        presign_client: S3Client | None = None,
    ) -> None:
        """`client` defaults to `make_s3_client()` (environment credentials). `presign_client`, if
        given, signs URLs instead (e.g. one built with the public endpoint when the service reaches
        S3 through an internal address)."""
        if not isinstance(bucket, str) or not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"bucket {bucket!r} is invalid: expected an S3 bucket name (3-63 chars, [a-z0-9.-])")
        # Both bounded by S3's part size limits.
        int_in_range("multipart_threshold_bytes", multipart_threshold_bytes, MIN_PART_BYTES, MAX_PART_BYTES)
        int_in_range("multipart_chunk_bytes", multipart_chunk_bytes, MIN_PART_BYTES, MAX_PART_BYTES)
        int_in_range("max_concurrency", max_concurrency, 1, 64)
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.client = client if client is not None else make_s3_client()
        self._presign_client = presign_client if presign_client is not None else self.client
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
            preferred_transfer_client="classic",
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"

    def put(self, key: str, data: Data, *, content_type: str | None = None) -> ObjectInfo:
        validate_key(key)
        sha256, size = hash_data(data)
        content_type = content_type or content_type_for(key)
        extra = {"ContentType": content_type, "Metadata": {SHA256_META: sha256}}
        try:
            if size >= self.multipart_threshold_bytes:
                fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
                self.client.upload_fileobj(fileobj, self.bucket, key, ExtraArgs=extra, Config=self._transfer_config)
            else:
                body = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data.read()
                md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentMD5=md5, **extra)
        except _s3_errors() as exc:
            raise _s3_failure(exc, self.uri(key)) from exc
        return ObjectInfo(key, size, content_type, sha256)

    def get(self, key: str, *, verify: bool = True) -> bytes:
        validate_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            data = response["Body"].read()
        except _s3_errors() as exc:
            raise _s3_failure(exc, self.uri(key)) from exc
        if verify:
            check_sha256(self.uri(key), response.get("Metadata", {}).get(SHA256_META), data)
        return data

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except _s3_errors() as exc:
            failure = _s3_failure(exc, self.uri(key))
            if isinstance(failure, ObjectNotFound):
                return None
            raise failure from exc
        return ObjectInfo(
            key=key,
            size_bytes=int(response.get("ContentLength", 0)),
            content_type=response.get("ContentType", "application/octet-stream"),
            sha256=response.get("Metadata", {}).get(SHA256_META),
            etag=response.get("ETag", "").strip('"') or None,
        )

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except _s3_errors() as exc:
            failure = _s3_failure(exc, self.uri(key))
            if not isinstance(failure, ObjectNotFound):
                raise failure from exc

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        validate_key(key)
        int_in_range("expires_s", expires_s, 1, MAX_PRESIGN_EXPIRY_S)
        try:
            return self._presign_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        except _s3_errors() as exc:
            raise _s3_failure(exc, self.uri(key)) from exc

    def read(self, key: str, *, max_bytes: int) -> bytes:
        validate_key(key)
        return read_s3_object(self.client, self.bucket, key, self.uri(key), max_bytes)

    def key_of(self, uri: str) -> str | None:
        head = f"s3://{self.bucket}/"
        if not isinstance(uri, str) or not uri.startswith(head):
            return None
        key = uri[len(head) :]
        try:
            return validate_key(key)
        except ValueError:
            return None
