"""`audio-omni verify`: load a config and weights with our loader and recompute reference vectors.

Any config the released schema allows is loaded, including ones the job pipeline refuses (a mel
conditioner with its own sample rate, say): each component runs on the inputs stored in the
vectors. The mel conditioner's frame count, which the schema does not record, comes from the
weights. Exit status: 0 all checks pass, 1 a check fails (or none ran), 2 the inputs cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--config", required=True, help="released-schema JSON config (or a preset name)")
    parser.add_argument("--weights", required=True, help="model.ckpt, a .safetensors state dict, or a parts folder")
    parser.add_argument("--vectors", required=True, help="reference vectors (.safetensors with `case` metadata)")
    parser.add_argument("--device", default="cpu")


def _fail(message: str) -> int:
    print(f"audio-omni verify: {message}", file=sys.stderr)
    return 2


def read_vectors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(name -> tensor, case) of a vectors file; `ValueError` when it is unreadable or has no case."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            vectors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if "case" not in meta:
        raise ValueError(f"{path} has no `case` metadata (the run parameters of the vector set)")
    try:
        case = json.loads(meta["case"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its `case` metadata is not valid JSON: {exc}") from exc
    if not isinstance(case, dict):
        raise ValueError(f"{path}: its `case` metadata must be a JSON object, got {type(case).__name__}")
    return vectors, case


def run(args: argparse.Namespace) -> int:
    import torch

    from model.build import build_encoder, build_sampler
    from model.checkpoint import fit_config_to_weights, load_part_state_dict
    from model.config import load_config
    from model.verify import Verifier

    vectors_path = Path(args.vectors)
    if not vectors_path.is_file():
        return _fail(f"vectors file not found: {vectors_path}")
    try:
        vectors, case = read_vectors(vectors_path)
        sampler_sd = load_part_state_dict(args.weights, "sampler")
        config = fit_config_to_weights(load_config(args.config), sampler_sd)
        sampler = build_sampler(config, weights=sampler_sd, device=args.device, for_jobs=False)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
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
