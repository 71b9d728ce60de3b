"""`audio-omni-train small thinker` / `small thinker-export`: the embedded model's thinker
(`training.recipes.thinker`), registered as two more phases of `audio-omni-train small`.

    audio-omni-train small thinker --work .thinker_run --minutes 40 [--pairs 700 --batch 8 --threads 2]
    audio-omni-train small thinker-export --work .thinker_run --dst model/data/small

The last line each phase prints is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PHASES = ("thinker", "thinker-export")


def add_parsers(sub: Any) -> None:
    """Add the two phases to the `small` command's sub-parsers."""
    p = sub.add_parser("thinker", help="train the thinker to answer questions about the generated scenes (Ray Train)")
    p.add_argument("--work", default=".thinker_run", help="working folder (scenes, features, trained tensors)")
    p.add_argument("--weights", default=None, help="checkpoint whose thinker is trained (default: the committed one)")
    p.add_argument("--minutes", type=float, default=40.0, help="training wall-time budget (minutes)")
    p.add_argument("--pairs", type=int, default=700, help="training scenes with an event")
    p.add_argument("--per-class", type=int, default=16, help="generated sounds per class")
    p.add_argument("--heldout-pairs", type=int, default=40, help="held-out scenes checked at the end")
    p.add_argument("--batch", type=int, default=8, help="scenes per step")
    p.add_argument("--text-batch", type=int, default=4, help="text-only reasoning examples per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training worker")
    p.add_argument("--workers", type=int, default=2, help="synthesis processes")
    p.add_argument("--save-every-s", type=float, default=120.0, help="write the trained tensors this often (s)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: time alone)")
    p.add_argument(
        "--kind-weight",
        action="append",
        default=[],
        metavar="KIND=W",
        help="how often a question kind is drawn (repeatable; the others keep their default)",
    )
    p.add_argument("--audio-lr-scale", type=float, default=1.0, help="the audio encoder's lr relative to --lr")
    p.add_argument(
        "--probe-steps", type=int, default=0, help="steps of the audio-tower probe alone before the answer loss"
    )
    p.add_argument("--probe-weight", type=float, default=0.0, help="the probe loss's weight beside the answer loss")
    p.add_argument("--resume", action="store_true", help="continue from the trained tensors in --work")
    p.add_argument("--in-process", action="store_true", help="train in this process instead of on Ray Train")
    e = sub.add_parser("thinker-export", help="put the trained thinker tensors into --dst/model.safetensors")
    e.add_argument("--work", default=".thinker_run", help="the `small thinker` working folder")
    e.add_argument(
        "--weights", default=None, help="checkpoint the other tensors come from (default: the committed one)"
    )
    e.add_argument("--dst", default="model/data/small", help="destination folder")


def run(args: argparse.Namespace) -> int:
    from training.recipes import thinker, thinker_data

    weights = Path(args.weights) if args.weights else thinker.DEFAULT_WEIGHTS
    kinds = dict(thinker_data.QUESTION_KINDS)
    for item in getattr(args, "kind_weight", []):
        kind, _, value = item.partition("=")
        if kind not in kinds:
            raise SystemExit(f"--kind-weight {item!r}: unknown kind; known: {', '.join(kinds)}")
        try:
            kinds[kind] = float(value)
        except ValueError:
            raise SystemExit(f"--kind-weight {item!r}: the weight must be a number") from None
    result: dict[str, Any]
    if args.phase == "thinker-export":
        result = thinker.phase_export(Path(args.work), Path(args.dst), weights)
    else:
        settings = thinker.ThinkerRun(
            work=Path(args.work),
            weights=weights,
            minutes=args.minutes,
            pairs=args.pairs,
            per_class=args.per_class,
            heldout_pairs=args.heldout_pairs,
            batch=args.batch,
            text_batch=args.text_batch,
            lr=args.lr,
            threads=args.threads,
            workers=args.workers,
            save_every_s=args.save_every_s,
            max_steps=args.max_steps,
            resume=args.resume,
            kind_weights=tuple(kinds.items()),
            audio_lr_scale=args.audio_lr_scale,
            probe_steps=args.probe_steps,
            probe_weight=args.probe_weight,
        )
        result = thinker.phase_thinker(settings, in_process=args.in_process)
    print(json.dumps(result))
    return 0
