"""Held-out figures of the embedded `small` model, as one run: understanding (class named, false-class
rate, background, yes/no, refusals), the describe -> generate chain, and the edit and text-to-audio
figures. The same measurement as `audio-omni-train evaluate` (`training.evaluate`), kept here beside
the other benchmarks; the last line printed is one JSON object.

Run: `.venv/bin/python bench/eval_small.py [--cfg-scale 3] [--scenes 40] [--weights PATH]`
(about 5 minutes on two CPU cores). docs/model.md records the figures of the committed weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from training.commands.evaluate import add_arguments, run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "eval_small")
    parser.set_defaults(cfg_scale=3.0)  # the CFG the edit and text-to-audio bars are set at
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
