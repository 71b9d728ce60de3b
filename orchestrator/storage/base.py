"""The `Storage` interface and what every backend shares: keys, value types, checksums.

Results live under deterministic keys so that a replayed job (crash before the ack) rewrites the
same object with the same bytes instead of creating a second one::

    {prefix}{tenant}/{batch_id or job_id}/{job_id}.{wav|flac}   the result object
    {prefix}{tenant}/{batch_id or job_id}/{job_id}.json         its metadata, written after it

Every stored object carries the SHA-256 of its bytes (S3 user metadata, or a hidden sidecar file in
the local folder) and reads verify it when present. Which inputs a tenant may read is not decided
here but by `orchestrator.storage.inputs.InputResolver`.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from orchestrator.jobs import validate_id  # one id rule for jobs, tenants and storage keys
from orchestrator.storage.errors import ChecksumMismatch

__all__ = [
    "CONTENT_TYPES",
    "MAX_PRESIGN_EXPIRY_S",
    "MIN_PART_BYTES",
    "RESULT_EXTS",
    "Data",
    "ObjectInfo",
    "ResultLocation",
    "Storage",
    "content_type_for",
    "metadata_key",
    "result_key",
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
    "mp4": "video/mp4",
    "json": "application/json",
}
KEY_EXTS = frozenset(CONTENT_TYPES)
# `json` is reserved for the metadata object that sits beside each result.
RESULT_EXTS = frozenset({"wav", "flac", "mp4"})
METADATA_EXT = "json"
# Key of the block that `put_result` adds to the caller's metadata document.
RESULT_OBJECT_FIELD = "result_object"

# S3 user-metadata key holding the hex SHA-256 of the object's bytes (S3 lowercases these keys).
SHA256_META = "sha256"
SIDECAR_SUFFIX = ".sha256"
TMP_PREFIX = ".tmp-"
READ_CHUNK = 1024 * 1024

# Ids (`validate_id`) and key segments start with a letter, digit or underscore so that a segment is
# never a hidden file name (which keeps our own sidecar and temp files out of the key space) and
# never looks like a flag.
_KEY_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+@-]*")
MAX_KEY_CHARS = 1024
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


# --------------------------------------------------------------------------- keys


def _validate_ext(ext: Any, allowed: frozenset[str]) -> str:
    if ext not in allowed:
        raise ValueError(f"extension {ext!r} is invalid: expected one of {sorted(allowed)}")
    return ext


def normalize_prefix(prefix: str) -> str:
    """'' stays ''; 'a/b' and '/a/b/' become 'a/b/'. Segments follow the key rules."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix {prefix!r} is invalid: expected a string")
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    validate_key(stripped, what="prefix")
    return stripped + "/"


def validate_key(key: Any, what: str = "key") -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{what} {key!r} is invalid: expected 1-{MAX_KEY_CHARS} characters")
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
    return f"{normalize_prefix(prefix)}{tenant}/{group}/{job_id}.{ext}"


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


Data = bytes | bytearray | memoryview | BinaryIO


def is_bytes_like(data: Any) -> bool:
    return isinstance(data, bytes | bytearray | memoryview)


def hash_data(data: Data) -> tuple[str, int]:
    """(hex sha256, size) of bytes or of a seekable binary file from its current position (restored)."""
    if is_bytes_like(data):
        view = memoryview(data)  # type: ignore[arg-type]
        return hashlib.sha256(view).hexdigest(), view.nbytes
    if not (hasattr(data, "read") and hasattr(data, "seek") and hasattr(data, "tell")):
        raise ValueError(f"data of type {type(data).__name__} is invalid: expected bytes or a seekable binary file")
    start = data.tell()
    digest = hashlib.sha256()
    size = 0
    while chunk := data.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    data.seek(start)
    return digest.hexdigest(), size


def check_sha256(where: str, expected: str | None, data: bytes) -> None:
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ChecksumMismatch(where, expected, actual)


def int_in_range(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` if it is an int in [low, high] (no upper bound when high is None), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
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


# --------------------------------------------------------------------------- the interface


class Storage(ABC):
    """Where results are written (and read back). Keys are `/`-separated relative names.

    Backends: `S3Storage` (service mode) and `LocalStorage` (embedded mode). Every method is
    public; input rules live in `InputResolver`, which reads this storage's own objects through
    `key_of` and `read`.
    """

    prefix: str = ""
    presigns_urls: bool = True
    """Whether `url` gives a URL a remote client can fetch (S3: presigned); False for a local
    folder, whose `file://` URIs only this machine can open (the API then serves the bytes)."""

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
    def read(self, key: str, *, max_bytes: int) -> bytes:
        """The object's bytes, verified, refusing objects over `max_bytes` before reading them.

        Raises `ObjectNotFound`, `InputTooLarge` (named by the object's URI), `ChecksumMismatch`
        or `StorageUnavailable`.
        """

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
    def key_of(self, uri: str) -> str | None:
        """The key of one of this storage's own URIs (the inverse of `uri`), else None.

        None for a URI of another bucket, a path outside the root, or a name that is not a
        valid key (empty, `.` or `..` segments, hidden names); never raises for a bad URI.
        """

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        return self.head(key) is not None

    def tenant_prefix(self, tenant: str) -> str:
        """The key prefix under which `tenant`'s objects (results, uploads) live."""
        return f"{self.prefix}{validate_id(tenant, 'tenant')}/"

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
        sha256, size = hash_data(data)
        # Build (and so validate) the metadata before writing anything.
        document = _metadata_document(
            metadata,
            {"key": key, "sha256": sha256, "size_bytes": size, "content_type": CONTENT_TYPES[ext]},
        )
        info = self.put(key, data)
        self.put(meta_key, document)
        return ResultLocation(key, meta_key, self.uri(key), self.uri(meta_key), info.sha256, info.size_bytes)
