"""The HTTP API: how tenants submit jobs and batches, follow them, cancel them and fetch results.

Stateless (every piece of state is in Redis or the object store), so any number of replicas can
run behind a load balancer, apart from the GPU cluster. `create_app` builds the FastAPI app::

    app = create_app(settings, queue=JobQueue.from_settings(settings),
                     storage=storage_from_settings(**settings.storage_kwargs(embedded=False)),
                     tenants=TenantStore.from_settings(settings))

Endpoints (all under `Authorization: Bearer KEY` except `/healthz`, `/metrics` and the OpenAPI
document at `/openapi.json`):

    POST   /v1/jobs               a `JobSpec` -> 201 the job (200 for an idempotent re-submit)
    POST   /v1/batches            {"jobs": [JobSpec, ...]} -> 201 {batch_id, total, job_ids}
    GET    /v1/jobs/{id}          the job's status
    GET    /v1/batches/{id}       counts by status, one page of failures (?offset=&limit=)
    DELETE /v1/jobs/{id}          cancel (200 cancelled, 202 cancel requested for a running job)
    GET    /v1/jobs/{id}/result   presigned URL (S3), or the bytes themselves (embedded mode)
    POST   /v1/uploads            multipart `file`: WAV/FLAC, decoded before it is stored
    GET    /healthz, GET /metrics

Every error has one shape, `{"error": {"code", "message", "field", "details"}}`:
400 unreadable body, 401 no/unknown key, 403 input or tenant not allowed, 404 unknown id (also
another tenant's id: existence is never revealed), 409 wrong state, 413 too large, 422 invalid
field, 429 rate limit or in-flight quota (`Retry-After`), 503 Redis/S3 unavailable. Client input
never causes a 500.

Isolation: a job belongs to the tenant of the key that submitted it (a `tenant` field naming
another tenant is refused), ids of other tenants answer 404, and input URIs must be `s3://` objects
under the tenant's own prefix of the results bucket or a location its record / the deployment
allows; nothing is ever fetched from `http(s)://`, `file://` (outside embedded mode), `..` paths or
link-local addresses.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlsplit

import numpy as np
import redis
import soundfile as sf
from fastapi import Depends, FastAPI, File, Header, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator import storage as storage_mod
from orchestrator.errors import InvalidJobSpec, JobNotFound
from orchestrator.jobs import (
    MAX_ID_CHARS,
    BatchStatus,
    JobRecord,
    JobSpec,
    JobStatus,
    Priority,
    batch_job_id,
    new_batch_id,
    new_job_id,
    validate_id,
)
from orchestrator.queue import JobQueue
from orchestrator.storage import InputNotAllowed, LocalStorage, S3Storage, Storage
from orchestrator.tenants import QuotaExceeded, RateLimited, Tenant, TenantStore, retry_after_header

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = [
    "API_VERSION",
    "ApiError",
    "ApiSettings",
    "AudioInfo",
    "BatchCreated",
    "BatchRequest",
    "BatchView",
    "ErrorResponse",
    "JobView",
    "ResultView",
    "UploadView",
    "create_app",
    "inspect_audio",
    "serve_in_thread",
]

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
KiB = 1024
MiB = 1024 * KiB
MAX_BATCH_JOBS = 10_000  # hard ceiling of one batch request (the schema's maxItems)
MAX_ERROR_DETAILS = 50  # validation problems listed in one error response
MULTIPART_OVERHEAD_BYTES = 64 * KiB  # boundaries and part headers around an uploaded file
URI_FIELDS = ("input_audio_uri", "voice_prompt_uri", "video_uri", "sync_feature_uri")

# Upload sanity bounds (beyond what the engine accepts anyway).
MIN_UPLOAD_RATE_HZ, MAX_UPLOAD_RATE_HZ = 8_000, 192_000
MAX_UPLOAD_CHANNELS = 8
_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the HTTP layer (tenant quotas live on the tenant record)."""

    max_json_body_bytes: int = 1 * MiB  # POST /v1/jobs and anything not listed below
    max_batch_body_bytes: int = 32 * MiB
    max_batch_jobs: int = MAX_BATCH_JOBS
    batch_chunk_size: int = 500  # jobs per atomic queue write
    max_upload_bytes: int = 100 * MiB
    max_upload_duration_s: float = 600.0
    result_url_expires_s: int = 3600

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_json_body_bytes", 1 * KiB, 64 * MiB),
            ("max_batch_body_bytes", 1 * KiB, 1024 * MiB),
            ("max_batch_jobs", 1, MAX_BATCH_JOBS),
            ("batch_chunk_size", 1, 5000),
            ("max_upload_bytes", 1 * KiB, 5 * 1024 * MiB),
            ("result_url_expires_s", 1, 7 * 24 * 3600),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} {value!r} is invalid: expected an integer in [{low}, {high}]")
        if not (isinstance(self.max_upload_duration_s, int | float) and 0 < self.max_upload_duration_s <= 24 * 3600):
            raise ValueError(
                f"max_upload_duration_s {self.max_upload_duration_s!r} is invalid: expected seconds in (0, 86400]"
            )


# --------------------------------------------------------------------------- wire models


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. invalid_field, rate_limited")
    message: str
    field: str | None = Field(None, description="the request field at fault, if one is")
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorBody


class JobView(BaseModel):
    """A job as its tenant sees it."""

    job_id: str
    status: JobStatus
    stage: str | None = None
    attempts: int = 0
    error: str | None = None
    priority: Priority
    batch_id: str | None = None
    seed: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    result_available: bool = Field(description="GET /v1/jobs/{id}/result will return the result")
    text: str | None = Field(None, description="the text answer of an understanding job")
    spec: dict[str, Any] | None = None

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        text = record.extra.get("text")
        return cls(
            job_id=record.job_id,
            status=record.status,
            stage=record.stage,
            attempts=record.attempts,
            error=record.error,
            priority=record.priority,
            batch_id=record.batch_id,
            seed=record.seed,
            submitted_at=record.submitted_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            cancel_requested=record.cancel_requested,
            result_available=record.status is JobStatus.SUCCEEDED and bool(record.result_uri),
            text=text if isinstance(text, str) else None,
            spec=None if record.spec is None else record.spec.model_dump(mode="json", exclude_none=True),
        )


class BatchRequest(BaseModel):
    """Many jobs submitted as one batch (all of the caller's tenant)."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


class BatchCreated(BaseModel):
    batch_id: str
    total: int
    job_ids: list[str]


class BatchFailureView(BaseModel):
    job_id: str
    status: JobStatus | None
    error: str | None


class BatchView(BaseModel):
    batch_id: str
    total: int
    counts: dict[str, int]
    finished: int
    done: bool
    created_at: float | None
    failures: list[BatchFailureView]
    failures_total: int
    next_offset: int | None

    @classmethod
    def of(cls, status: BatchStatus) -> BatchView:
        return cls(
            batch_id=status.batch_id,
            total=status.total,
            counts={s.value: n for s, n in status.counts.items()},
            finished=status.finished,
            done=status.done,
            created_at=status.created_at,
            failures=[BatchFailureView(job_id=f.job_id, status=f.status, error=f.error) for f in status.failures],
            failures_total=status.failures_total,
            next_offset=status.next_offset,
        )


class CancelView(BaseModel):
    job_id: str
    status: JobStatus
    cancel_requested: bool


class ResultView(BaseModel):
    """Where to fetch a finished job's result (service mode)."""

    job_id: str
    url: str = Field(description="presigned GET URL of the result object")
    expires_s: int
    uri: str
    content_type: str
    sha256: str | None = None
    size_bytes: int | None = None
    metadata_url: str | None = None
    text: str | None = None


class UploadView(BaseModel):
    """An accepted input file: pass `uri` as a job's input."""

    upload_id: str
    uri: str
    size_bytes: int
    sha256: str
    format: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float


class HealthView(BaseModel):
    status: str
    redis: bool


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error response: HTTP status, machine code, message, the field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: Sequence[tuple[str | None, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = list(details)[:MAX_ERROR_DETAILS]
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = ErrorResponse(
            error=ErrorBody(
                code=self.code,
                message=self.message,
                field=self.field,
                details=[ErrorDetail(field=f, message=m) for f, m in self.details],
            )
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=self.status, headers=self.headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "rate_limited",
    503: "unavailable",
}


def _field_of(loc: Sequence[Any]) -> str | None:
    """('body', 'jobs', 3, 'steps') -> 'jobs[3].steps'; ('query', 'limit') -> 'limit'."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or None


def _validation_error(exc: RequestValidationError) -> ApiError:
    problems: list[tuple[str | None, str]] = []
    whole_body = False
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        message = str(err.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error")
            return ApiError(400, "invalid_json", f"the body is not valid JSON: {detail or message}")
        if loc == ("body",):
            whole_body = True
            message = (
                "a JSON body is required (Content-Type: application/json)"
                if kind == "missing"
                else f"the body must be a JSON object: {message}"
            )
        problems.append((_field_of(loc), message))
    field, message = problems[0] if problems else (None, "invalid request")
    if whole_body:
        return ApiError(400, "invalid_body", message)
    summary = f"{field}: {message}" if field else message
    if len(problems) > 1:
        summary += f" (and {len(problems) - 1} more problems)"
    return ApiError(422, "invalid_field", summary, field=field, details=problems)


# Documented error responses of every authenticated route.
def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _STATUS_CODES.get(s, "error")} for s in statuses}


_COMMON_ERRORS = (400, 401, 404, 422, 503)


# --------------------------------------------------------------------------- audio sniffing


@dataclass(frozen=True)
class AudioInfo:
    """What an uploaded audio file turned out to be, after decoding all of it."""

    format: str  # "wav" or "flac"
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _check_wav_header(data: bytes) -> None:
    """Walk a RIFF/WAVE file's chunks and refuse sizes or fields that disagree with the bytes.

    libsndfile quietly tolerates a data chunk that claims more bytes than the file holds, so
    a lying header would otherwise pass as shorter audio."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size + 8 != len(data):
        raise ValueError(f"the RIFF header says {riff_size + 8} bytes but the file has {len(data)}")
    pos, fmt, data_size = 12, None, None
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"a truncated chunk header at byte {pos}")
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if body + size > len(data):
            raise ValueError(f"chunk {chunk_id!r} claims {size} bytes but only {len(data) - body} follow")
        if chunk_id == b"fmt ":
            if size < 16:
                raise ValueError(f"the fmt chunk is {size} bytes; at least 16 expected")
            fmt = struct.unpack_from("<HHIIHH", data, body)
        elif chunk_id == b"data":
            data_size = size
        pos = body + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None or data_size is None:
        raise ValueError("the file lacks a fmt or data chunk")
    tag, channels, rate, byte_rate, block_align, bits = fmt
    if tag not in (_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE):
        raise ValueError(f"WAV encoding 0x{tag:04x} is not supported: use PCM or IEEE float")
    if channels < 1 or bits % 8 or not 8 <= bits <= 64 or block_align != channels * bits // 8:
        raise ValueError(f"inconsistent fmt chunk: {channels} channels x {bits} bits, block align {block_align}")
    if byte_rate != rate * block_align:
        raise ValueError(f"inconsistent fmt chunk: byte rate {byte_rate} != {rate} Hz x {block_align} bytes")
    if data_size % block_align:
        raise ValueError(f"the data chunk ({data_size} bytes) is not a whole number of frames")


def _sf_reason(exc: Exception) -> str:
    """libsndfile's reason without the object repr it prefixes ("Error opening <...>: ")."""
    text = str(exc)
    return text.split(">: ", 1)[1] if text.startswith("Error opening <") and ">: " in text else text


def inspect_audio(data: bytes, *, max_duration_s: float) -> AudioInfo:
    """Decode all of `data` (WAV or FLAC) and return what it is; `ValueError` says why not.

    The header is checked against the bytes (WAV chunk sizes, frames decoded vs frames declared),
    so a file whose header lies about its contents is refused rather than silently shortened."""
    if not data:
        raise ValueError("the file is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"not a readable audio file (WAV or FLAC expected): {_sf_reason(exc)}") from None
    kind = str(info.format).upper()
    if kind not in ("WAV", "FLAC"):
        raise ValueError(f"audio format {kind} is not accepted: upload WAV or FLAC")
    if kind == "WAV":
        _check_wav_header(data)
    if not MIN_UPLOAD_RATE_HZ <= info.samplerate <= MAX_UPLOAD_RATE_HZ:
        raise ValueError(f"sample rate {info.samplerate} Hz is outside [{MIN_UPLOAD_RATE_HZ}, {MAX_UPLOAD_RATE_HZ}]")
    if not 1 <= info.channels <= MAX_UPLOAD_CHANNELS:
        raise ValueError(f"{info.channels} channels; 1-{MAX_UPLOAD_CHANNELS} accepted")
    if info.frames <= 0:
        raise ValueError("the file holds no samples")
    duration_s = info.frames / info.samplerate
    if duration_s > max_duration_s:
        raise ValueError(f"the audio lasts {duration_s:.1f} s; the limit is {max_duration_s:g} s")
    frames = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            for block in handle.blocks(blocksize=65536, dtype="float32", always_2d=True):  # (n, C)
                if not np.isfinite(block).all():
                    raise ValueError("the audio contains NaN or Inf samples")
                frames += block.shape[0]
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"the audio does not decode: {_sf_reason(exc)}") from None
    if frames != info.frames:
        raise ValueError(f"the header declares {info.frames} frames but {frames} decode")
    return AudioInfo(format=kind.lower(), sample_rate=int(info.samplerate), channels=int(info.channels), frames=frames)


# --------------------------------------------------------------------------- ASGI middleware


class _BodyTooLarge(Exception):
    pass


class _BodyLimitMiddleware:
    """Refuse request bodies over a per-path limit with 413 before the app reads them: at once
    when Content-Length says so, mid-stream for chunked bodies."""

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = value
        if length is not None:
            if not length.isdigit():
                await ApiError(400, "bad_request", "Content-Length is not a number").response()(scope, receive, send)
                return
            if int(length) > limit:
                await _too_large(limit, int(length)).response()(scope, receive, send)
                return
        state = {"received": 0, "started": False, "rejected": False}

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    if not state["started"]:
                        state["rejected"] = True
                        await _too_large(limit, None).response()(scope, receive, send)
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["rejected"]:
                return  # the 413 went out; whatever the app answers after the abort is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not state["rejected"]:
                raise


def _too_large(limit: int, size: int | None) -> ApiError:
    got = f" ({size} bytes)" if size is not None else ""
    return ApiError(413, "too_large", f"the request body{got} is over the limit of {limit} bytes")


class _Metrics:
    """Prometheus metrics of the API, on their own registry."""

    def __init__(self, queue: JobQueue) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "audio_omni_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "audio_omni_api_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.submitted = Counter("audio_omni_api_jobs_submitted_total", "Jobs accepted over HTTP", ["kind"], registry=r)
        self.refused = Counter(
            "audio_omni_api_admission_refused_total", "Submissions refused by limits", ["reason"], registry=r
        )
        self.queue_depth = Gauge("audio_omni_queue_depth", "Jobs waiting, by priority", ["priority"], registry=r)
        self._queue = queue

    def render(self) -> bytes:
        try:
            for priority, depth in self._queue.queue_depths().items():
                self.queue_depth.labels(priority=priority).set(depth)
        except redis.RedisError as exc:  # the rest of the metrics are still worth serving
            log.warning("queue depth unavailable for /metrics: %s", exc)
        return generate_latest(self.registry)


class _MetricsMiddleware:
    """Count requests by method, route template and status, and time them."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router leaves the matched route in the scope: label by template, not raw path.
            name = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope.get("method", ""), name, str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)


# --------------------------------------------------------------------------- dependencies

_bearer = HTTPBearer(auto_error=False, description="an API key issued by `audio-omni tenants create`")


def _authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant of the request's bearer key, or 401."""
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = request.app.state.tenants.authenticate(credentials.credentials)
    if tenant is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return tenant


CurrentTenant = Annotated[Tenant, Depends(_authenticate)]
JobId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="job id")]
BatchId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, description="batch id")]


# --------------------------------------------------------------------------- the app


def create_app(
    settings: Settings | None = None,
    *,
    queue: JobQueue,
    storage: Storage,
    tenants: TenantStore,
    api_settings: ApiSettings | None = None,
) -> FastAPI:
    """Build the API over a queue, a storage and a tenant store (all shared by the requests).

    `settings` is kept on `app.state` for introspection; the limits of the HTTP layer come from
    `api_settings`. With a `LocalStorage` (embedded mode) results are served as bytes."""
    limits = api_settings or ApiSettings()
    embedded = isinstance(storage, LocalStorage)
    metrics = _Metrics(queue)

    app = FastAPI(
        title="Audio-Omni jobs API",
        version=API_VERSION,
        description="Submit audio understanding, generation and editing jobs; follow and fetch them.",
    )
    app.state.settings = settings
    app.state.queue = queue
    app.state.storage = storage
    app.state.tenants = tenants
    app.state.api_settings = limits
    app.state.metrics = metrics

    # ----------------------------------------------------------------------- error mapping

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = str(exc.detail) if exc.detail else code
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be parsed (multipart/form-data with a `file` part expected)"
        return ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("Redis error on %s %s: %s", request.method, request.url.path, exc)
        return ApiError(
            503, "unavailable", "the job store is unavailable; retry later", headers={"Retry-After": "5"}
        ).response()

    @app.exception_handler(storage_mod.StorageUnavailable)
    async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
        return ApiError(
            503, "unavailable", "storage is unavailable; retry later", headers={"Retry-After": "5"}
        ).response()

    # ----------------------------------------------------------------------- helpers

    def own_job(tenant: Tenant, job_id: str) -> JobRecord:
        record = None
        try:
            validate_id(job_id, "job_id")
        except ValueError:
            pass
        else:
            record = queue.get(job_id)
        if record is None or record.tenant != tenant.tenant_id:
            raise ApiError(404, "not_found", f"job {job_id!r} not found", field="job_id")
        return record

    def check_input(tenant: Tenant, uri: str, field: str) -> None:
        tid = tenant.tenant_id
        scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
        try:
            if scheme == "s3":
                try:
                    storage.policy.check(uri, tenant=tid)
                except InputNotAllowed:
                    tenant.input_policy().check(uri, tenant=tid)
                return
            if scheme == "file" and isinstance(storage, LocalStorage):
                check_own_local_file(tenant, uri)
                return
        except InputNotAllowed as exc:
            raise ApiError(403, "input_not_allowed", f"{field}: {exc}", field=field) from None
        raise ApiError(
            403,
            "input_not_allowed",
            f"{field}: {uri!r} refused: inputs must be s3:// objects the tenant may read "
            "(upload files with POST /v1/uploads)",
            field=field,
        )

    def own_local_root(tenant: Tenant) -> Path:
        assert isinstance(storage, LocalStorage)
        return (storage.root / f"{storage.prefix}{tenant.tenant_id}").resolve()

    def check_own_local_file(tenant: Tenant, uri: str) -> Path:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InputNotAllowed(uri, "file:// URIs may not name a host, query or fragment")
        path = Path(unquote(parts.path))
        if ".." in path.parts:
            raise InputNotAllowed(uri, "'..' path segments are not allowed")
        if not path.resolve().is_relative_to(own_local_root(tenant)):
            raise InputNotAllowed(uri, "only files under the tenant's own storage prefix may be read")
        return path.resolve()

    def check_spec(tenant: Tenant, spec: JobSpec, where: str = "") -> JobSpec:
        """The spec as it will be queued (tenant filled in), after the tenant's own checks."""
        if "tenant" in spec.model_fields_set and spec.tenant != tenant.tenant_id:
            raise ApiError(
                403,
                "forbidden",
                f"{where}tenant: jobs are submitted for the key's tenant only",
                field=f"{where}tenant",
            )
        if spec.batch_id is not None:
            raise ApiError(
                422,
                "invalid_field",
                f"{where}batch_id: batches are created with POST /v1/batches",
                field=f"{where}batch_id",
            )
        if spec.duration_s > tenant.limits.max_duration_s:
            raise ApiError(
                422,
                "limit_exceeded",
                f"{where}duration_s: {spec.duration_s:g} s is over this tenant's limit of "
                f"{tenant.limits.max_duration_s:g} s",
                field=f"{where}duration_s",
            )
        if spec.steps > tenant.limits.max_steps:
            raise ApiError(
                422,
                "limit_exceeded",
                f"{where}steps: {spec.steps} is over this tenant's limit of {tenant.limits.max_steps}",
                field=f"{where}steps",
            )
        for name in URI_FIELDS:
            uri = getattr(spec, name)
            if uri is not None:
                check_input(tenant, uri, f"{where}{name}")
        return spec.model_copy(update={"tenant": tenant.tenant_id})

    def admit(tenant: Tenant, job_ids: list[str]) -> None:
        try:
            tenants.admit(tenant, job_ids)
        except RateLimited as exc:
            metrics.refused.labels("rate").inc()
            raise ApiError(
                429, "rate_limited", str(exc), headers={"Retry-After": retry_after_header(exc.retry_after_s)}
            ) from None
        except QuotaExceeded as exc:
            metrics.refused.labels("in_flight").inc()
            raise ApiError(
                429, "quota_exceeded", str(exc), headers={"Retry-After": retry_after_header(exc.retry_after_s)}
            ) from None

    # ----------------------------------------------------------------------- routes

    @app.get("/healthz", tags=["ops"], responses=_errors(503))
    def healthz() -> HealthView:
        """Liveness and readiness: the API answers and reaches Redis."""
        try:
            queue.redis.ping()
        except redis.RedisError as exc:
            raise ApiError(503, "unavailable", f"Redis is unreachable: {exc}", headers={"Retry-After": "5"}) from None
        return HealthView(status="ok", redis=True)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    def metrics_endpoint() -> Response:
        """Prometheus metrics: requests, latencies, admissions, queue depth."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/jobs",
        status_code=201,
        tags=["jobs"],
        responses={
            200: {"model": JobView, "description": "an existing job (same idempotency_key)"},
            **_errors(*_COMMON_ERRORS, 403, 413, 429),
        },
    )
    def submit_job(spec: JobSpec, tenant: CurrentTenant, response: Response) -> JobView:
        """Queue one job. The body is a `JobSpec`; a re-submit with the same `idempotency_key`
        returns the existing job (200) instead of a new one (201)."""
        spec = check_spec(tenant, spec)
        job_id = new_job_id()
        admit(tenant, [job_id])
        try:
            record = queue.submit(spec, job_id=job_id)
        except BaseException:
            tenants.release(tenant.tenant_id, [job_id])
            raise
        if record.job_id != job_id:
            tenants.release(tenant.tenant_id, [job_id])
            response.status_code = 200
        else:
            metrics.submitted.labels("job").inc()
        response.headers["Location"] = f"/v1/jobs/{record.job_id}"
        return JobView.of(record)

    @app.post(
        "/v1/batches",
        status_code=201,
        tags=["batches"],
        responses={
            200: {"model": BatchCreated, "description": "the existing batch (same Idempotency-Key)"},
            **_errors(*_COMMON_ERRORS, 403, 413, 429),
        },
    )
    def submit_batch(
        body: BatchRequest,
        tenant: CurrentTenant,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=200,
                pattern=r"^[\x21-\x7e]+$",
                description="re-sending a batch with the same key returns the first one",
            ),
        ] = None,
    ) -> BatchCreated:
        """Queue many jobs as one batch; they are written to the queue in chunks. Item `i` gets the
        job id `{batch_id}-{i}`."""
        if len(body.jobs) > limits.max_batch_jobs:
            raise ApiError(
                413,
                "too_large",
                f"the batch has {len(body.jobs)} jobs; at most {limits.max_batch_jobs} per request",
                field="jobs",
            )
        if len(body.jobs) > tenant.limits.max_in_flight:
            raise ApiError(
                413,
                "too_large",
                f"the batch has {len(body.jobs)} jobs but this tenant may have at most "
                f"{tenant.limits.max_in_flight} in flight; split it",
                field="jobs",
            )
        specs: list[JobSpec] = []
        problems: list[ApiError] = []
        for i, spec in enumerate(body.jobs):
            try:
                specs.append(check_spec(tenant, spec, f"jobs[{i}]."))
            except ApiError as exc:  # report every refused item, not just the first
                problems.append(exc)
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ApiError(
                first.status,
                first.code,
                first.message + more,
                field=first.field,
                details=[(p.field, p.message) for p in problems],
            )
        if idempotency_key is not None:
            batch_id = _idempotent_batch_id(tenant.tenant_id, idempotency_key)
            existing = queue.batch_status(batch_id, limit=1)
            if existing is not None and existing.tenant == tenant.tenant_id:
                if existing.total != len(specs):
                    raise ApiError(
                        409,
                        "conflict",
                        f"Idempotency-Key was used for a batch of {existing.total} jobs, not {len(specs)}",
                        field="Idempotency-Key",
                    )
                response.status_code = 200
                ids = [batch_job_id(batch_id, i) for i in range(existing.total)]
                return BatchCreated(batch_id=batch_id, total=existing.total, job_ids=ids)
        else:
            batch_id = new_batch_id()
        job_ids = [batch_job_id(batch_id, i) for i in range(len(specs))]
        admit(tenant, job_ids)
        try:
            batch_id, job_ids = queue.submit_batch(specs, batch_id=batch_id, chunk_size=limits.batch_chunk_size)
        except InvalidJobSpec as exc:  # not expected: every spec was validated above
            tenants.release(tenant.tenant_id, job_ids)
            raise ApiError(422, "invalid_field", str(exc), details=exc.errors) from None
        except BaseException:
            tenants.release(tenant.tenant_id, job_ids)
            raise
        metrics.submitted.labels("batch").inc(len(job_ids))
        response.headers["Location"] = f"/v1/batches/{batch_id}"
        return BatchCreated(batch_id=batch_id, total=len(job_ids), job_ids=job_ids)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses=_errors(*_COMMON_ERRORS))
    def get_job(job_id: JobId, tenant: CurrentTenant) -> JobView:
        """The job's status, stage, attempts, error and (understanding jobs) text answer."""
        return JobView.of(own_job(tenant, job_id))

    @app.delete(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        responses={
            202: {"model": CancelView, "description": "running: cancel requested"},
            **_errors(*_COMMON_ERRORS, 409),
        },
    )
    def cancel_job(job_id: JobId, tenant: CurrentTenant, response: Response) -> CancelView:
        """Cancel a job: a queued one never runs (200); a running one stops at its next stage (202)."""
        record = own_job(tenant, job_id)
        if record.is_final and record.status is not JobStatus.CANCELLED:
            raise ApiError(409, "conflict", f"job {job_id!r} already {record.status.value}", field="job_id")
        try:
            status = queue.cancel(job_id)
        except JobNotFound:
            raise ApiError(404, "not_found", f"job {job_id!r} not found", field="job_id") from None
        if status is JobStatus.RUNNING:
            response.status_code = 202
        elif status is not JobStatus.CANCELLED:  # it finished between the read and the cancel
            raise ApiError(409, "conflict", f"job {job_id!r} already {status.value}", field="job_id")
        return CancelView(job_id=job_id, status=status, cancel_requested=status is JobStatus.RUNNING)

    @app.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        responses={
            200: {
                "description": "JSON with a presigned URL (S3), or the result's bytes (embedded mode)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ResultView"}},
                    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                    "audio/flac": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(*_COMMON_ERRORS, 409),
        },
    )
    def get_result(job_id: JobId, tenant: CurrentTenant) -> Any:
        """A finished job's result: a presigned URL (service mode) or the bytes (embedded mode)."""
        record = own_job(tenant, job_id)
        if record.status is not JobStatus.SUCCEEDED or not record.result_uri:
            reason = f": {record.error}" if record.error else ""
            raise ApiError(
                409, "not_ready", f"job {job_id!r} is {record.status.value}{reason}; no result", field="job_id"
            )
        key = _own_key(storage, tenant, record.result_uri)
        metadata_uri = record.extra.get("metadata_uri")
        metadata_key = _own_key(storage, tenant, metadata_uri) if isinstance(metadata_uri, str) else None
        text = record.extra.get("text")
        if embedded:
            data = storage.get(key)
            return Response(
                data,
                media_type=storage_mod.content_type_for(key),
                headers={"Content-Disposition": f'attachment; filename="{key.rsplit("/", 1)[-1]}"'},
            )
        info = storage.head(key)
        if info is None:
            raise ApiError(409, "not_ready", f"the result of job {job_id!r} is no longer stored", field="job_id")
        expires_s = limits.result_url_expires_s
        return ResultView(
            job_id=job_id,
            url=storage.url(key, expires_s=expires_s),
            expires_s=expires_s,
            uri=record.result_uri,
            content_type=info.content_type,
            sha256=info.sha256,
            size_bytes=info.size_bytes,
            metadata_url=storage.url(metadata_key, expires_s=expires_s) if metadata_key else None,
            text=text if isinstance(text, str) else None,
        )

    @app.get("/v1/batches/{batch_id}", tags=["batches"], responses=_errors(*_COMMON_ERRORS))
    def get_batch(
        batch_id: BatchId,
        tenant: CurrentTenant,
        offset: Annotated[int, Query(ge=0, le=10**9, description="first failure to list")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="failures per page")] = 100,
    ) -> BatchView:
        """Counts by status, whether the batch is done, and one page of its failed jobs."""
        status = None
        try:
            validate_id(batch_id, "batch_id")
        except ValueError:
            pass
        else:
            status = queue.batch_status(batch_id, offset=offset, limit=limit)
        if status is None or status.tenant != tenant.tenant_id:
            raise ApiError(404, "not_found", f"batch {batch_id!r} not found", field="batch_id")
        return BatchView.of(status)

    @app.post("/v1/uploads", status_code=201, tags=["uploads"], responses=_errors(*_COMMON_ERRORS, 413))
    def upload(
        file: Annotated[UploadFile, File(description="a WAV or FLAC file")], tenant: CurrentTenant
    ) -> UploadView:
        """Store an input audio file under the tenant's prefix; it is decoded in full first.
        Pass the returned `uri` as `input_audio_uri` or `voice_prompt_uri`."""
        data = file.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise ApiError(
                413, "too_large", f"the file is over the limit of {limits.max_upload_bytes} bytes", field="file"
            )
        try:
            info = inspect_audio(data, max_duration_s=limits.max_upload_duration_s)
        except ValueError as exc:
            raise ApiError(422, "invalid_audio", f"file: {exc}", field="file") from None
        upload_id = uuid.uuid4().hex
        key = f"{storage.prefix}{tenant.tenant_id}/uploads/{upload_id}.{info.format}"
        stored = storage.put(key, data)
        return UploadView(
            upload_id=upload_id,
            uri=storage.uri(key),
            size_bytes=stored.size_bytes,
            sha256=stored.sha256 or "",
            format=info.format,
            sample_rate=info.sample_rate,
            channels=info.channels,
            frames=info.frames,
            duration_s=round(info.duration_s, 6),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal", "internal error; it was logged").response()

    def body_limit(path: str) -> int:
        if path == "/v1/uploads":
            return limits.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        if path == "/v1/batches":
            return limits.max_batch_body_bytes
        return limits.max_json_body_bytes

    app.add_middleware(_BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


def _idempotent_batch_id(tenant_id: str, key: str) -> str:
    """A batch id derived from the tenant and its idempotency key (distinct across tenants)."""
    return "b" + hashlib.sha256(f"{tenant_id}\0{key}".encode()).hexdigest()[:31]


def _own_key(storage: Storage, tenant: Tenant, uri: str) -> str:
    """The storage key of a result URI, checked to lie under the tenant's own prefix."""
    own = f"{storage.prefix}{tenant.tenant_id}/"
    key: str | None = None
    if isinstance(storage, S3Storage):
        head = f"s3://{storage.bucket}/"
        if uri.startswith(head):
            key = uri[len(head) :]
    elif isinstance(storage, LocalStorage):
        parts = urlsplit(uri)
        if parts.scheme == "file":
            path = Path(unquote(parts.path)).resolve()
            if path.is_relative_to(storage.root):
                key = path.relative_to(storage.root).as_posix()
    if key is None or not key.startswith(own):
        raise ApiError(404, "not_found", "the result is not stored where this API can serve it")
    return key


@contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` with uvicorn on a background thread and yield its base URL (`port=0` picks a
    free port). For tests and for embedding the API in another process; stops on exit."""
    import uvicorn

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is invalid: expected an integer in [0, 65535]")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
