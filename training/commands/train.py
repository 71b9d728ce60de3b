"""`audio-omni-train train --data DIR --out DIR ...`: rectified-flow training of the sampler part on Ray Train.

Resumable: rerunning the same command continues from the last checkpoint under --out.
"""

from __future__ import annotations

import argparse
import json
import logging

from training.commands import comma_list


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--data", required=True, help="dataset (synth + precompute) folder or s3:// URI")
    parser.add_argument("--out", required=True, help="checkpoints and final weights: folder or s3:// URI")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--config", default=None, help="model_config.json (overrides --preset)")
    parser.add_argument("--weights", default=None, help="released checkpoint to fine-tune (sampler part only)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4, help="per worker")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--cond-dropout", type=float, default=0.1, help="CFG context dropout probability")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="DDP workers")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts before giving up")
    parser.add_argument("--max-time-s", type=float, default=None, help="stop with a checkpoint after this")
    parser.add_argument(
        "--kinds", type=comma_list, default=",".join(("edit_add", "edit_remove", "edit_extract", "text_to_audio"))
    )
    parser.add_argument("--in-process", action="store_true", help="no Ray: one worker in this process")
    parser.add_argument("--s3-endpoint", default=None)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.trainer import TrainSettings, run_training

    settings = TrainSettings(
        data=args.data,
        out=args.out,
        preset=args.preset,
        config_path=args.config,
        weights=args.weights,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        cond_dropout=args.cond_dropout,
        ema_decay=args.ema_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        num_workers=args.workers,
        use_gpu=args.gpu,
        threads_per_worker=args.threads_per_worker,
        max_failures=args.max_failures,
        max_time_s=args.max_time_s,
        kinds=args.kinds,
        endpoint_url=args.s3_endpoint,
    )
    result = run_training(settings, in_process=args.in_process)
    history = result["history"]
    print(
        json.dumps({"out": result["out"], "steps": len(history), "last_loss": history[-1]["loss"] if history else None})
    )
    return 0
