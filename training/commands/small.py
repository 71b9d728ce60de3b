"""`audio-omni-train small PHASE`: the embedded `small` model's recipe (`training.recipes.small`).

    audio-omni-train small features --work .small_run
    audio-omni-train small codec --work .small_run --pairs 320 [--device cpu --threads 2 --workers 2]
    audio-omni-train small dit --work .small_run --pairs 320 --dit-s 3300 [--batch 24 --event-weight 4]
    audio-omni-train small train ...      (codec, then dit)
    audio-omni-train small export --work .small_run --dst model/data/small

`scripts/train_small.sh` runs every phase as the committed weights were made. The last line each
phase prints is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from training.commands import thinker as thinker_phases

PHASES = ("features", "codec", "dit", "train", "export")


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="phase", required=True, metavar="PHASE")
    features = sub.add_parser("features", help="thinker rows of every prompt and the thinker's weights")
    features.add_argument("--work", default=".small_run", help="working folder (features, sounds)")
    for phase, help_text in (
        ("codec", "fit the codec's per-band statistics on the training pairs"),
        ("dit", "train the DiT and conditioner heads (time-boxed)"),
        ("train", "codec, then dit"),
    ):
        p = sub.add_parser(phase, help=help_text)
        _add_data_arguments(p)
        if phase != "codec":
            _add_dit_arguments(p)
    export = sub.add_parser("export", help="released-name safetensors + config.json under --dst")
    export.add_argument("--work", default=".small_run", help="working folder (features, sounds)")
    export.add_argument("--out", default=None, help="where the state files are (default --work)")
    export.add_argument("--dst", default="model/data/small", help="destination folder")
    thinker_phases.add_parsers(sub)  # `thinker`, `thinker-export` (training.commands.thinker)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", default=".small_run", help="working folder (features, sounds)")
    p.add_argument("--out", default=None, help="where the state files go (default --work)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="synthesis processes")
    p.add_argument("--pairs", type=int, default=160)
    p.add_argument("--per-class", type=int, default=12)


def _add_dit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dit-s", type=float, default=3000.0, help="DiT training wall-time budget (s)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate after warm-up")
    p.add_argument("--save-every-s", type=float, default=600.0, help="EMA snapshot to --out this often (s)")
    p.add_argument(
        "--event-weight",
        type=float,
        default=1.0,
        help="loss weight of the event's latent frames in remove/extract examples (1 = plain MSE)",
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.phase in thinker_phases.PHASES:
        return thinker_phases.run(args)
    from training.recipes import small

    if args.phase == "features":
        result = small.phase_features(Path(args.work))
    elif args.phase == "export":
        result = small.phase_export(Path(args.work), Path(args.dst), Path(args.out or args.work))
    else:
        dit = {
            k: getattr(args, k) for k in ("batch", "dit_s", "lr", "save_every_s", "event_weight") if hasattr(args, k)
        }
        settings = small.SmallRun(
            work=Path(args.work),
            out=None if args.out is None else Path(args.out),
            device=args.device,
            threads=args.threads,
            workers=args.workers,
            pairs=args.pairs,
            per_class=args.per_class,
            **dit,
        )
        phase = {"codec": small.phase_codec, "dit": small.phase_dit, "train": small.phase_train}[args.phase]
        result = phase(settings)
    print(json.dumps(result))
    return 0
