"""Tiny-preset throughput on CPU: text-to-audio clips/s at batch 1 and batch 8, and their ratio.

    .venv/bin/python bench/model_throughput.py [--steps 8] [--clips 16]

Runs the in-process pipeline (thinker encode, DiT sampling with CFG, VAE decode) on 10 s clips.
A figure, not a test: timings on shared machines are noisy, so compare the ratio within one run.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.build import build_pipeline
from model.config import get_preset
from model.pipeline import TaskInputs
from model.tasks import Task


def _clips_per_s(pipe, batch: int, clips: int, steps: int) -> float:
    items = [
        TaskInputs(Task.TEXT_TO_AUDIO, prompt=f"rain on a tin roof {i}", steps=steps, seed=i) for i in range(clips)
    ]
    pipe(items[:batch])  # warm-up at this batch size
    start = time.perf_counter()
    for i in range(0, clips, batch):
        pipe(items[i : i + batch])
    return clips / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--clips", type=int, default=16, help="clips per measurement (a multiple of 8)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    config = get_preset("tiny")
    pipe = build_pipeline(config)
    b1 = _clips_per_s(pipe, 1, args.clips, args.steps)
    b8 = _clips_per_s(pipe, 8, args.clips, args.steps)
    result = {
        "preset": "tiny",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "clip_s": round(config.window_s, 3),
        "batch1_clips_per_s": round(b1, 3),
        "batch8_clips_per_s": round(b8, 3),
        "ratio": round(b8 / b1, 3),
    }
    print(f"batch 1: {b1:.2f} clips/s   batch 8: {b8:.2f} clips/s   ratio {b8 / b1:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
