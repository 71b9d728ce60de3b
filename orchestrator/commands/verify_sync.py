"""`audio-omni verify-sync`: load Synchformer weights with our loader and recompute its parity vectors.

The extractor's layout comes from the vectors' `case` metadata; the weights are a Synchformer state
dict (the released `synchformer_state_dict.pth`, a safetensors file with its names, or a converted
folder's `sync.safetensors`), of which only `vfeat_extractor.*` is loaded, strictly. One JSON line
per reference tensor with its max absolute error, then a summary line. Exit status: 0 all checks
pass, 1 a check fails (or none ran), 2 the inputs cannot be read or do not fit together.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--weights", required=True, help="synchformer_state_dict.pth, a .safetensors state dict, or a parts folder"
    )
    parser.add_argument("--vectors", required=True, help="Synchformer reference vectors (.safetensors with `case`)")
    parser.add_argument("--device", default="cpu")


def _fail(message: str) -> int:
    print(f"audio-omni verify-sync: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from model.sync.loading import read_sync_weights
    from model.sync.verify import FRAMES, build_for_vectors, sync_checks
    from orchestrator.commands.verify import read_vectors

    vectors_path = Path(args.vectors)
    if not vectors_path.is_file():
        return _fail(f"vectors file not found: {vectors_path}")
    try:
        vectors, case = read_vectors(vectors_path)
        weights = read_sync_weights(args.weights)
        if not weights:
            raise ValueError(f"{args.weights} holds no Synchformer visual weights ('vfeat_extractor.*' tensors)")
        frames = vectors.get(FRAMES)
        if frames is not None and "frames" in case and int(case["frames"]) != frames.shape[0]:
            raise ValueError(f"the case says {case['frames']} frames but {FRAMES} holds {frames.shape[0]}")
        extractor = build_for_vectors(case, weights).to(args.device)
        vectors = {k: v.to(args.device) for k, v in vectors.items()}
        checks = list(sync_checks(extractor, vectors))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    failed = 0
    for check in checks:
        failed += not check.ok
        print(json.dumps(check.as_dict()), flush=True)
    print(json.dumps({"checked": len(checks), "failed": failed, "device": str(torch.device(args.device))}))
    return 1 if failed or not checks else 0
