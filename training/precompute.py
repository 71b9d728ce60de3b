"""Precomputed conditioning: frozen-thinker features and target latents, once per example.

The thinker and the VAE encoder are frozen during DiT training, so recomputing them every epoch is
waste. For each shard an encoder actor (Ray Data actor pool, one model copy per actor) writes
`features/<tag>/shard-K.safetensors` beside it, holding

    mllm        (E, L_max, D) bf16   thinker rows of every example's chat prompt (zero padded)
    mllm_len    (E,) int64           real rows per example
    lat_<clip>  (P, C, T) float32    VAE-encoder means of the background, mixture and event clips

`tag` names the model that made them (preset or config + weights digest), so features of another
model are never mixed in. Example order is `shards.examples_of(shard)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from training.shards import (
    SETTINGS_KEY,
    decode_shard,
    examples_of,
    features_key,
    open_storage,
    shard_key,
)

log = logging.getLogger(__name__)

CLIPS = ("background", "mixture", "event")
ENCODE_BATCH = 8


def model_tag(preset: str, config_path: str | None = None, weights: str | None = None) -> str:
    """`<preset or config stem>-<12 hex>`: a digest of the config and the weights' identity."""
    from model.config import load_config

    cfg = load_config(config_path or preset)
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    if weights:
        p = Path(weights)
        h.update(
            f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() if p.exists() else weights.encode()
        )
    else:
        h.update(b"random-seed-0")
    stem = Path(config_path).stem if config_path else preset
    return f"{stem}-{h.hexdigest()[:12]}"


class FeatureEncoder:
    """Holds the thinker and the VAE encoder; turns one shard's bytes into its feature file's bytes."""

    def __init__(self, preset: str, config_path: str | None, weights: str | None, device: str = "cpu") -> None:
        import torch

        from model.build import build_encoder, build_sampler
        from model.config import load_config

        torch.set_num_threads(1)
        self.config = load_config(config_path or preset)
        self.encoder = build_encoder(self.config, weights=weights, device=device)
        self.sampler = build_sampler(self.config, weights=weights, device=device)
        self.tag = model_tag(preset, config_path, weights)

    def encode_shard(self, data: bytes) -> bytes:
        import torch
        from safetensors.torch import save

        from model.mllm import MLLMPrompt

        shard = decode_shard(data)
        if shard.header.get("sample_rate") != self.config.sample_rate:
            raise ValueError(
                f"shard sample rate {shard.header.get('sample_rate')} differs from "
                f"the model's {self.config.sample_rate}"
            )
        examples = examples_of(shard)
        rows: list[torch.Tensor] = []
        for i in range(0, len(examples), ENCODE_BATCH):
            batch = [MLLMPrompt(text=e["prompt"]) for e in examples[i : i + ENCODE_BATCH]]
            rows += self.encoder.encode(batch)
        lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)  # (E,)
        mllm = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[1], dtype=torch.bfloat16)  # (E, L, D)
        for i, r in enumerate(rows):
            mllm[i, : r.shape[0]] = r.to(torch.bfloat16)
        tensors: dict[str, torch.Tensor] = {"mllm": mllm, "mllm_len": lengths}
        for clip in CLIPS:
            wav = torch.from_numpy(getattr(shard, clip))  # (P, N)
            lat = [self.sampler.encode_audio(wav[j : j + 4]) for j in range(0, wav.shape[0], 4)]
            tensors[f"lat_{clip}"] = torch.cat(lat).contiguous()  # (P, C, T)
        # one entry: safetensors orders several metadata entries by hash, not deterministically
        meta = {"audio_omni": json.dumps({"tag": self.tag, "examples": [[e["pair"], e["task"]] for e in examples]})}
        return save(tensors, metadata=meta)


class _FeatureWriter:
    """Ray Data callable: one FeatureEncoder per actor, one shard per row."""

    def __init__(self, data: str, preset: str, config_path: str | None, weights: str | None, endpoint: str | None):
        self.storage = open_storage(data, endpoint_url=endpoint)
        self.encoder = FeatureEncoder(preset, config_path, weights)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        k = int(row["shard"])
        blob = self.encoder.encode_shard(self.storage.get(shard_key(k)))
        self.storage.put(features_key(self.encoder.tag, k), blob)
        return {"shard": k, "seconds": time.perf_counter() - start}


def run_precompute(
    data: str,
    *,
    preset: str = "tiny",
    config_path: str | None = None,
    weights: str | None = None,
    num_workers: int = 1,
    endpoint_url: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the feature files of every shard of the dataset at `data` that lacks them (resumable)."""
    import ray
    from tqdm import tqdm

    from training.synth import SynthSettings
    from workers.local_ray import init_ray

    storage = open_storage(data, endpoint_url=endpoint_url)
    if not storage.exists(SETTINGS_KEY):
        raise ValueError(f"{data} is not a synthesised dataset (no {SETTINGS_KEY})")
    settings = SynthSettings.from_json(json.loads(storage.get(SETTINGS_KEY)))
    tag = model_tag(preset, config_path, weights)
    missing_shards = [k for k in range(settings.num_shards) if not storage.exists(shard_key(k))]
    if missing_shards:
        raise ValueError(f"{data} lacks shards {missing_shards[:10]}; finish `audio-omni-train synth` first")
    todo = [k for k in range(settings.num_shards) if not storage.exists(features_key(tag, k))]
    init_ray()
    start = time.perf_counter()
    if todo:
        items = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        # Ray Data runs a callable class on an actor pool; `Dataset.map`'s annotation names only functions.
        ds = items.map(
            _FeatureWriter,  # type: ignore[arg-type]
            fn_constructor_args=(data, preset, config_path, weights, endpoint_url),
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=1,
        )
        bar = tqdm(
            total=settings.num_shards, initial=settings.num_shards - len(todo), unit="shard", disable=not progress
        )
        for _ in ds.iter_rows():
            bar.update(1)
        bar.close()
    return {"tag": tag, "shards": settings.num_shards, "computed": len(todo), "wall_s": time.perf_counter() - start}
