"""`audio-omni-train synth|precompute`: build edit-pair datasets as Ray Data bulk jobs.

    audio-omni-train synth --foreground DIR_OR_URI --background DIR_OR_URI --pairs N --out DIR_OR_S3_URI
    audio-omni-train precompute --data DIR_OR_S3_URI [--preset tiny | --config C] [--weights W]

Both are resumable: rerunning the same command skips finished shards.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

from training.commands import comma_list

if TYPE_CHECKING:
    from training.synth import SynthSettings


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "synth":
        add_synth_arguments(parser)
    else:
        add_precompute_arguments(parser)


def add_synth_arguments(synth: argparse.ArgumentParser) -> None:
    synth.add_argument("--foreground", required=True, help="folder or s3://bucket/prefix of LABEL/*.wav events")
    synth.add_argument("--background", required=True, help="folder or s3://bucket/prefix of background clips")
    synth.add_argument("--pairs", type=int, required=True, help="number of pairs (each gives 4 examples)")
    synth.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--shard-size", type=int, default=16, help="pairs per shard (default 16)")
    synth.add_argument("--clip-s", type=float, default=10.0, help="clip length in seconds (default 10)")
    synth.add_argument("--min-event-dbfs", type=float, default=-45.0, help="energy filter threshold")
    synth.add_argument(
        "--speech-labels",
        type=comma_list,
        default="speech",
        help="comma-separated class folders whose events must hold speech (silero-vad); '' for none",
    )
    synth.add_argument("--min-speech-ratio", type=float, default=0.2, help="share of a speech event that is speech")
    synth.add_argument("--clap-weights", default=None, help="local CLAP folder; without it the filter is skipped")
    synth.add_argument("--clap-min-score", type=float, default=0.1)
    synth.add_argument("--workers", type=int, default=2, help="Ray Data actors (default 2)")
    synth.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
    synth.add_argument("--no-progress", action="store_true")


def add_precompute_arguments(pre: argparse.ArgumentParser) -> None:
    pre.add_argument("--data", required=True, help="dataset folder or s3://bucket/prefix")
    pre.add_argument("--preset", default="tiny")
    pre.add_argument("--config", default=None, help="model_config.json (overrides --preset)")
    pre.add_argument("--weights", default=None, help="checkpoint whose thinker and VAE encode")
    pre.add_argument("--workers", type=int, default=1, help="encoder actors (default 1)")
    pre.add_argument("--s3-endpoint", default=None)
    pre.add_argument("--no-progress", action="store_true")


def synth_settings(args: argparse.Namespace) -> SynthSettings:
    """The `SynthSettings` that `synth` arguments ask for (validated there)."""
    from training.synth import SynthSettings

    return SynthSettings(
        foreground=args.foreground,
        background=args.background,
        pairs=args.pairs,
        seed=args.seed,
        shard_size=args.shard_size,
        clip_s=args.clip_s,
        min_event_dbfs=args.min_event_dbfs,
        speech_labels=args.speech_labels,
        min_speech_ratio=args.min_speech_ratio,
        clap_weights=args.clap_weights,
        clap_min_score=args.clap_min_score,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synth":
        from training.synth import run_synth

        settings = synth_settings(args)
        result = run_synth(
            settings, args.out, num_workers=args.workers, endpoint_url=args.s3_endpoint, progress=not args.no_progress
        )
    else:
        from training.precompute import run_precompute

        result = run_precompute(
            args.data,
            preset=args.preset,
            config_path=args.config,
            weights=args.weights,
            num_workers=args.workers,
            endpoint_url=args.s3_endpoint,
            progress=not args.no_progress,
        )
    print(json.dumps({k: v for k, v in result.items() if k != "shards"}))
    return 0
