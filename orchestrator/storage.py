"""Result and input storage: one `Storage` interface, an S3 implementation and a local-folder one.

Results live under deterministic keys so that a replayed job (crash before the ack) rewrites the
same object with the same bytes instead of creating a second one::

    {prefix}{tenant}/{batch_id or job_id}/{job_id}.{wav|flac}   the result object
    {prefix}{tenant}/{batch_id or job_id}/{job_id}.json         its metadata, written after it

Every stored object carries the SHA-256 of its bytes (S3 user metadata, or a hidden sidecar file in
the local folder) and reads verify it when present.

Inputs (source audio, voice prompts, sync features) are read through `Storage.read_input`, which
first asks an `InputPolicy` whether this tenant may read that URI at all: `s3://` only from the
tenant's own prefix or configured buckets/prefixes, local paths only in embedded mode and only
under the input root; everything else (http, metadata-service hosts, unknown schemes) is refused.

Outcomes are exceptions (see `StorageError` and friends): a permanent error fails the job, a
`StorageUnavailable` is transient and the job is retried.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from orchestrator.errors import PermanentError, RetryableError

__all__ = [
    "CONTENT_TYPES",
    "MIN_PART_BYTES",
    "RESULT_EXTS",
    "ChecksumMismatch",
    "InputNotAllowed",
    "InputNotFound",
    "InputPolicy",
    "InputTooLarge",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "PermanentError",
    "ResultLocation",
    "RetryableError",
    "S3Location",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "make_s3_client",
    "metadata_key",
    "result_key",
    "storage_from_settings",
    "validate_id",
]

MiB = 1024 * 1024
# S3 refuses multipart parts under 5 MiB (except the last) and over 5 GiB.
MIN_PART_BYTES = 5 * MiB
MAX_PART_BYTES = 5 * 1024 * MiB
# SigV4 presigned URLs are valid for at most 7 days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "json": "application/json",
}
KEY_EXTS = frozenset(CONTENT_TYPES)
# `json` is reserved for the metadata object that sits beside each result.
RESULT_EXTS = frozenset({"wav", "flac"})
METADATA_EXT = "json"
# Key of the block that `put_result` adds to the caller's metadata document.
RESULT_OBJECT_FIELD = "result_object"

# S3 user-metadata key holding the hex SHA-256 of the object's bytes (S3 lowercases these keys).
SHA256_META = "sha256"
_SIDECAR_SUFFIX = ".sha256"
_TMP_PREFIX = ".tmp-"
_READ_CHUNK = 1024 * 1024

# Ids start with a letter, digit or underscore so that a key segment is never a hidden file name
# (which keeps our own sidecar and temp files out of the key space) and never looks like a flag.
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_KEY_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+@-]*")
_MAX_KEY_CHARS = 1024
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_MAX_URI_CHARS = 2048

# Cloud instance-metadata endpoints: never fetched, named in the refusal so the reason is clear.
_METADATA_HOSTS = frozenset(
    {
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "metadata",
        "metadata.google.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)


# --------------------------------------------------------------------------- errors


class StorageError(PermanentError):
    """A storage operation failed in a way that retrying will not fix (denied, corrupt, misconfigured)."""


class ObjectNotFound(StorageError):
    """The key or URI names no object."""

    def __init__(self, where: str) -> None:
        super().__init__(f"object not found: {where}")
        self.where = where

    def __reduce__(self) -> tuple[Any, ...]:  # rebuild from our arguments, not the message (pickle, Ray)
        return (type(self), (self.where,))


class InputNotFound(ObjectNotFound):
    """An input URI that passed the policy names no object."""

    def __init__(self, uri: str) -> None:
        StorageError.__init__(self, f"input not found: {uri!r}")
        self.where = uri
        self.uri = uri

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uri,))


class InputNotAllowed(StorageError):
    """An input URI that this tenant may not read; `rule` says which rule refused it."""

    def __init__(self, uri: str, rule: str) -> None:
        super().__init__(f"input {uri!r} refused: {rule}")
        self.uri = uri
        self.rule = rule

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uri, self.rule))


class InputTooLarge(StorageError):
    """An input larger than the caller's `max_bytes`."""

    def __init__(self, uri: str, size_bytes: int, max_bytes: int) -> None:
        super().__init__(f"input {uri!r} is {size_bytes} bytes, over the limit of {max_bytes} bytes")
        self.uri = uri
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uri, self.size_bytes, self.max_bytes))


class ChecksumMismatch(StorageError):
    """The bytes read do not match the SHA-256 recorded when the object was written."""

    def __init__(self, where: str, expected: str, actual: str) -> None:
        super().__init__(f"checksum mismatch for {where}: recorded sha256 {expected}, bytes hash to {actual}")
        self.where = where
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.where, self.expected, self.actual))


class StorageUnavailable(RetryableError):
    """A transient failure (5xx, throttling, connection reset or timeout): retry the job later."""


# --------------------------------------------------------------------------- keys


def validate_id(value: Any, what: str = "id") -> str:
    """Return `value` if it is a valid tenant / job / batch id, else raise `ValueError`.

    Allowed: 1-64 characters from `[A-Za-z0-9_.-]`, starting with a letter, digit or `_`, and
    containing no `..`.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is invalid: expected 1-64 characters from [A-Za-z0-9_.-], "
            "starting with a letter, digit or '_', without '..'"
        )
    return value


def _validate_ext(ext: Any, allowed: frozenset[str]) -> str:
    if ext not in allowed:
        raise ValueError(f"extension {ext!r} is invalid: expected one of {sorted(allowed)}")
    return ext


def _normalize_prefix(prefix: str) -> str:
    """'' stays ''; 'a/b' and '/a/b/' become 'a/b/'. Segments follow the key rules."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix {prefix!r} is invalid: expected a string")
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    _validate_key(stripped, what="prefix")
    return stripped + "/"


def _validate_key(key: Any, what: str = "key") -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_CHARS:
        raise ValueError(f"{what} {key!r} is invalid: expected 1-{_MAX_KEY_CHARS} characters")
    for segment in key.split("/"):
        if not _KEY_SEGMENT_RE.fullmatch(segment) or ".." in segment:
            raise ValueError(
                f"{what} {key!r} is invalid: segment {segment!r} must be non-empty, use "
                "[A-Za-z0-9_.=+@-], not start with '.' or '-', and not contain '..'"
            )
    return key


def result_key(tenant: str, job_id: str, ext: str, *, batch_id: str | None = None, prefix: str = "") -> str:
    """The deterministic key `{prefix}{tenant}/{batch_id or job_id}/{job_id}.{ext}`.

    `ext` is one of `wav`, `flac`, `json` (the last is the metadata object).
    """
    validate_id(tenant, "tenant")
    validate_id(job_id, "job_id")
    group = job_id if batch_id is None else validate_id(batch_id, "batch_id")
    _validate_ext(ext, KEY_EXTS)
    return f"{_normalize_prefix(prefix)}{tenant}/{group}/{job_id}.{ext}"


def metadata_key(tenant: str, job_id: str, *, batch_id: str | None = None, prefix: str = "") -> str:
    """The key of the metadata JSON beside a job's result."""
    return result_key(tenant, job_id, METADATA_EXT, batch_id=batch_id, prefix=prefix)


def content_type_for(key: str) -> str:
    """Content type from the key's extension; unknown extensions are `application/octet-stream`."""
    _, dot, ext = key.rpartition(".")
    return CONTENT_TYPES.get(ext.lower(), "application/octet-stream") if dot else "application/octet-stream"


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class ObjectInfo:
    """What `head` and `put` report about a stored object."""

    key: str
    size_bytes: int
    content_type: str
    sha256: str | None  # hex; None when the object was written without a recorded checksum
    etag: str | None = None  # S3 only; a multipart object's ETag ends in '-<parts>'


@dataclass(frozen=True)
class ResultLocation:
    """Where `put_result` wrote a job's result and its metadata."""

    result_key: str | None  # None for jobs with no audio result (understanding: metadata only)
    metadata_key: str
    result_uri: str | None
    metadata_uri: str
    sha256: str | None
    size_bytes: int | None


@dataclass(frozen=True)
class S3Location:
    """A parsed, policy-approved `s3://bucket/key` input."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


Data = bytes | bytearray | memoryview | BinaryIO


def _is_bytes_like(data: Any) -> bool:
    return isinstance(data, bytes | bytearray | memoryview)


def _hash_data(data: Data) -> tuple[str, int]:
    """(hex sha256, size) of bytes or of a seekable binary file from its current position (restored)."""
    if _is_bytes_like(data):
        view = memoryview(data)  # type: ignore[arg-type]
        return hashlib.sha256(view).hexdigest(), view.nbytes
    if not (hasattr(data, "read") and hasattr(data, "seek") and hasattr(data, "tell")):
        raise ValueError(
            f"data of type {type(data).__name__} is invalid: expected bytes or a seekable binary file"
        )
    start = data.tell()
    digest = hashlib.sha256()
    size = 0
    while chunk := data.read(_READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    data.seek(start)
    return digest.hexdigest(), size


def _check_sha256(where: str, expected: str | None, data: bytes) -> None:
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ChecksumMismatch(where, expected, actual)


def _int_in_range(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` if it is an int in [low, high] (no upper bound when high is None), else ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} {value!r} is invalid: expected {expected}")
    return value


def _metadata_document(metadata: Mapping[str, Any], result_object: dict[str, Any] | None) -> bytes:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata of type {type(metadata).__name__} is invalid: expected a mapping")
    if RESULT_OBJECT_FIELD in metadata:
        raise ValueError(f"metadata key {RESULT_OBJECT_FIELD!r} is reserved: put_result fills it in")
    document = {**metadata, RESULT_OBJECT_FIELD: result_object}
    try:
        text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON-serializable: {exc}") from exc
    return text.encode("utf-8") + b"\n"


# --------------------------------------------------------------------------- input policy


def _is_metadata_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host in _METADATA_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_link_local


class InputPolicy:
    """Decides which input URIs a tenant may read.

    - `s3://bucket/key`: only under an allowed rule. A rule is `bucket`, `s3://bucket` (the whole
      bucket) or `s3://bucket/some/prefix/`; the placeholder `{tenant}` in a prefix is replaced by
      the requesting tenant, so `s3://uploads/{tenant}/` lets each tenant read only its own folder.
      Prefixes match on whole path segments. `S3Storage` adds its own `{prefix}{tenant}/` rule.
    - Local paths and `file://` URIs: only when `embedded` is true and `input_root` is set, and only
      if the path, symlinks resolved, lies under `input_root`. `..` segments are always refused.
    - `http(s)://`, link-local / metadata-service hosts and any other scheme: refused.
    """

    def __init__(
        self,
        allowed_s3: Sequence[str] = (),
        *,
        input_root: str | os.PathLike[str] | None = None,
        embedded: bool = False,
    ) -> None:
        if isinstance(allowed_s3, str):
            raise ValueError(
                f"allowed_s3 {allowed_s3!r} is invalid: expected a sequence of rules, not a string"
            )
        self._rules: tuple[tuple[str, str], ...] = tuple(self._parse_rule(rule) for rule in allowed_s3)
        self.embedded = bool(embedded)
        self.input_root: Path | None = None
        if input_root is not None:
            if not self.embedded:
                raise ValueError(
                    f"input_root {input_root!r} is invalid: local inputs exist only in embedded mode"
                )
            self.input_root = Path(input_root).expanduser().resolve()

    @property
    def allowed_s3(self) -> tuple[str, ...]:
        """The rules as normalized `s3://bucket/prefix` strings (prefix may contain `{tenant}`)."""
        return tuple(f"s3://{bucket}/{prefix}" for bucket, prefix in self._rules)

    def with_s3_rule(self, rule: str) -> InputPolicy:
        """A copy of this policy with one more allowed S3 rule."""
        policy = InputPolicy.__new__(InputPolicy)
        policy._rules = (*self._rules, self._parse_rule(rule))
        policy.embedded = self.embedded
        policy.input_root = self.input_root
        return policy

    @staticmethod
    def _parse_rule(rule: Any) -> tuple[str, str]:
        if not isinstance(rule, str) or not rule:
            raise ValueError(
                f"allowed S3 rule {rule!r} is invalid: expected 'bucket' or 's3://bucket/prefix/'"
            )
        body = rule[5:] if rule.lower().startswith("s3://") else rule
        bucket, _, prefix = body.partition("/")
        if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket or _looks_like_ip(bucket):
            raise ValueError(
                f"allowed S3 rule {rule!r} is invalid: bucket {bucket!r} is not a valid bucket name"
            )
        prefix = prefix.strip("/")
        if prefix:
            # Only the {tenant} placeholder may appear; check the rest with it stood in for an id.
            probe = prefix.replace("{tenant}", "t")
            if "{" in probe or "}" in probe:
                raise ValueError(f"allowed S3 rule {rule!r} is invalid: the only placeholder is {{tenant}}")
            try:
                _validate_key(probe, what="rule prefix")
            except ValueError as exc:
                raise ValueError(f"allowed S3 rule {rule!r} is invalid: {exc}") from exc
            prefix += "/"
        return bucket, prefix

    def check(self, uri: str, *, tenant: str) -> S3Location | Path:
        """Return the parsed location if `tenant` may read `uri`; else raise `InputNotAllowed`.

        The result is an `S3Location` for `s3://` URIs and a resolved `Path` for local inputs.
        """
        validate_id(tenant, "tenant")
        if not isinstance(uri, str) or not uri:
            raise InputNotAllowed(str(uri), "the URI must be a non-empty string")
        if len(uri) > _MAX_URI_CHARS:
            raise InputNotAllowed(uri[:80] + "...", f"the URI is longer than {_MAX_URI_CHARS} characters")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
            raise InputNotAllowed(uri, "control characters are not allowed in input URIs")
        match = _SCHEME_RE.match(uri)
        if match is None:
            if not self.embedded:
                raise InputNotAllowed(uri, "local paths are accepted only in embedded mode; use an s3:// URI")
            return self._check_local(uri, uri)
        scheme = match.group(1).lower()
        if scheme == "s3":
            return self._check_s3(uri, tenant)
        if scheme == "file":
            if not self.embedded:
                raise InputNotAllowed(
                    uri, "file:// URIs are accepted only in embedded mode; use an s3:// URI"
                )
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise InputNotAllowed(uri, f"file:// URIs may not name a host ({parts.netloc!r})")
            if parts.query or parts.fragment:
                raise InputNotAllowed(uri, "file:// URIs may not carry a query or fragment")
            return self._check_local(uri, unquote(parts.path))
        if scheme in ("http", "https"):
            try:
                host = urlsplit(uri).hostname
            except ValueError:
                host = None
            if _is_metadata_host(host):
                raise InputNotAllowed(uri, f"link-local / metadata-service host {host!r} is never fetched")
            raise InputNotAllowed(
                uri, f"{scheme}:// inputs are not fetched; upload the file and pass an s3:// URI"
            )
        raise InputNotAllowed(
            uri, f"unknown scheme {scheme!r}; allowed: s3:// (local paths in embedded mode)"
        )

    def _check_s3(self, uri: str, tenant: str) -> S3Location:
        body = uri[len("s3:") :]
        if not body.startswith("//"):
            raise InputNotAllowed(uri, "s3 URIs have the form s3://bucket/key")
        bucket, _, key = body[2:].partition("/")
        if _looks_like_ip(bucket):
            rule = "link-local / metadata-service host" if _is_metadata_host(bucket) else "IP address"
            raise InputNotAllowed(uri, f"bucket {bucket!r} is an {rule}, not a bucket name")
        if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise InputNotAllowed(uri, f"bucket {bucket!r} is not a valid S3 bucket name")
        if not key or key.endswith("/"):
            raise InputNotAllowed(uri, "the URI must name an object, not a bucket or folder")
        if any(segment in ("", ".", "..") for segment in key.split("/")):
            raise InputNotAllowed(uri, "empty, '.' and '..' path segments are not allowed in input keys")
        for rule_bucket, rule_prefix in self._rules:
            if bucket == rule_bucket and key.startswith(rule_prefix.replace("{tenant}", tenant)):
                return S3Location(bucket, key)
        allowed = [f"s3://{b}/{p.replace('{tenant}', tenant)}" for b, p in self._rules]
        raise InputNotAllowed(
            uri, f"not under a bucket/prefix that tenant {tenant!r} may read (allowed: {allowed})"
        )

    def _check_local(self, uri: str, raw_path: str) -> Path:
        if self.input_root is None:
            raise InputNotAllowed(uri, "local inputs need an input root, and none is configured")
        path = PurePosixPath(raw_path)
        if ".." in path.parts:
            raise InputNotAllowed(uri, "'..' path segments are not allowed")
        candidate = Path(path) if path.is_absolute() else self.input_root / path
        resolved = candidate.resolve()  # follows symlinks, so a link out of the root is caught below
        if not resolved.is_relative_to(self.input_root):
            raise InputNotAllowed(uri, f"the path resolves outside the input root {str(self.input_root)!r}")
        return resolved


def _looks_like_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- S3 helpers


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
) -> Any:
    """A boto3 S3 client that works against AWS and S3-compatible endpoints (MinIO, Ceph, R2, moto).

    Credentials left as None come from boto3's usual chain (environment, profile, instance role).
    `addressing_style` is `auto`, `path` (most self-hosted endpoints) or `virtual`.
    """
    import boto3
    from botocore.config import Config

    if addressing_style not in ("auto", "path", "virtual"):
        raise ValueError(
            f"addressing_style {addressing_style!r} is invalid: expected 'auto', 'path' or 'virtual'"
        )
    if (access_key_id is None) != (secret_access_key is None):
        raise ValueError("access_key_id and secret_access_key must be given together (or both left out)")
    _int_in_range("max_attempts", max_attempts, 1, 20)
    _int_in_range("max_pool_connections", max_pool_connections, 1, 1024)
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
    return session.client("s3", endpoint_url=endpoint_url, config=config)


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
            return StorageUnavailable(
                f"S3 {code or status} on {what} (transient): {error.get('Message', '')}"
            )
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
            chunk = body.read(min(_READ_CHUNK, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        body.close()
    return b"".join(chunks)


def _read_s3_input(client: Any, location: S3Location, uri: str, max_bytes: int) -> bytes:
    errors = _s3_errors()
    try:
        head = client.head_object(Bucket=location.bucket, Key=location.key)
    except errors as exc:
        failure = _s3_failure(exc, uri)
        raise (InputNotFound(uri) if isinstance(failure, ObjectNotFound) else failure) from exc
    size = int(head.get("ContentLength", 0))
    if size > max_bytes:
        raise InputTooLarge(uri, size, max_bytes)
    try:
        response = client.get_object(Bucket=location.bucket, Key=location.key)
        # One byte over the limit tells us the object grew between HEAD and GET.
        data = _read_body_bounded(response["Body"], max_bytes + 1)
    except errors as exc:
        failure = _s3_failure(exc, uri)
        raise (InputNotFound(uri) if isinstance(failure, ObjectNotFound) else failure) from exc
    if len(data) > max_bytes:
        raise InputTooLarge(uri, int(response.get("ContentLength", len(data))), max_bytes)
    _check_sha256(uri, response.get("Metadata", {}).get(SHA256_META), data)
    return data


def _read_local_input(path: Path, uri: str, max_bytes: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise InputNotFound(uri) from exc
    except OSError as exc:
        raise StorageError(f"cannot open input {uri!r}: {exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputNotAllowed(uri, "the path is not a regular file")
        if info.st_size > max_bytes:
            raise InputTooLarge(uri, info.st_size, max_bytes)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputTooLarge(uri, len(data), max_bytes)
    return data


# --------------------------------------------------------------------------- the interface


class Storage(ABC):
    """Where results are written and inputs are read. Keys are `/`-separated relative names."""

    policy: InputPolicy
    prefix: str = ""

    @abstractmethod
    def put(self, key: str, data: Data, *, content_type: str | None = None) -> ObjectInfo:
        """Store `data` (bytes or a seekable binary file) at `key`, replacing any object there.

        The write is all-or-nothing and records the bytes' SHA-256. Writing the same bytes to the
        same key again leaves exactly one identical object (replays are safe). The content type
        defaults to the one for the key's extension.
        """

    @abstractmethod
    def get(self, key: str, *, verify: bool = True) -> bytes:
        """The object's bytes; `ObjectNotFound` if absent, `ChecksumMismatch` if `verify` fails."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, type and recorded checksum, or None if there is no object."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error."""

    @abstractmethod
    def url(self, key: str, *, expires_s: int = 3600) -> str:
        """A URL a client can fetch the object from (S3: presigned GET valid for `expires_s`)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The canonical, non-expiring name of the object (`s3://bucket/key` or `file:///...`)."""

    @abstractmethod
    def _read_s3(self, location: S3Location, uri: str, max_bytes: int) -> bytes: ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        return self.head(key) is not None

    def result_key(self, tenant: str, job_id: str, ext: str, *, batch_id: str | None = None) -> str:
        """This storage's deterministic key for a job's result (`ext` wav/flac) or metadata (json)."""
        return result_key(tenant, job_id, ext, batch_id=batch_id, prefix=self.prefix)

    def put_result(
        self,
        *,
        tenant: str,
        job_id: str,
        metadata: Mapping[str, Any],
        data: Data | None = None,
        ext: str = "wav",
        batch_id: str | None = None,
    ) -> ResultLocation:
        """Write a job's result object, then its metadata JSON beside it.

        The metadata document is the caller's mapping plus a `result_object` block (key, sha256,
        size_bytes, content_type; null when `data` is None, as for understanding jobs that only
        produce text). The result goes first so that a metadata object always describes a result
        that exists; a crash between the two leaves a result that the replay overwrites.
        """
        meta_key = self.result_key(tenant, job_id, METADATA_EXT, batch_id=batch_id)
        if data is None:
            document = _metadata_document(metadata, None)
            self.put(meta_key, document)
            return ResultLocation(None, meta_key, None, self.uri(meta_key), None, None)
        _validate_ext(ext, RESULT_EXTS)
        key = self.result_key(tenant, job_id, ext, batch_id=batch_id)
        sha256, size = _hash_data(data)
        # Build (and so validate) the metadata before writing anything.
        document = _metadata_document(
            metadata,
            {"key": key, "sha256": sha256, "size_bytes": size, "content_type": CONTENT_TYPES[ext]},
        )
        info = self.put(key, data)
        self.put(meta_key, document)
        return ResultLocation(key, meta_key, self.uri(key), self.uri(meta_key), info.sha256, info.size_bytes)

    def read_input(
        self,
        uri: str,
        *,
        tenant: str,
        max_bytes: int,
        tenant_policy: Callable[[], InputPolicy | None] | None = None,
    ) -> bytes:
        """Read an input after checking it against the policy for `tenant`.

        `tenant_policy`: returns the tenant's own extra S3 rules (`Tenant.input_policy`) or None;
        called only when the deployment's policy refuses an s3:// URI, as the API does at submit
        time, so inputs the deployment allows cost no lookup.
        Raises `InputNotAllowed` (policy), `InputNotFound`, `InputTooLarge` (over `max_bytes`),
        `ChecksumMismatch` (recorded sha256 differs) or `StorageUnavailable` (transient).
        """
        _int_in_range("max_bytes", max_bytes, 1)
        try:
            location = self.policy.check(uri, tenant=tenant)
        except InputNotAllowed:
            own = tenant_policy() if tenant_policy is not None and uri.lower().startswith("s3://") else None
            if own is None:
                raise
            location = own.check(uri, tenant=tenant)
        if isinstance(location, S3Location):
            return self._read_s3(location, uri, max_bytes)
        return _read_local_input(location, uri, max_bytes)


# --------------------------------------------------------------------------- S3


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
        client: Any | None = None,
        prefix: str = "",
        policy: InputPolicy | None = None,
        multipart_threshold_bytes: int = 64 * MiB,
        multipart_chunk_bytes: int = 16 * MiB,
        max_concurrency: int = 4,
        presign_client: Any | None = None,
    ) -> None:
        """`client` defaults to `make_s3_client()` (environment credentials). `presign_client`, if
        given, signs URLs instead (e.g. one built with the public endpoint when the service reaches
        S3 through an internal address). `policy` defaults to one allowing only the tenant's own
        prefix in this bucket; that rule is always added."""
        if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise ValueError(
                f"bucket {bucket!r} is invalid: expected an S3 bucket name (3-63 chars, [a-z0-9.-])"
            )
        # Both bounded by S3's part size limits.
        _int_in_range("multipart_threshold_bytes", multipart_threshold_bytes, MIN_PART_BYTES, MAX_PART_BYTES)
        _int_in_range("multipart_chunk_bytes", multipart_chunk_bytes, MIN_PART_BYTES, MAX_PART_BYTES)
        _int_in_range("max_concurrency", max_concurrency, 1, 64)
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = _normalize_prefix(prefix)
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
        base = policy if policy is not None else InputPolicy()
        # A tenant may always read back what was written under its own prefix (e.g. to edit a result).
        self.policy = base.with_s3_rule(f"s3://{bucket}/{self.prefix}{{tenant}}/")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{_validate_key(key)}"

    def put(self, key: str, data: Data, *, content_type: str | None = None) -> ObjectInfo:
        _validate_key(key)
        sha256, size = _hash_data(data)
        content_type = content_type or content_type_for(key)
        extra = {"ContentType": content_type, "Metadata": {SHA256_META: sha256}}
        try:
            if size >= self.multipart_threshold_bytes:
                fileobj = io.BytesIO(data) if _is_bytes_like(data) else data  # type: ignore[arg-type]
                self.client.upload_fileobj(
                    fileobj, self.bucket, key, ExtraArgs=extra, Config=self._transfer_config
                )
            else:
                body = bytes(data) if _is_bytes_like(data) else data.read()  # type: ignore[union-attr]
                md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentMD5=md5, **extra)
        except _s3_errors() as exc:
            raise _s3_failure(exc, self.uri(key)) from exc
        return ObjectInfo(key, size, content_type, sha256)

    def get(self, key: str, *, verify: bool = True) -> bytes:
        _validate_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            data = response["Body"].read()
        except _s3_errors() as exc:
            raise _s3_failure(exc, self.uri(key)) from exc
        if verify:
            _check_sha256(self.uri(key), response.get("Metadata", {}).get(SHA256_META), data)
        return data

    def head(self, key: str) -> ObjectInfo | None:
        _validate_key(key)
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
        _validate_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except _s3_errors() as exc:
            failure = _s3_failure(exc, self.uri(key))
            if not isinstance(failure, ObjectNotFound):
                raise failure from exc

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        _validate_key(key)
        _int_in_range("expires_s", expires_s, 1, MAX_PRESIGN_EXPIRY_S)
        try:
            return self._presign_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        except _s3_errors() as exc:
            raise _s3_failure(exc, self.uri(key)) from exc

    def _read_s3(self, location: S3Location, uri: str, max_bytes: int) -> bytes:
        return _read_s3_input(self.client, location, uri, max_bytes)


# --------------------------------------------------------------------------- local folder


class LocalStorage(Storage):
    """Objects as files under `root` (embedded mode), same key layout as S3.

    Writes go to a temp file in the target directory, are fsynced and then renamed over the
    target, so a reader sees the old object or the new one, never a torn one. The SHA-256 lives in
    a hidden sidecar `.{name}.sha256` next to the file. The content type always follows the key's
    extension (files carry no type), so `put`'s `content_type` is ignored. `s3_client` (optional)
    lets embedded mode read `s3://` inputs that the policy allows.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        prefix: str = "",
        policy: InputPolicy | None = None,
        s3_client: Any | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = _normalize_prefix(prefix)
        self.policy = policy if policy is not None else InputPolicy(embedded=True)
        self._s3_client = s3_client

    def path(self, key: str) -> Path:
        """The file that holds `key`."""
        return self.root.joinpath(*_validate_key(key).split("/"))

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}{_SIDECAR_SUFFIX}")

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        """A `file://` URI; local files do not expire, so `expires_s` is only validated (same range as S3)."""
        _int_in_range("expires_s", expires_s, 1, MAX_PRESIGN_EXPIRY_S)
        return self.uri(key)

    def _write_atomic(self, path: Path, data: Data) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                if _is_bytes_like(data):
                    handle.write(data)  # type: ignore[arg-type]
                else:
                    while chunk := data.read(_READ_CHUNK):  # type: ignore[union-attr]
                        handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; results are meant to be shared
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def put(self, key: str, data: Data, *, content_type: str | None = None) -> ObjectInfo:
        path = self.path(key)
        sha256, size = _hash_data(data)
        sidecar = self._sidecar(path)
        try:
            # Drop the old checksum first: a crash mid-way then leaves an unverified file,
            # never a checksum that belongs to other bytes.
            sidecar.unlink(missing_ok=True)
            self._write_atomic(path, data)
            self._write_atomic(sidecar, sha256.encode("ascii"))
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
        return ObjectInfo(key, size, content_type_for(key), sha256)

    def _recorded_sha256(self, path: Path) -> str | None:
        try:
            return self._sidecar(path).read_text("ascii").strip() or None
        except FileNotFoundError:
            return None

    def get(self, key: str, *, verify: bool = True) -> bytes:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(self.uri(key)) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc
        if verify:
            _check_sha256(self.uri(key), self._recorded_sha256(path), data)
        return data

    def head(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return ObjectInfo(key, info.st_size, content_type_for(key), self._recorded_sha256(path))

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink(missing_ok=True)
            self._sidecar(path).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri(key)}: {exc}") from exc

    def _read_s3(self, location: S3Location, uri: str, max_bytes: int) -> bytes:
        if self._s3_client is None:
            raise InputNotAllowed(uri, "embedded mode has no S3 client configured for s3:// inputs")
        return _read_s3_input(self._s3_client, location, uri, max_bytes)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot fsync a directory, which is fine to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- factory


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
    - `input_root`: embedded mode only: local input paths must resolve under it.
    - `allowed_input_s3`: extra S3 input rules (`bucket`, `s3://bucket/prefix/`, `{tenant}`
      placeholder allowed). In embedded mode a non-empty list also creates an S3 client for inputs.
    - `multipart_threshold_bytes`, `multipart_chunk_bytes`, `max_concurrency`: upload tuning.
    - `max_attempts`: botocore's retry budget per request (standard mode).
    """
    if (bucket is None) == (local_root is None):
        raise ValueError(
            f"give exactly one of bucket ({bucket!r}) for S3 or local_root ({local_root!r}) for embedded mode"
        )
    embedded = local_root is not None
    if input_root is not None and not embedded:
        raise ValueError(
            f"input_root {input_root!r} is invalid in service mode: local inputs need local_root"
        )
    policy = InputPolicy(allowed_input_s3, input_root=input_root, embedded=embedded)
    client_args: dict[str, Any] = {
        "endpoint_url": endpoint_url,
        "region": region,
        "access_key_id": access_key_id,
        "secret_access_key": secret_access_key,
        "session_token": session_token,
        "addressing_style": addressing_style,
        "max_attempts": max_attempts,
    }
    if embedded:
        s3_client = make_s3_client(**client_args) if allowed_input_s3 else None
        return LocalStorage(local_root, prefix=prefix, policy=policy, s3_client=s3_client)  # type: ignore[arg-type]
    client = make_s3_client(**client_args)
    presign_client = None
    if public_endpoint_url is not None and public_endpoint_url != endpoint_url:
        presign_client = make_s3_client(**{**client_args, "endpoint_url": public_endpoint_url})
    return S3Storage(
        bucket,  # type: ignore[arg-type]
        client=client,
        prefix=prefix,
        policy=policy,
        multipart_threshold_bytes=multipart_threshold_bytes,
        multipart_chunk_bytes=multipart_chunk_bytes,
        max_concurrency=max_concurrency,
        presign_client=presign_client,
    )
