"""One delivery attempt over HTTP: check and resolve the URL, sign, POST to the checked address.

The connection goes to the address `targets.resolve_webhook_target` checked, with the host name in
`Host` and, for https, as the TLS server name (SNI and certificate check; httpcore's `sni_hostname`
extension). Redirects are not followed, proxies from the environment are not used (a proxy would
choose the address itself) and connections are not kept alive (a pooled connection is keyed by the
address, and two host names on one address must not share a TLS session). Only the status line is
awaited; at most `MAX_ERROR_BODY_BYTES` of a failed response's body are read, for the error.

httpx's timeouts bound each connect, read and write, not the whole exchange: a receiver that sends
a byte now and then could hold a worker forever. So each attempt also has a deadline
(`WebhookSettings.attempt_deadline_s`) after which its socket is shut down.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.webhooks.settings import WebhookSettings
from orchestrator.webhooks.signing import webhook_headers
from orchestrator.webhooks.targets import (
    Resolver,
    WebhookHostUnresolved,
    WebhookTargetRefused,
    resolve_webhook_target,
)

__all__ = ["AttemptResult", "Sender"]

MAX_ERROR_BODY_BYTES = 200


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt came to. `permanent`: retrying cannot help (410 Gone, a refused URL)."""

    delivered: bool
    status_code: int | None = None
    error: str = ""
    permanent: bool = False


class Sender:
    """Sends signed deliveries; thread-safe (one `httpx.Client` shared by the dispatcher's workers)."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        self.settings = settings
        self._resolver = resolver
        verify: ssl.SSLContext | bool = True
        if settings.ca_bundle:
            verify = ssl.create_default_context(cafile=settings.ca_bundle)
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            follow_redirects=False,
            trust_env=False,
            verify=verify,
            limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=0),
        )

    def close(self) -> None:
        self._client.close()

    def send(self, url: str, msg_id: str, body: str, secrets: Sequence[str]) -> AttemptResult:
        """POST `body` to `url` signed with `secrets` as delivery `msg_id`."""
        try:
            target = resolve_webhook_target(url, self.settings, resolver=self._resolver)
        except WebhookHostUnresolved as exc:
            return AttemptResult(False, error=str(exc))
        except WebhookTargetRefused as exc:
            return AttemptResult(False, error=str(exc), permanent=True)
        content = body.encode("utf-8")
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "user-agent": self.settings.user_agent,
            **webhook_headers(secrets, msg_id, int(time.time()), content),
        }
        deadline = _Deadline(self.settings.attempt_deadline_s)
        extensions: dict[str, Any] = {"trace": deadline.trace}
        if target.server_name:
            extensions["sni_hostname"] = target.server_name
        try:
            with (
                deadline,
                self._client.stream(
                    "POST", target.connect_url, content=content, headers=headers, extensions=extensions
                ) as response,
            ):
                code = response.status_code
                if 200 <= code < 300:
                    return AttemptResult(True, status_code=code)
                snippet = _head(response)
        except httpx.HTTPError as exc:
            if deadline.fired:
                limit = self.settings.attempt_deadline_s
                return AttemptResult(False, error=f"no complete answer from {target.address} within {limit:g} s")
            if isinstance(exc, httpx.TimeoutException):
                return AttemptResult(False, error=f"timed out ({type(exc).__name__}) sending to {target.address}")
            return AttemptResult(False, error=f"{type(exc).__name__} sending to {target.address}: {exc}")
        if 300 <= code < 400:
            where = response.headers.get("location", "")
            return AttemptResult(False, code, f"the receiver redirected to {where[:200]!r}; redirects are not followed")
        if code == 410:
            return AttemptResult(False, code, "the receiver answered 410 Gone: no further attempts", permanent=True)
        return AttemptResult(False, code, f"the receiver answered HTTP {code}" + (f": {snippet}" if snippet else ""))


class _Deadline:
    """Shuts the attempt's socket down when `seconds` have passed (httpcore's `trace` extension
    hands over the connected stream, whose socket this holds)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # the TCP stream, then (https) the TLS stream that took its file descriptor over
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock if isinstance(sock, socket.socket) else None
                if self.fired:
                    self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # already closed: the attempt is over anyway
                self._sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _head(response: httpx.Response) -> str:
    """The first bytes of a response body as text (for an error message), without reading the rest."""
    data = b""
    try:
        for chunk in response.iter_raw():
            data += chunk
            if len(data) >= MAX_ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass  # the status line already says what matters; a broken body adds nothing
    return data[:MAX_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
