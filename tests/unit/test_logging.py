"""`orchestrator.logging`: loggers write to the `sys.stderr` of the moment they log."""

from __future__ import annotations

import contextlib
import io
import json

from orchestrator.logging import configure, get_logger


def test_a_logger_follows_stderr_after_it_is_swapped_back(capsys):
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):  # e.g. an in-process CLI run under a test's capture
        configure(json=True, level="INFO")
        get_logger("t").info("inside", n=1)
    assert json.loads(captured.getvalue())["event"] == "inside"
    captured.close()  # a test's capture closed: the logger must not stay bound to it
    get_logger("t").info("after", n=2)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "after" and line["n"] == 2 and line["logger"] == "t"


def test_standard_library_loggers_render_the_same_json_with_the_bound_context():
    """uvicorn's, redis' and Ray's loggers (the standard library) go through the same renderer, and
    context bound for a request (its id) reaches their lines and structlog's alike."""
    import logging

    import uvicorn

    from orchestrator.logging import bind_context, current_request_id, unbind_context

    # A server configured by uvicorn's own logging config earlier in the process (as in-process test
    # servers are) leaves its loggers with handlers, levels and no propagation: configure() undoes it.
    uvicorn.Config(app=lambda *args: None, log_level="warning")
    stream = io.StringIO()
    configure(json=True, level="INFO", stream=stream)
    try:
        tokens = bind_context(request_id="r-42")
        assert current_request_id() == "r-42"
        logging.getLogger("uvicorn.error").warning("slow %s", "client")
        get_logger("api").info("handled", status=200)
        unbind_context(tokens)
        assert current_request_id() is None
        logging.getLogger("uvicorn.error").info("after")
        logging.getLogger("uvicorn.error").debug("hidden")  # below the level
    finally:
        configure(json=True, level="WARNING")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "slow client" and first["logger"] == "uvicorn.error" and first["level"] == "warning"
    assert first["request_id"] == "r-42" and "timestamp" in first
    assert second == {**second, "event": "handled", "request_id": "r-42", "status": 200}
    assert third["event"] == "after" and "request_id" not in third


def test_configure_refuses_an_unknown_level():
    import pytest

    with pytest.raises(ValueError, match="level must be one of"):
        configure(level="LOUD")
