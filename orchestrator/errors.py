"""Outcomes as exceptions.

Work code raises; the engine maps the exception to what the queue records (`outcome_of`):

- `RetryableError` (a transient fault: a worker restarting, storage throttling) -> the job is
  retried with exponential backoff, and dead-lettered with this error after `max_attempts`.
- `PermanentError` (a bad input: invalid spec, unreadable audio, a URI the tenant may not read)
  -> the job fails at once with this error; retrying would fail the same way.
- `JobCancelled` (the client cancelled while the job ran) -> the job ends `cancelled`.
- `LeaseLost` (this consumer's lease lapsed and another consumer took the job over) -> stop
  working on it and record nothing; the new holder owns the outcome.

Any other exception is treated as retryable: an unexpected fault (a bug, an OOM) is retried a
bounded number of times and then dead-lettered with its message, never silently dropped.

Beside its message every failed, dead or cancelled job records a machine code (`ErrorCode`): the
one mapping from an exception to its code is `error_code_of`; the queue's scripts write the codes
of the ends they decide themselves (`retries_exhausted`, `cancelled`, `dependency_failed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

__all__ = [
    "BadInputFile",
    "ErrorCode",
    "InvalidJobSpec",
    "JobCancelled",
    "JobNotFound",
    "LeaseLost",
    "OrchestratorError",
    "Outcome",
    "PermanentError",
    "RetryableError",
    "error_code_of",
    "outcome_of",
]


class OrchestratorError(Exception):
    """Base of every error the job system raises on purpose."""


class RetryableError(OrchestratorError, RuntimeError):
    """A transient fault: retry the job later.

    `retry_after_s` overrides the queue's backoff for this retry (e.g. a `Retry-After` header).
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        if retry_after_s is not None and not retry_after_s >= 0:
            raise ValueError(f"retry_after_s {retry_after_s!r} is invalid: expected a number >= 0")
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(OrchestratorError, ValueError):
    """Retrying will not help (bad input, refused URI): fail the job with this reason."""


class BadInputFile(PermanentError):
    """An input file (audio, video) that cannot be used. `what` names the input, `reason` the
    problem; the message is `"{what} {reason}"` (e.g. "input audio lasts 7.0 s; the limit is 5 s")."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} {reason}")
        self.what = what
        self.reason = reason


class InvalidJobSpec(PermanentError):
    """A job spec that does not validate. `errors` holds one `(field, message)` pair per problem."""

    def __init__(self, errors: Sequence[tuple[str, str]], *, what: str = "job spec") -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        detail = "; ".join(f"{field}: {message}" if field else message for field, message in self.errors)
        super().__init__(f"invalid {what}: {detail}")


class JobCancelled(OrchestratorError):
    """The job was cancelled while it ran; raised by the engine between stages."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


class LeaseLost(OrchestratorError):
    """This consumer no longer holds the job (its lease lapsed and the job was reclaimed, or it
    already reached a final state). Nothing was recorded; stop working on it."""

    def __init__(self, job_id: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: this consumer no longer holds its lease")
        self.job_id = job_id
        self.action = action


class JobNotFound(OrchestratorError, KeyError):
    """No record for this job id (never submitted, or expired after its retention)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:  # KeyError would quote the bare id
        return f"job {self.job_id!r} not found"


class Outcome(StrEnum):
    """How one attempt of a job ended, in the engine's words (`JobResult.outcome`, metrics labels).

    The final ones use the same words as `orchestrator.jobs.JobStatus`; `retry` is an attempt
    that failed transiently (the job is queued again or dead-lettered by the queue) and
    `abandoned` one whose lease was lost (someone else owns the job now; nothing is recorded).
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"


def outcome_of(exc: BaseException) -> Outcome:
    """Map an exception raised by job work to the outcome the engine records."""
    if isinstance(exc, LeaseLost):
        return Outcome.ABANDONED
    if isinstance(exc, JobCancelled):
        return Outcome.CANCELLED
    if isinstance(exc, PermanentError):
        return Outcome.FAILED
    # RetryableError and anything unexpected: bounded retries, then the dead-letter stream.
    return Outcome.RETRY


class ErrorCode(StrEnum):
    """The machine code recorded beside a job's error (`JobView.error_code`, results, webhooks).

    docs/errors.md says what a user should do about each one."""

    INVALID_SPEC = "invalid_spec"  # the spec does not validate (e.g. after a workflow's substitution)
    INPUT_NOT_FOUND = "input_not_found"  # an input URI names no object
    INPUT_NOT_ALLOWED = "input_not_allowed"  # the tenant may not read an input URI
    INPUT_TOO_LARGE = "input_too_large"  # an input is over the size limit
    INPUT_CORRUPT = "input_corrupt"  # an input's bytes do not match their recorded checksum
    BAD_AUDIO = "bad_audio"  # an input audio file cannot be used (format, length, rate, channels)
    BAD_VIDEO = "bad_video"  # an input video file cannot be used
    INVALID_INPUT = "invalid_input"  # another input the model refuses (a permanent error)
    STORAGE_ERROR = "storage_error"  # storage refused an operation that retrying will not fix
    STORAGE_UNAVAILABLE = "storage_unavailable"  # storage was unreachable or throttling (retried)
    WORKER_UNAVAILABLE = "worker_unavailable"  # a model worker failed or restarted (retried)
    RETRIES_EXHAUSTED = "retries_exhausted"  # dead: every attempt failed transiently or its lease lapsed
    CANCELLED = "cancelled"  # cancelled by the client (the job or its workflow)
    DEPENDENCY_FAILED = "dependency_failed"  # a workflow step not run because an earlier step failed
    INTERNAL = "internal"  # an unexpected fault (retried like a transient one)


# The one mapping from an exception to its code, by class name along the exception's MRO (the first
# class named here wins), so this module imports none of the modules that raise them.
_CODES_BY_CLASS: dict[str, ErrorCode] = {
    "InvalidJobSpec": ErrorCode.INVALID_SPEC,
    "InputNotFound": ErrorCode.INPUT_NOT_FOUND,
    "InputNotAllowed": ErrorCode.INPUT_NOT_ALLOWED,
    "InputTooLarge": ErrorCode.INPUT_TOO_LARGE,
    "ChecksumMismatch": ErrorCode.INPUT_CORRUPT,
    "BadAudio": ErrorCode.BAD_AUDIO,
    "BadVideo": ErrorCode.BAD_VIDEO,
    "StorageError": ErrorCode.STORAGE_ERROR,
    "StorageUnavailable": ErrorCode.STORAGE_UNAVAILABLE,
    "_PoolError": ErrorCode.WORKER_UNAVAILABLE,
    "JobCancelled": ErrorCode.CANCELLED,
    "PermanentError": ErrorCode.INVALID_INPUT,
    "RetryableError": ErrorCode.INTERNAL,
}


def error_code_of(exc: BaseException) -> ErrorCode:
    """The machine code of the error an attempt ended with (`internal` for anything unexpected)."""
    for cls in type(exc).__mro__:
        code = _CODES_BY_CLASS.get(cls.__name__)
        if code is not None:
            return code
    return ErrorCode.INTERNAL
