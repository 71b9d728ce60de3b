"""The storage error family: every storage failure is a `PermanentError` (the job fails with this
reason) except `StorageUnavailable`, a transient fault that retries the job.

Messages name the object or URI and the rule; they never show a Python repr of an internal object.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import PermanentError, RetryableError

__all__ = [
    "ChecksumMismatch",
    "InputNotAllowed",
    "InputNotFound",
    "InputTooLarge",
    "ObjectNotFound",
    "PermanentError",
    "RetryableError",
    "StorageError",
    "StorageUnavailable",
]


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
