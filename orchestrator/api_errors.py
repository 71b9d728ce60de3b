"""`ApiError`: one class for an error response of the HTTP API, on both sides of the wire.

The server (`orchestrator.api`) raises it and renders it as `{"error": {"code", "message", "field",
"details", "request_id"}}`; the SDK (`orchestrator.client`) raises it for such a response. It lives here, apart
from both, so the SDK can import it without FastAPI and the server without httpx.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MAX_ERROR_DETAILS", "ApiError"]

MAX_ERROR_DETAILS = 50  # problems listed in one error response


class ApiError(Exception):
    """An error response: HTTP status, machine code, message, the request field at fault.

    `details` lists every problem as `{"field": ..., "message": ...}` (given as such mappings or as
    `(field, message)` pairs); `headers` are sent with the response (e.g. `Retry-After`);
    `retry_after_s` is the `Retry-After` a client received (or the header's value when the server
    sets one); `request_id` the `X-Request-ID` of the request a client got this error for (quote it
    when reporting a problem; the server fills it into the body from the request's context)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        details: Iterable[tuple[str | None, str] | Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details: list[dict[str, str | None]] = [_detail(d) for d in details][:MAX_ERROR_DETAILS]
        self.headers = dict(headers or {})
        if retry_after_s is None and self.headers.get("Retry-After", "").isdigit():
            retry_after_s = float(self.headers["Retry-After"])
        self.retry_after_s = retry_after_s
        self.request_id = request_id


def _detail(item: tuple[str | None, str] | Mapping[str, Any]) -> dict[str, str | None]:
    if isinstance(item, Mapping):
        field = item.get("field")
        return {"field": None if field is None else str(field), "message": str(item.get("message", ""))}
    field, message = item
    return {"field": field, "message": message}
