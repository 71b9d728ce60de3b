"""What `Client` and `AsyncClient` share besides the calls: the checked connection settings, the
polling schedule of `wait*`, and how a result lands in a file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import httpx

from orchestrator.api_errors import ApiError
from orchestrator.jobs import FINAL_STATUSES
from orchestrator.sdk.errors import WaitTimeout
from orchestrator.sdk.models import BatchView, JobView, ResultView, WorkflowView
from orchestrator.sdk.retry import RetryPolicy

__all__ = ["ClientConfig", "Poller", "Wait"]

T = TypeVar("T")
_FINAL = frozenset(s.value for s in FINAL_STATUSES)
USER_AGENT = "audio-omni-client/2"


@dataclass(frozen=True)
class ClientConfig:
    """A deployment's URL, a key, the per-request timeout and the retry policy, each checked."""

    base_url: str
    api_key: str
    timeout_s: float
    retry: RetryPolicy

    @classmethod
    def of(
        cls, base_url: str, api_key: str, timeout_s: float, max_retries: int | None, retry: RetryPolicy | None
    ) -> ClientConfig:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} is invalid: expected an http:// or https:// URL")
        if not isinstance(api_key, str) or not api_key or any(c.isspace() for c in api_key):
            raise ValueError("api_key is invalid: expected a non-empty key without whitespace")
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or not 0 < timeout_s <= 3600:
            raise ValueError(f"timeout_s {timeout_s!r} is invalid: expected seconds in (0, 3600]")
        policy = retry or RetryPolicy()
        if max_retries is not None:
            policy = policy.replace(max_retries=max_retries)
        return cls(base_url.rstrip("/"), api_key, float(timeout_s), policy)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT}


def env_connection() -> tuple[str, str]:
    """`AUDIO_OMNI_API_URL` and `AUDIO_OMNI_API_KEY`, or a ValueError saying which is missing."""
    url, key = os.environ.get("AUDIO_OMNI_API_URL"), os.environ.get("AUDIO_OMNI_API_KEY")
    missing = [name for name, value in (("AUDIO_OMNI_API_URL", url), ("AUDIO_OMNI_API_KEY", key)) if not value]
    if missing:
        raise ValueError(f"set {' and '.join(missing)} to reach the API")
    return str(url), str(key)


def positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} {value!r} is invalid: expected a number of seconds > 0")
    return float(value)


@dataclass
class Wait(Generic[T]):
    """What `wait*` polls for: when a fetched value is `done`, and what to say if time runs out."""

    done: Callable[[T], bool]
    still: Callable[[T], str]


def job_wait(job_id: str, timeout_s: float) -> Wait[JobView]:
    return Wait(
        lambda j: j.status.value in _FINAL,
        lambda j: f"job {job_id} still {j.status.value} after {timeout_s:g} s",
    )


def batch_wait(batch_id: str) -> Wait[BatchView]:
    return Wait(lambda b: b.done, lambda b: f"batch {batch_id} has {b.finished}/{b.total} jobs finished")


def workflow_wait(workflow_id: str, timeout_s: float) -> Wait[WorkflowView]:
    def finished(w: WorkflowView) -> int:
        return sum(1 for step in w.steps if step.status.value in _FINAL)

    return Wait(
        lambda w: w.status.is_final and finished(w) == len(w.steps),
        lambda w: (
            f"workflow {workflow_id} still {w.status.value} after {timeout_s:g} s "
            f"({finished(w)}/{len(w.steps)} steps finished)"
        ),
    )


class Poller:
    """The schedule of one `wait`: quick first polls (0.1 s, doubling) up to every `poll_s`, until
    `timeout_s` has passed. `next_delay(last)` is the sleep before the next poll, or raises
    `WaitTimeout` with `wait.still(last)`."""

    def __init__(self, timeout_s: float, poll_s: float) -> None:
        self.deadline = time.monotonic() + positive("timeout_s", timeout_s)
        self.poll_s = positive("poll_s", poll_s)
        self.delay = min(self.poll_s, 0.1)

    def next_delay(self, wait: Wait[Any], last: Any) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(wait.still(last))
        delay = min(self.delay, remaining)
        self.delay = min(self.delay * 2, self.poll_s)
        return delay


class FileSink:
    """Where a downloaded result goes: an open binary file, or a path written as `.<name>.part`
    and renamed into place once complete (never a half-written file under the final name)."""

    def __init__(self, dest: str | os.PathLike[str] | BinaryIO) -> None:
        self.dest = dest
        self.written = 0
        self._handle: BinaryIO | None = None
        self._tmp: Path | None = None
        self._path: Path | None = None
        self._start: int | None = None
        self._opened = False

    def open(self) -> None:
        """Start (or, for a retry, start again) writing the result."""
        self.written = 0
        if isinstance(self.dest, str | os.PathLike):
            self._path = path = Path(self.dest)
            self._tmp = path.with_name(f".{path.name}.part")
            self._handle = self._tmp.open("wb")
        else:
            if not self._opened:
                self._start = self.dest.tell() if self.dest.seekable() else None
            elif self._start is None:
                raise OSError("the download was interrupted and the destination file cannot seek back to retry")
            else:
                self.dest.seek(self._start)
                self.dest.truncate()
            self._handle = self.dest
        self._opened = True

    def write(self, chunk: bytes) -> None:
        assert self._handle is not None, "FileSink.write before open"
        self._handle.write(chunk)
        self.written += len(chunk)

    def commit(self) -> int:
        if self._tmp is not None and self._path is not None and self._handle is not None:
            self._handle.close()
            self._tmp.replace(self._path)
        self._handle, self._tmp = None, None
        return self.written

    def abort(self) -> None:
        if self._tmp is not None and self._handle is not None:
            self._handle.close()
            self._tmp.unlink(missing_ok=True)
        self._handle, self._tmp = None, None


def upload_body(source: str | os.PathLike[str] | bytes, filename: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray):
        return bytes(source), filename or "input.wav"
    path = Path(source)
    return path.read_bytes(), filename or path.name


def store_error(response: httpx.Response) -> ApiError:
    """A failed fetch of a presigned URL (the object store's own error, not the API's)."""
    retry_after = response.headers.get("retry-after")
    return ApiError(
        response.status_code,
        "download_failed",
        f"fetching the result URL answered {response.status_code}: {response.text[:200]}",
        retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def check_digest(view: ResultView, got: str) -> None:
    if view.sha256 and got != view.sha256:  # a truncated or altered transfer: retried
        raise ApiError(
            502, "download_corrupt", f"the result of job {view.job_id} arrived with sha256 {got}, not {view.sha256}"
        )
