"""`audio-omni convert-checkpoint SRC DST [--synchformer PATH]`: split a released checkpoint into one
file per part (`encoder.safetensors`, `sampler.safetensors`); with `--synchformer`, the visual branch
of the released `synchformer_state_dict.pth` too, as the `sync` part (`sync.safetensors`)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("src", help="released model.ckpt (or a .safetensors state dict)")
    parser.add_argument("dst", help="output folder for encoder.safetensors and sampler.safetensors")
    parser.add_argument(
        "--synchformer",
        metavar="PATH",
        help="released synchformer_state_dict.pth (or .safetensors): its vfeat_extractor.* become sync.safetensors",
    )


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import convert_checkpoint
    from model.sync.loading import convert_synchformer

    # The small Synchformer file first: a wrong one fails before the long model conversion.
    sync = convert_synchformer(args.synchformer, args.dst) if args.synchformer else None
    paths = {part: str(path) for part, path in convert_checkpoint(args.src, args.dst).items()}
    if sync is not None:
        paths["sync"] = str(sync)
    print(json.dumps(paths))
    return 0
