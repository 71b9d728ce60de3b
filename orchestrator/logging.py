"""structlog JSON logs. Bind `job_id`, `batch_id`, `tenant`, `stage` on the logger of a job.

`configure(json=True)` once per process (the CLI does it); `get_logger(name)` anywhere.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

_configured = False


def configure(*, json: bool = True, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog to `stream` (stderr) as one JSON object per line (or a console format)."""
    global _configured
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"level must be one of DEBUG, INFO, WARNING, ERROR, got {level!r}")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream) if stream is not None else _StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _configured = True


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
        configure(level="WARNING")
    return structlog.get_logger().bind(logger=name, **bound)
