"""`audio-omni verify`: load a config and weights with our loader and recompute reference vectors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--config", required=True, help="released-schema JSON config (or a preset name)")
    parser.add_argument("--weights", required=True, help="model.ckpt, a .safetensors state dict, or a parts folder")
    parser.add_argument("--vectors", required=True, help="reference vectors (.safetensors with `case` metadata)")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors import safe_open

    from model.build import build_encoder, build_sampler
    from model.config import load_config
    from model.verify import Verifier

    vectors_path = Path(args.vectors)
    if not vectors_path.is_file():
        print(f"audio-omni verify: vectors file not found: {vectors_path}", file=sys.stderr)
        return 2
    with safe_open(str(vectors_path), framework="pt") as fh:
        meta = fh.metadata() or {}
        vectors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    if "case" not in meta:
        print(f"audio-omni verify: {vectors_path} has no `case` metadata", file=sys.stderr)
        return 2
    case = json.loads(meta["case"])
    config = load_config(args.config)
    sampler = build_sampler(config, weights=args.weights, device=args.device)
    try:
        encoder = build_encoder(config, weights=args.weights, device=args.device, dtype=torch.float32)
    except ValueError as exc:
        print(json.dumps({"skipped": "omni and sampling checks", "reason": str(exc)}))
        encoder = None
    failed = 0
    total = 0
    with torch.no_grad():  # scoped: this command also runs in-process (tests), never flip it globally
        for check in Verifier(config, sampler, encoder, vectors, case).run():
            total += 1
            failed += not check.ok
            print(json.dumps(check.as_dict()), flush=True)
    print(json.dumps({"checked": total, "failed": failed}))
    return 1 if failed or total == 0 else 0
