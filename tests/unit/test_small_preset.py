"""The `small` preset (the embedded model trained by bench/train_small.py) and its committed weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import AudioOmniConfig, get_preset
from model.parts import SamplerPart

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "model" / "data" / "small" / "model.safetensors"
MAX_CHECKPOINT_BYTES = 20_000_000
THINKER_PARAMS = 247_616  # the built-in tiny thinker, stored in float32 beside the sampler


def test_small_preset_round_trips_and_matches_tiny_shapes():
    small, tiny = get_preset("small"), get_preset("tiny")
    assert AudioOmniConfig.from_dict(small.to_dict()) == small
    # Same clip and conditioning geometry as tiny, so the same code paths and demo inputs run.
    assert small.output_samples == tiny.output_samples
    assert small.mllm == tiny.mllm
    assert small.vae.latent_dim == small.dit.io_channels == 64  # the mel codec's bands (model.melcodec)
    assert small.mel.seq_len == 64


def test_small_checkpoint_fits_the_size_budget():
    with torch.device("meta"):
        part = SamplerPart(get_preset("small"))
    sampler_params = sum(p.numel() for p in part.parameters())
    fp16_bytes = 2 * sampler_params + 4 * THINKER_PARAMS
    assert fp16_bytes < MAX_CHECKPOINT_BYTES, f"{fp16_bytes} bytes"


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no committed weights at {WEIGHTS}")
def test_committed_small_weights_generate_class_dependent_audio():
    from model.build import build_encoder, build_sampler
    from model.mllm import MLLMPrompt
    from model.prompts import generation_prompt
    from model.requests import GenerationRequest
    from model.tasks import Task

    assert WEIGHTS.stat().st_size < MAX_CHECKPOINT_BYTES
    cfg = get_preset("small")
    encoder = build_encoder(cfg, weights=WEIGHTS)
    sampler = build_sampler(cfg, weights=WEIGHTS)
    assert all(p.dtype == torch.float32 for p in sampler.parameters())
    prompts = [generation_prompt(Task.TEXT_TO_AUDIO, prompt=label) for label in ("tone", "noise burst")]
    rows = encoder.encode([MLLMPrompt(text=t) for t in prompts])
    reqs = [GenerationRequest(mllm_features=r, seed=3, steps=4) for r in rows]
    audio = sampler.generate(reqs)  # (2, 2, N): same seed, two class prompts
    assert audio.shape == (2, cfg.vae.io_channels, cfg.output_samples)
    assert torch.isfinite(audio).all()
    spectra = torch.fft.rfft(audio.mean(dim=1), dim=-1).abs()  # (2, F)
    spectra = spectra / spectra.sum(dim=-1, keepdim=True)
    # Same noise, different prompts: the spectral shapes must differ (total variation distance).
    assert float((spectra[0] - spectra[1]).abs().sum()) > 0.1
