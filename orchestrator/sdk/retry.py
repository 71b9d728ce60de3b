"""The SDK's one retry policy, applied by `Client` and `AsyncClient` alike (tenacity).

What is retried:

- `429` (rate limit, in-flight quota) and `503` (the service or its store is down for a moment):
  after the response's `Retry-After` (capped at `max_retry_after_s`), or the backoff if it has none;
- other `5xx` (`500`, `502`, `504`): with the backoff, for calls that are safe to repeat;
- a connection that could not be made (refused, DNS, connect timeout, no free pooled connection):
  with the backoff, always (the server never saw the request);
- a timeout or a connection dropped mid-request: with the backoff, for calls that are safe to
  repeat (the server may have acted on the first try).

Every call the SDK makes is safe to repeat except an operator's dead-letter re-queue: submissions
carry an idempotency key (the SDK makes one when the caller gives none), so a retried submit returns
the first job instead of queueing a second. The backoff is exponential with jitter and a cap:
`min(initial_s * 2**(n-1), max_wait_s) + uniform(0, jitter_s)` before retry n.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt

from orchestrator.api_errors import ApiError

__all__ = ["RetryPolicy"]

RETRY_AFTER_STATUSES = frozenset({429, 503})
SERVER_ERROR_STATUSES = frozenset({500, 502, 504})
# The request never reached the server: safe to send again whatever it is.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to retry one call (see the module docstring for what).

    `max_retries` retries after the first try (0 = never retry); `retry_quota=False` leaves a 429
    `quota_exceeded` (the tenant's in-flight quota is full) to the caller instead of waiting it out,
    as `run_jsonl` does to size its chunks."""

    max_retries: int = 6
    initial_s: float = 0.5
    max_wait_s: float = 30.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 120.0
    retry_quota: bool = True

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_retries, int)
            or isinstance(self.max_retries, bool)
            or not 0 <= self.max_retries <= 100
        ):
            raise ValueError(f"max_retries {self.max_retries!r} is invalid: expected an integer in [0, 100]")
        for name in ("initial_s", "max_wait_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 3600:
                raise ValueError(f"{name} {value!r} is invalid: expected seconds in (0, 3600]")
        if not isinstance(self.jitter_s, int | float) or not 0 <= self.jitter_s <= 60:
            raise ValueError(f"jitter_s {self.jitter_s!r} is invalid: expected seconds in [0, 60]")

    def replace(self, **changes: Any) -> RetryPolicy:
        return dataclasses.replace(self, **changes)

    def should_retry(self, exc: BaseException, *, idempotent: bool) -> bool:
        """Whether a call that raised `exc` is worth another try under this policy."""
        if isinstance(exc, ApiError):
            if exc.status == 429 and exc.code == "quota_exceeded" and not self.retry_quota:
                return False
            return exc.status in RETRY_AFTER_STATUSES or (idempotent and exc.status in SERVER_ERROR_STATUSES)
        if isinstance(exc, _NOT_SENT):
            return True
        return idempotent and isinstance(exc, httpx.TransportError)  # timeouts, dropped connections

    def wait_s(self, exc: BaseException | None, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1-based) after `exc`: the `Retry-After` of
        a 429/503 (capped), else the jittered exponential backoff."""
        if isinstance(exc, ApiError) and exc.status in RETRY_AFTER_STATUSES and exc.retry_after_s is not None:
            return min(max(exc.retry_after_s, 0.0), self.max_retry_after_s)
        exponential = self.initial_s * 2.0 ** min(max(retry_number - 1, 0), 30)
        return min(exponential, self.max_wait_s) + random.uniform(0.0, self.jitter_s)

    def tenacity_kwargs(self, *, idempotent: bool) -> dict[str, Any]:
        """Arguments of `tenacity.Retrying` / `AsyncRetrying` for one call under this policy."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            return self.wait_s(exc, state.attempt_number)

        return {
            "stop": stop_after_attempt(self.max_retries + 1),
            "retry": retry_if_exception(lambda exc: self.should_retry(exc, idempotent=idempotent)),
            "wait": wait,
            "reraise": True,
        }
