"""`audio-omni-train`: the offline command line (data synthesis, feature precomputation, training,
the embedded `small` model's recipe and its held-out evaluation). It runs on the online CLI's lazy
sub-command machinery (`orchestrator.cli`) with its own table, so `--help` imports no torch.

    audio-omni-train synth --foreground DIR --background DIR --pairs N --out DIR_OR_S3_URI
    audio-omni-train precompute --data DIR_OR_S3_URI [--preset tiny | --config C] [--weights W]
    audio-omni-train train --data DIR_OR_S3_URI --out DIR_OR_S3_URI [--steps N] ...
    audio-omni-train small {features,codec,dit,train,export} --work DIR ...
    audio-omni-train small {thinker,thinker-export} --work DIR ...   (the thinker: training.recipes.thinker)
    audio-omni-train evaluate [--weights model/data/small/model.safetensors] [--pairs 20]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from orchestrator.cli import CommandTable
from orchestrator.cli import main as run_table

TRAINING = CommandTable(
    prog="audio-omni-train",
    description="Audio-Omni offline work: edit-pair data, precomputed features, training, evaluation",
    commands={
        "synth": ("training.commands.dataset", "synthesise add/remove/extract edit pairs into shards (Ray Data)"),
        "precompute": ("training.commands.dataset", "store frozen-thinker features and latents per shard (Ray Data)"),
        "train": ("training.commands.train", "train the sampler part with rectified flow (Ray Train)"),
        "small": ("training.commands.small", "the embedded `small` model's recipe, phase by phase"),
        "evaluate": ("training.commands.evaluate", "held-out figures of the `small` model's weights"),
    },
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_table(argv, TRAINING)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
