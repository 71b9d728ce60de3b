"""What a test shows of a subprocess's log when it fails: its last Python traceback, if any, then its
tail. A log's tail alone is often Ray's repeated warnings, with the reason the process ended scrolled
out of sight."""

from __future__ import annotations

from pathlib import Path

TRACEBACK = "Traceback (most recent call last):"


def log_excerpt(log: Path | str, tail: int = 3000, traceback_chars: int = 6000) -> str:
    """The last traceback in `log` (at most `traceback_chars`, from its start) and its last `tail`
    characters; just the tail when there is no traceback or the tail already holds it."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    end = text[-tail:]
    start = text.rfind(TRACEBACK)
    if start < 0 or start >= len(text) - tail:
        return end
    return f"{text[start : start + traceback_chars]}\n[...]\n{end}"
