"""Result and input storage.

- `base`: the `Storage` interface (all public methods), deterministic result keys, value types.
- `s3`: `S3Storage` and `make_s3_client` (service mode).
- `local`: `LocalStorage`, objects as files under a folder (embedded mode).
- `inputs`: `InputPolicy` (the deployment's input rules) and `InputResolver`, the one object that
  decides and reads every job input, built once and handed to both the API and the engine.
- `errors`: the `StorageError` family (permanent) and `StorageUnavailable` (transient).
- `factory`: `storage_from_settings` and `input_resolver_from_settings`.

Everything other modules use is importable from `orchestrator.storage` directly.
"""

from __future__ import annotations

from orchestrator.errors import PermanentError, RetryableError
from orchestrator.storage.base import (
    CONTENT_TYPES,
    MAX_PRESIGN_EXPIRY_S,
    MIN_PART_BYTES,
    RESULT_EXTS,
    Data,
    ObjectInfo,
    ResultLocation,
    Storage,
    content_type_for,
    metadata_key,
    result_key,
    validate_id,
)
from orchestrator.storage.errors import (
    ChecksumMismatch,
    InputNotAllowed,
    InputNotFound,
    InputTooLarge,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from orchestrator.storage.factory import input_resolver_from_settings, storage_from_settings
from orchestrator.storage.inputs import InputPolicy, InputResolver, S3Location, TenantRules
from orchestrator.storage.local import LocalStorage
from orchestrator.storage.s3 import S3Client, S3Storage, make_s3_client

__all__ = [
    "CONTENT_TYPES",
    "MAX_PRESIGN_EXPIRY_S",
    "MIN_PART_BYTES",
    "RESULT_EXTS",
    "ChecksumMismatch",
    "Data",
    "InputNotAllowed",
    "InputNotFound",
    "InputPolicy",
    "InputResolver",
    "InputTooLarge",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "PermanentError",
    "ResultLocation",
    "RetryableError",
    "S3Client",
    "S3Location",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "TenantRules",
    "content_type_for",
    "input_resolver_from_settings",
    "make_s3_client",
    "metadata_key",
    "result_key",
    "storage_from_settings",
    "validate_id",
]
