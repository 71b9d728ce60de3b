"""Build the model parts from a config, with random weights or a checkpoint.

Each worker pool builds only its own parts: `build_encoder` (the thinker) and
`build_sync_extractor` (the Synchformer visual extractor) in the encoder pool, `build_sampler` (DiT,
conditioners, VAE) in the sampler pool. Weights come from a released `model.ckpt`, a safetensors
file with the released key names, or a folder written by `convert-checkpoint`; the extractor's
from the released `synchformer_state_dict.pth` or the `sync.safetensors` of such a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model.checkpoint import load_into, load_part_state_dict
from model.config import AudioOmniConfig, SyncExtractorConfig
from model.mllm import MLLMEncoder
from model.parts import SamplerPart
from model.pipeline import AudioOmniPipeline
from model.sync import SyncExtractor
from model.sync.loading import load_extractor_weights, read_sync_weights
from model.tiny_processor import tiny_mllm_dir

CACHE_ENV = "AUDIO_OMNI_CACHE"


def default_cache_dir() -> Path:
    """Where built-in assets (the tiny MLLM folder) are materialised: $AUDIO_OMNI_CACHE or ~/.cache."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "audio-omni"))


def resolve_mllm_dir(config: AudioOmniConfig, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder of the thinker's config and processor files."""
    name = config.mllm.model_name_or_path
    if name == "builtin:tiny":
        return tiny_mllm_dir(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    if name.startswith("builtin:"):
        raise ValueError(f"unknown built-in MLLM {name!r}; known: builtin:tiny")
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"the MLLM {name!r} is not a local folder with a config.json; download Qwen/Qwen2.5-Omni-3B "
            "and point the config (or $QWEN_OMNI_MODEL_PATH) at the folder"
        )
    return path


def _dtype_for(device: torch.device, dtype: torch.dtype | None, default_cuda: torch.dtype) -> torch.dtype:
    if dtype is not None:
        return dtype
    return default_cuda if device.type == "cuda" else torch.float32


def build_sampler(
    config: AudioOmniConfig,
    *,
    weights: str | os.PathLike[str] | dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    for_jobs: bool = True,
) -> SamplerPart:
    """The sampler part in float32 (its precision policy is set at run time, not in the weights).

    Without `weights` the parameters are random but deterministic (seeded by `seed`). `for_jobs`
    refuses a config the job pipeline cannot run (`AudioOmniConfig.require_job_support`); tools that
    only check components against stored inputs (`audio-omni verify`) pass False.
    """
    if for_jobs:
        config.require_job_support()
    device = torch.device(device)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            part = SamplerPart(config)
        return part.to(device).eval()
    sd = weights if isinstance(weights, dict) else load_part_state_dict(weights, "sampler")
    part = SamplerPart(config)
    load_into(part, sd, part="sampler", dtype=torch.float32)
    return part.to(device).eval()


def build_encoder(
    config: AudioOmniConfig,
    *,
    weights: str | os.PathLike[str] | dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> MLLMEncoder:
    """The thinker (bf16 on CUDA, float32 on CPU unless `dtype` says otherwise) with its processor."""
    device = torch.device(device)
    folder = resolve_mllm_dir(config, cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = MLLMEncoder.from_pretrained(
            folder,
            dtype=_dtype_for(device, dtype, torch.bfloat16),
            device=device,
            pad_length=config.mllm.pad_length,
            layer_idx=config.mllm.layer_idx,
        )
    if weights is not None:
        sd = weights if isinstance(weights, dict) else load_part_state_dict(weights, "encoder")
        if not sd:
            raise ValueError(
                f"{weights} holds no thinker weights "
                "(released prefix 'conditioner.conditioners.omni_prompt.model.thinker.')"
            )
        encoder.load_thinker_state_dict(sd)
    return encoder


def build_sync_extractor(
    config: AudioOmniConfig,
    *,
    weights: str | os.PathLike[str] | dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> SyncExtractor | None:
    """The Synchformer visual extractor in float32, or None where it has no weights to run.

    `weights` is a Synchformer state dict, the released `synchformer_state_dict.pth`, a converted
    folder (its `sync.safetensors`) or any checkpoint: its `vfeat_extractor.*` tensors are loaded
    strictly. Without any, the extractor is random but deterministic (seeded by `seed`) when no
    weights were given at all or when its layout is not the released one (the test presets'
    extractor has no trained weights); the released layout with weights that lack it gives None,
    so video jobs fail with a clear message instead of conditioning on random features.
    """
    device = torch.device(device)
    sd = (weights if isinstance(weights, dict) else read_sync_weights(weights)) if weights is not None else {}
    if not sd and weights is not None and config.sync_extractor == SyncExtractorConfig():
        return None
    if sd:  # built on the meta device: the checkpoint's tensors become the parameters, no random init
        with torch.device("meta"):
            extractor = SyncExtractor(config.sync_extractor)
        load_extractor_weights(extractor, sd)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            extractor = SyncExtractor(config.sync_extractor)
    return extractor.to(device).eval()


def build_pipeline(
    config: AudioOmniConfig,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> AudioOmniPipeline:
    """Both parts in one process (tests, benchmarks, single-machine use)."""
    sampler = build_sampler(config, weights=weights, device=device)  # first: it refuses configs jobs cannot run
    encoder = build_encoder(config, weights=weights, device=device, cache_dir=cache_dir)
    return AudioOmniPipeline(config, encoder, sampler)
