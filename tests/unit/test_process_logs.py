"""The failure excerpt of a subprocess log keeps the traceback that Ray's warnings scrolled away."""

from __future__ import annotations

from tests.process_logs import log_excerpt


def test_a_traceback_far_above_the_tail_is_kept(tmp_path):
    log = tmp_path / "engine.log"
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: the real reason\n'
    log.write_text("starting\n" + trace + "WARNING queue length\n" * 500)
    excerpt = log_excerpt(log, tail=200)
    assert "RuntimeError: the real reason" in excerpt and excerpt.endswith("WARNING queue length\n")


def test_without_a_traceback_only_the_tail(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("a" * 100 + "b" * 50)
    assert log_excerpt(log, tail=50) == "b" * 50
    assert log_excerpt(tmp_path / "missing.log") == ""
