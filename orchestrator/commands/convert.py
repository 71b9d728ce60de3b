"""`audio-omni convert-checkpoint SRC DST`: split a released checkpoint into one file per part."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("src", help="released model.ckpt (or a .safetensors state dict)")
    parser.add_argument("dst", help="output folder for encoder.safetensors and sampler.safetensors")


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import convert_checkpoint

    paths = convert_checkpoint(args.src, args.dst)
    print(json.dumps({part: str(path) for part, path in paths.items()}))
    return 0
