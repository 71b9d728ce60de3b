"""Rectified-flow training of the sampler part on Ray Train (`TorchTrainer`, DDP), resumable.

Data: a synthesised dataset (`training.synth`) with precomputed features
(`training.precompute`) for the model tag being trained. Each step draws its global
batch from `numpy.random.default_rng([seed, step])`, and rank r takes its slice, so the data order
is a function of the step alone; together with the checkpointed generator of `training.flow`
a resumed run takes the same steps as an uninterrupted one.

Checkpoints go through the storage layer (`--out` folder or `s3://`)::

    checkpoints/step-0000100.pt     trainer state (trainable weights, AdamW, EMA, generator, step)
    checkpoints/latest.json         {"step": 100, "key": ...}, written after the checkpoint
    sampler.safetensors             the EMA sampler part under released key names (at the end)
    train.json                      settings and final figures

A killed worker makes Ray Train restart the worker group (`max_failures`); the loop then resumes from
`latest.json`. Fine-tuning starts from a released checkpoint's sampler part (`--weights`); the thinker
is not loaded at all (its features are precomputed).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from orchestrator.storage import Storage
    from training.flow import FlowTrainer, TrainExample

log = logging.getLogger(__name__)

LATEST_KEY = "checkpoints/latest.json"
FINAL_WEIGHTS_KEY = "sampler.safetensors"
SUMMARY_KEY = "train.json"
KINDS = ("edit_add", "edit_remove", "edit_extract", "text_to_audio")


def checkpoint_key(step: int) -> str:
    return f"checkpoints/step-{step:07d}.pt"


@dataclass(frozen=True)
class TrainSettings:
    """One training run. `data` holds shards + features; `out` receives checkpoints and weights."""

    data: str
    out: str
    preset: str = "tiny"
    config_path: str | None = None
    weights: str | None = None  # released checkpoint / converted folder to fine-tune from
    steps: int = 1000
    batch_size: int = 4  # per worker
    lr: float = 3e-4
    warmup_steps: int = 50
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    num_workers: int = 1
    use_gpu: bool = False
    max_failures: int = 2
    kinds: tuple[str, ...] = KINDS
    threads_per_worker: int = 1
    endpoint_url: str | None = None
    max_time_s: float | None = None  # stop (with a checkpoint) after this much wall time

    def __post_init__(self) -> None:
        for name, low, high in (
            ("steps", 1, 10_000_000),
            ("batch_size", 1, 4096),
            ("checkpoint_every", 1, 10_000_000),
            ("log_every", 1, 10_000_000),
            ("num_workers", 1, 1024),
            ("max_failures", 0, 1000),
            ("threads_per_worker", 1, 256),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(self.kinds)}")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ValueError(f"max_time_s must be > 0, got {self.max_time_s}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainSettings:
        return cls(**{**d, "kinds": tuple(d["kinds"])})


# --------------------------------------------------------------------------- data


class EditPairData:
    """All examples of a dataset in memory: int16 source clips, latents and thinker rows per example.

    The source's latent comes from the precomputed features too (the DiT's input concat, for presets
    that have one), so no step runs the VAE encoder.

    Sized for the small runs this project makes on CPU; a larger dataset would stream shards.
    """

    def __init__(self, storage: Storage, tag: str, kinds: tuple[str, ...]) -> None:
        import numpy as np
        from safetensors.torch import load as st_load

        from training.shards import SETTINGS_KEY, decode_shard, examples_of, features_key, shard_key
        from training.synth import SynthSettings

        settings = SynthSettings.from_json(json.loads(storage.get(SETTINGS_KEY)))
        self.clips: dict[str, list[np.ndarray]] = {"background": [], "mixture": [], "event": []}
        self.latents: list[torch.Tensor] = []
        self.source_latents: list[torch.Tensor | None] = []
        self.rows: list[torch.Tensor] = []
        self.sources: list[tuple[str, int] | None] = []
        self.tasks: list[str] = []
        self.descriptions: list[str] = []
        pair_base = 0
        for k in range(settings.num_shards):
            shard = decode_shard(storage.get(shard_key(k)))
            if not storage.exists(features_key(tag, k)):
                raise ValueError(
                    f"features for model {tag!r} missing for shard {k}; run `audio-omni-train precompute` first"
                )
            feats = st_load(storage.get(features_key(tag, k)))
            for clip in self.clips:
                self.clips[clip] += list((getattr(shard, clip) * 32767).round().astype(np.int16))
            for e_index, ex in enumerate(examples_of(shard)):
                if ex["task"] not in kinds:
                    continue
                length = int(feats["mllm_len"][e_index])
                self.rows.append(feats["mllm"][e_index, :length].clone())
                self.latents.append(feats[f"lat_{ex['target']}"][ex["pair"]].clone())
                source = ex["source"]
                self.source_latents.append(None if source is None else feats[f"lat_{source}"][ex["pair"]].clone())
                self.sources.append(None if ex["source"] is None else (ex["source"], pair_base + ex["pair"]))
                self.tasks.append(ex["task"])
                self.descriptions.append(ex["description"])
            pair_base += len(shard.pairs)
        if not self.rows:
            raise ValueError(f"no examples of kinds {list(kinds)} in the dataset")

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[TrainExample]]:
        """(latents (B, C, T), [TrainExample]) for example indices."""
        import torch

        from training.flow import TrainExample

        examples = []
        for i in indices:
            src = self.sources[i]
            window = None
            if src is not None:
                window = torch.from_numpy(self.clips[src[0]][src[1]].astype("float32") / 32767.0)
            examples.append(
                TrainExample(mllm_features=self.rows[i], audio_window=window, source_latent=self.source_latents[i])
            )
        return torch.stack([self.latents[i] for i in indices]), examples


def step_indices(seed: int, step: int, total: int, global_batch: int, rank: int, per_rank: int) -> list[int]:
    """Example indices of `rank`'s slice of global step `step` (a function of the step only)."""
    import numpy as np

    rng = np.random.default_rng([seed, step])
    idx = rng.choice(total, size=global_batch, replace=global_batch > total)
    return [int(i) for i in idx[rank * per_rank : (rank + 1) * per_rank]]


# --------------------------------------------------------------------------- the loop


def train_loop(config: dict[str, Any]) -> None:
    """Per-worker loop; runs under Ray Train or in-process (world size 1) for tests and CPU runs."""
    import torch

    from model.build import build_sampler
    from model.config import load_config
    from training.flow import FlowObjective, FlowTrainer, TrainHyper
    from training.precompute import model_tag
    from training.shards import open_storage

    s = TrainSettings.from_json(config["settings"])
    in_ray = config.get("in_ray", False)
    rank, world = 0, 1
    if in_ray:
        import ray.train

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(s.threads_per_worker)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if s.use_gpu and torch.cuda.is_available()
        else torch.device("cpu")
    )
    cfg = load_config(s.config_path or s.preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        part = build_sampler(cfg, weights=s.weights, device="cpu", seed=s.seed)
        if s.weights is None:
            part.dit.init_weights()  # training-time init (zeroed residual outputs), seeded
    part = part.to(device)
    objective: torch.nn.Module = FlowObjective(part)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        objective = DDP(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    hyper = TrainHyper(
        lr=s.lr, warmup_steps=s.warmup_steps, cond_dropout=s.cond_dropout, ema_decay=s.ema_decay, seed=s.seed
    )
    trainer = FlowTrainer(
        part, hyper, model=objective, autocast_dtype=torch.bfloat16 if device.type == "cuda" else None
    )
    storage = open_storage(s.out, endpoint_url=s.endpoint_url)
    if storage.exists(LATEST_KEY):
        latest = json.loads(storage.get(LATEST_KEY))
        state = torch.load(io.BytesIO(storage.get(latest["key"])), map_location="cpu", weights_only=False)
        trainer.load_state_dict(state)
        log.info("resumed from %s (step %d)", latest["key"], trainer.step_index)
    data = EditPairData(
        open_storage(s.data, endpoint_url=s.endpoint_url), model_tag(s.preset, s.config_path, s.weights), s.kinds
    )
    history: list[dict[str, float]] = config.setdefault("history", [])
    start, window_start, window_items = time.perf_counter(), time.perf_counter(), 0
    while trainer.step_index < s.steps:
        step = trainer.step_index
        idx = step_indices(s.seed, step, len(data), s.batch_size * world, rank, s.batch_size)
        latents, examples = data.batch(idx)
        metrics = trainer.step(latents.to(device), examples)
        window_items += len(idx) * world
        metrics["step"] = step + 1
        history.append(metrics)
        done = trainer.step_index >= s.steps
        out_of_time = s.max_time_s is not None and time.perf_counter() - start > s.max_time_s
        if trainer.step_index % s.log_every == 0 or done:
            elapsed = time.perf_counter() - window_start
            metrics["examples_per_s"] = window_items / elapsed if elapsed > 0 else 0.0
            window_start, window_items = time.perf_counter(), 0
            if rank == 0:
                log.info(
                    "step %d loss %.4f grad %.3f lr %.2e %.2f ex/s",
                    metrics["step"],
                    metrics["loss"],
                    metrics["grad_norm"],
                    metrics["lr"],
                    metrics["examples_per_s"],
                )
        if rank == 0 and (trainer.step_index % s.checkpoint_every == 0 or done or out_of_time):
            save_checkpoint(storage, trainer)
        if in_ray:
            import ray.train

            ray.train.report({k: float(v) for k, v in metrics.items()})
        if out_of_time:
            break
    if rank == 0:
        save_final(storage, trainer, s, wall_s=time.perf_counter() - start, history=history)


def save_checkpoint(storage: Storage, trainer: FlowTrainer) -> str:
    """Write the trainer state, then point `latest.json` at it (so a torn write is never 'latest')."""
    import torch

    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    key = checkpoint_key(trainer.step_index)
    storage.put(key, buf.getvalue())
    storage.put(LATEST_KEY, json.dumps({"step": trainer.step_index, "key": key}).encode())
    return key


def save_final(
    storage: Storage, trainer: FlowTrainer, settings: TrainSettings, *, wall_s: float, history: list[dict[str, float]]
) -> None:
    """The EMA weights of the whole sampler part (VAE included) under released key names."""
    from safetensors.torch import save

    from model.checkpoint import internal_to_released
    from model.vae import num_stages

    part = trainer.part
    # EMA values replace the live parameters; buffers (LayerNorm beta, RoPE table) come as they are.
    state = {k: v.detach().cpu() for k, v in part.state_dict().items()}
    state.update({k: v.detach().cpu() for k, v in trainer.ema.shadow.items()})
    stages = num_stages(part.vae)
    sd = {internal_to_released(k, vae_num_stages=stages): v.contiguous() for k, v in state.items()}
    storage.put(FINAL_WEIGHTS_KEY, save(sd, metadata={"part": "sampler", "step": str(trainer.step_index)}))
    summary = {
        "settings": settings.to_json(),
        "steps_done": trainer.step_index,
        "wall_s_last_session": wall_s,
        "history_last_session": history,  # rank 0's per-step metrics since the last (re)start
    }
    storage.put(SUMMARY_KEY, json.dumps(summary, indent=2).encode())


def run_training(settings: TrainSettings, *, in_process: bool = False) -> dict[str, Any]:
    """Train on Ray Train (`TorchTrainer`) or, with `in_process`, in this process (one worker, no Ray).

    Returns {"history": rank 0's per-step metrics of the last (re)start, "out": settings.out}.
    """
    config: dict[str, Any] = {"settings": settings.to_json()}
    if in_process:
        if settings.num_workers != 1:
            raise ValueError(f"in-process training runs one worker, got num_workers={settings.num_workers}")
        train_loop(config)
        return {"history": config["history"], "out": settings.out}
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.local_ray import init_ray

    init_ray()
    storage_path = os.environ.get("AUDIO_OMNI_RAY_TRAIN_DIR", os.path.join(os.path.expanduser("~"), "ray_results"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**config, "in_ray": True},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.threads_per_worker, **({"GPU": 1} if settings.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=f"audio-omni-train-{int(time.time())}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
    )
    trainer.fit()
    from training.shards import open_storage

    summary = json.loads(open_storage(settings.out, endpoint_url=settings.endpoint_url).get(SUMMARY_KEY))
    return {"history": summary["history_last_session"], "out": settings.out}
