"""Offline work, outside the online job system: the data and the training that make the weights.

* `synth`, `filters`, `shards`: AudioEdit-style synthesis of edit pairs as a Ray Data bulk job, the
  filters that reject unusable events, and the shard format a trainer streams.
* `precompute`: frozen-thinker features and target latents, stored beside the shards.
* `flow`: rectified-flow loss and trainer of the sampler part (pure PyTorch, no I/O).
* `trainer`: the resumable Ray Train (`TorchTrainer`, DDP) loop over a precomputed dataset.
* `recipes.small`: the recipe of the embedded `small` model (model/data/small/); `evaluate`: its
  held-out figures.
* `cli`: the `audio-omni-train` command.

Arrows: training imports `model`, `orchestrator.storage` (dataset and checkpoint locations),
`orchestrator.cli` (the lazy sub-command machinery) and `workers.local_ray` (starting Ray); nothing
in `orchestrator`, `workers` or `model` imports training.
"""
