"""Errors of the HTTP API: the body models, and the handlers that turn every failure into one shape,
`{"error": {"code", "message", "field", "details", "request_id"}}`. The exception itself is
`orchestrator.api_errors.ApiError`, shared with the SDK. `request_id` is the request's
`X-Request-ID` (`orchestrator.api.middleware.RequestIdMiddleware`): a user quotes it, an operator
finds every log line of the request by it. Redis unreachable (refused, timed out, loading) is a 503
`unavailable` with `Retry-After` on every route, never a 500."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api_errors import ApiError
from orchestrator.logging import current_request_id, get_logger
from orchestrator.storage import StorageUnavailable

__all__ = [
    "COMMON_ERRORS",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "ErrorResponse",
    "documented",
    "error_response",
    "install_error_handlers",
    "internal_error",
    "problems_error",
    "redis_unavailable",
    "validation_problems",
]

log = get_logger("api.errors")

STATUS_CODES = {
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
COMMON_ERRORS = (400, 401, 404, 422, 503)  # documented on every authenticated route
RETRY_LATER = {"Retry-After": "5"}


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. invalid_field, rate_limited")
    message: str
    field: str | None = Field(None, description="the request field at fault, if one is")
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = Field(None, description="this request's X-Request-ID: quote it when reporting a problem")


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorBody


def error_response(exc: ApiError, request_id: str | None = None) -> JSONResponse:
    """The JSON response of an `ApiError`, carrying the request's id (default: the one bound in
    this context by the request-id middleware)."""
    body = ErrorResponse(
        error=ErrorBody(
            code=exc.code,
            message=exc.message,
            field=exc.field,
            details=[ErrorDetail(field=d["field"], message=d["message"] or "") for d in exc.details],
            request_id=request_id or current_request_id(),
        )
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=exc.status, headers=exc.headers)


def internal_error(request_id: str | None) -> ApiError:
    """The 500 of an unexpected failure: the user gets the request id to quote, the log the traceback."""
    where = f"quote request id {request_id} when reporting it" if request_id else "it was logged"
    return ApiError(500, "internal", f"internal error; {where}")


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses (all in the one error shape)."""
    return {s: {"model": ErrorResponse, "description": STATUS_CODES.get(s, "error")} for s in statuses}


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


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str | None, str]]:
    """One `(field, message)` per error of a pydantic validation of a part of the body, its field
    named as in a whole-body error (`prefix` = `jobs[3]` gives `jobs[3].steps[1].prompt`)."""
    problems: list[tuple[str | None, str]] = []
    for err in exc.errors(include_url=False):
        message = str(err.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        field = _field_of(tuple(err.get("loc", ())))
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        problems.append((field, message))
    return problems


def problems_error(
    problems: Sequence[tuple[str | None, str]], status: int = 422, code: str = "invalid_field"
) -> ApiError:
    """One error listing every problem; its message and field are the first problem's."""
    field, message = problems[0] if problems else (None, "invalid request")
    summary = f"{field}: {message}" if field else message
    if len(problems) > 1:
        summary += f" (and {len(problems) - 1} more problems)"
    return ApiError(status, code, summary, field, details=problems)


def validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation failure as a 400 (unreadable body) or 422 listing every field at fault."""
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
    if whole_body:
        return ApiError(400, "invalid_body", problems[0][1])
    return problems_error(problems)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(cast(ApiError, exc))  # registered for ApiError only


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    return error_response(validation_error(cast(RequestValidationError, exc)))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    http_exc = cast(StarletteHTTPException, exc)  # registered for HTTPException only
    code = STATUS_CODES.get(http_exc.status_code, "error")
    message = str(http_exc.detail) if http_exc.detail else code
    if http_exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif http_exc.status_code == 400 and "parsing the body" in message:
        message = "the request body could not be parsed (multipart/form-data with a `file` part expected)"
    return error_response(ApiError(http_exc.status_code, code, message, headers=dict(http_exc.headers or {})))


def redis_unavailable() -> ApiError:
    """The 503 of a Redis that refuses, times out or is still loading its data."""
    return ApiError(503, "unavailable", "the job store is unavailable; retry later", headers=RETRY_LATER)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("Redis unavailable", method=request.method, path=request.url.path, error=str(exc))
    return error_response(redis_unavailable())


async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("storage unavailable", method=request.method, path=request.url.path, error=str(exc))
    return error_response(ApiError(503, "unavailable", "storage is unavailable; retry later", headers=RETRY_LATER))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Reached only outside the request-id middleware (it answers unexpected errors itself).
    log.exception("unhandled error", method=request.method, path=request.url.path)
    return error_response(internal_error(current_request_id()))


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure a request can meet to the one error shape (client input never a 500)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(redis.RedisError, _redis_down)
    app.add_exception_handler(StorageUnavailable, _storage_down)
    app.add_exception_handler(Exception, _unexpected)
