"""ASGI middleware of the API: a per-path request body limit, and request metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_response
from orchestrator.api_errors import ApiError
from orchestrator.metrics import ApiMetrics

__all__ = ["BodyLimitMiddleware", "MetricsMiddleware"]


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
