"""ASGI middleware of the API: request ids (and one log line per request), a per-path request
body limit, and request metrics. Outermost first: RequestId, Metrics, BodyLimit."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_response, internal_error
from orchestrator.api_errors import ApiError
from orchestrator.logging import bind_context, get_logger, unbind_context
from orchestrator.metrics import ApiMetrics

__all__ = ["REQUEST_ID_HEADER", "BodyLimitMiddleware", "MetricsMiddleware", "RequestIdMiddleware", "request_id_of"]

REQUEST_ID_HEADER = "X-Request-ID"
# An id a client or a proxy sent is kept when it is this tame; anything else is replaced by a new one.
QUIET_PATHS = frozenset({"/healthz", "/metrics"})  # probes and scrapes: logged at debug when they succeed
_GIVEN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


def request_id_of(given: str | None) -> str:
    """The request's id: the client's `X-Request-ID` when it is 1-128 plain characters, else a new one."""
    if given is not None and _GIVEN_ID_RE.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Take the request's `X-Request-ID` (or make one), return it on every response, bind it into
    the logging context for the request's log lines (and error bodies), log one line per request,
    and answer an unexpected failure with a 500 that carries the id instead of a bare crash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = get_logger("api.request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
        request_id = request_id_of(given)
        scope.setdefault("state", {})["request_id"] = request_id
        tokens = bind_context(request_id=request_id)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            self.log.exception("unhandled error", method=scope.get("method"), path=scope.get("path"))
            if state["status"] is None:
                await error_response(internal_error(request_id), request_id)(scope, receive, send_with_id)
        finally:
            route: Any = scope.get("route")
            path = scope.get("path", "")
            log = self.log.debug if path in QUIET_PATHS and state["status"] == 200 else self.log.info
            log(
                "request",
                method=scope.get("method"),
                path=path,
                route=getattr(route, "path", None),
                status=state["status"],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            unbind_context(tokens)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int, size: int | None) -> ApiError:
    got = f" ({size} bytes)" if size is not None else ""
    return ApiError(413, "too_large", f"the request body{got} is over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over a per-path limit with 413 before the app reads them: at once
    when Content-Length says so, mid-stream for chunked bodies."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
                await error_response(ApiError(400, "bad_request", "Content-Length is not a number"))(
                    scope, receive, send
                )
                return
            if int(length) > limit:
                await error_response(_too_large(limit, int(length)))(scope, receive, send)
                return
        state = {"received": 0, "started": False, "rejected": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    if not state["started"]:
                        state["rejected"] = True
                        await error_response(_too_large(limit, None))(scope, receive, send)
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
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


class MetricsMiddleware:
    """Count requests by method, route template and status, and time them."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router leaves the matched route in the scope: label by template, not raw path.
            route: Any = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope.get("method", ""), name, str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
