"""structlog JSON logs, one object per line on stderr, for every process (API, engine, batch).

`configure(json=True)` once per process (the CLI does it): structlog's loggers and the standard
library's (uvicorn, Ray's client, redis) then render the same way, with the context bound by
`bind_context` merged in: the API binds `request_id` per request, the engine `job_id`, `batch_id`,
`tenant` per job. `get_logger(name)` anywhere.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger, Processor

__all__ = ["bind_context", "configure", "current_request_id", "get_logger", "unbind_context"]

_configured = False


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure(*, json: bool = True, level: str = "INFO", stream: TextIO | None = None, stdlib: bool = True) -> None:
    """Route structlog (and with `stdlib`, the standard library's logging, through a root handler)
    to `stream` (the current stderr) as one JSON object per line (or a console format)."""
    global _configured
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"level must be one of DEBUG, INFO, WARNING, ERROR, got {level!r}")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream) if stream is not None else _StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _configured = True
    if not stdlib:
        return
    handler = logging.StreamHandler(stream if stream is not None else _CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared_processors(), structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.set_name("audio-omni")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "audio-omni"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # uvicorn's own logging config (applied when a server was started with it earlier in this
    # process) gives its loggers plain-text handlers, levels of their own and stops them
    # propagating: undo that, so their lines go through the root handler and level above like
    # every other library's.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        for old in list(named.handlers):
            named.removeHandler(old)
        named.setLevel(logging.NOTSET)
        named.propagate = True


def bind_context(**values: Any) -> dict[str, Any]:
    """Bind `values` into every log line of this context (task or thread); returns the tokens for
    `unbind_context`."""
    return dict(structlog.contextvars.bind_contextvars(**values))


def unbind_context(tokens: dict[str, Any]) -> None:
    """Put the context back as it was before `bind_context` returned `tokens`."""
    structlog.contextvars.reset_contextvars(**tokens)


def current_request_id() -> str | None:
    """The request id bound in this context (the API's middleware binds it), if any."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return None if value is None else str(value)


class _CurrentStderr:
    """A stream that writes to whatever `sys.stderr` is at the time (see `_StderrLogger`)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StderrLoggerFactory:
    """Loggers that write to whatever `sys.stderr` is when they log, not when `configure` ran (a
    test's captured stream, swapped back afterwards, must not stay bound to a closed file)."""

    def __call__(self, *args: Any) -> _StderrLogger:
        return _StderrLogger()


class _StderrLogger:
    """One JSON line per call, to the current `sys.stderr`; a lock keeps threads' lines whole."""

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


def get_logger(name: str, **bound: Any) -> FilteringBoundLogger:
    """A structlog logger with `logger=name` and any extra fields bound."""
    if not _configured:
        configure(level="WARNING", stdlib=False)
    return structlog.get_logger().bind(logger=name, **bound)
