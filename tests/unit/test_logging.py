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
