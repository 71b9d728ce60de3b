"""`audio-omni-train evaluate`: held-out figures of the `small` model's weights (`training.evaluate`).

    audio-omni-train evaluate [--weights model/data/small/model.safetensors] [--pairs 20] [--cfg-scale 3]
    audio-omni-train evaluate --only understanding [--scenes 40] [--describe-cfg-scale 7]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    from training.evaluate import DEFAULT_WEIGHTS  # numpy only: keeps --help free of torch

    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="the small model's model.safetensors")
    parser.add_argument("--pairs", type=int, default=20, help="held-out edit pairs")
    parser.add_argument("--per-class", type=int, default=4, help="held-out real samples per class")
    parser.add_argument("--clips-per-class", type=int, default=4, help="text-to-audio clips per class prompt")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=40, help="held-out understanding scenes with an event")
    parser.add_argument("--describe-cfg-scale", type=float, default=7.0, help="CFG of the describe -> generate chain")
    parser.add_argument("--only", choices=("all", "understanding"), default="all", help="which figures to compute")


def run(args: argparse.Namespace) -> int:
    from training.evaluate import EvalSettings, evaluate_small

    settings = EvalSettings(
        weights=Path(args.weights),
        pairs=args.pairs,
        per_class=args.per_class,
        clips_per_class=args.clips_per_class,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        threads=args.threads,
        scenes=args.scenes,
        describe_cfg_scale=args.describe_cfg_scale,
        only=args.only,
    )
    print(json.dumps(evaluate_small(settings)))
    return 0
