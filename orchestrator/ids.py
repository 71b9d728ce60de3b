"""Ids of jobs, batches and tenants, idempotency keys and derived seeds: one rule each, shared by the
job schema (`orchestrator.jobs`, which re-exports them), workflows, the queue and the API."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from model.limits import MAX_SEED

__all__ = [
    "CONTROL_RE",
    "MAX_BATCH_ID_CHARS",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_ID_CHARS",
    "BatchId",
    "IdempotencyKey",
    "TenantId",
    "batch_job_id",
    "derive_seed",
    "new_batch_id",
    "new_job_id",
    "validate_id",
]

MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_ID_CHARS = 64
MAX_BATCH_ID_CHARS = 48  # batch job ids are "{batch_id}-{index}" and must stay within MAX_ID_CHARS

# Same rule as storage keys: 1-64 of [A-Za-z0-9_.-], not starting with '.' or '-', no '..'.
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than \t and \n


def validate_id(value: Any, what: str = "id", *, max_chars: int = MAX_ID_CHARS) -> str:
    """Return `value` if it is a valid tenant / job / batch id, else raise `ValueError`."""
    if not isinstance(value, str) or len(value) > max_chars or not _ID_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is invalid: expected 1-{max_chars} characters from [A-Za-z0-9_.-], "
            "starting with a letter, digit or '_', without '..'"
        )
    return value


def _tenant_id(value: str) -> str:
    return validate_id(value, "tenant")


def _batch_id(value: str) -> str:
    return validate_id(value, "batch_id", max_chars=MAX_BATCH_ID_CHARS)


def _idempotency_key(value: str) -> str:
    if CONTROL_RE.search(value) or "\t" in value or "\n" in value:
        raise ValueError("must not contain control characters")
    return value


# The routing fields a job and a workflow share, each checked by one rule.
TenantId = Annotated[str, AfterValidator(_tenant_id)]
BatchId = Annotated[str, AfterValidator(_batch_id)]
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS), AfterValidator(_idempotency_key)
]


def new_job_id() -> str:
    """A fresh random job id (32 hex characters)."""
    return uuid.uuid4().hex


def new_batch_id() -> str:
    """A fresh random batch id."""
    return "b" + uuid.uuid4().hex[:31]


def batch_job_id(batch_id: str, index: int) -> str:
    """The job id of item `index` of a batch. Deterministic, so re-submitting a batch is idempotent."""
    return f"{batch_id}-{index}"


def derive_seed(job_id: str) -> int:
    """The sampling seed of a job that did not give one: a hash of its id, in [0, 2**32 - 1]."""
    digest = hashlib.blake2b(job_id.encode(), digest_size=8, person=b"audio-omni-seed").digest()
    return int.from_bytes(digest, "big") & MAX_SEED
