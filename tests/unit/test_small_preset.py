"""The `small` preset (the embedded model trained by training/recipes/small.py) and its committed weights."""

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
    assert small.latent_length == small.output_samples // small.vae.downsampling_ratio == 216
    assert small.mel == tiny.mel  # 8 summary tokens; the per-frame source path is the input concat


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


def test_event_frame_weights_cover_the_frames_the_event_touches():
    from training.recipes.small import event_frame_weights

    w = event_frame_weights(onset=3000, length=5000, frames=10, hop=2048, weight=4.0)
    # samples 3000..7999 touch frames 1 (2048..4095), 2 and 3 (6144..8191)
    assert w.tolist() == [1, 4, 4, 4, 1, 1, 1, 1, 1, 1]
    edge = event_frame_weights(onset=2048 * 8, length=10**6, frames=10, hop=2048, weight=2.0)
    assert edge.tolist() == [1] * 8 + [2, 2]  # an event running past the clip stops at its last frame


def test_the_small_dit_reads_the_source_latent_frame_by_frame():
    """`small` concatenates an edit's source latent to the noisy latent; the released layout does not."""
    from model.build import build_sampler
    from model.requests import GenerationRequest

    cfg = get_preset("small")
    assert cfg.dit.input_concat_dim == cfg.dit.io_channels
    part = build_sampler(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    window = torch.randn(cfg.mel.window_samples, generator=g) * 0.1
    feats = torch.randn(4, cfg.mllm.hidden_size, generator=g)
    reqs = [
        GenerationRequest(mllm_features=feats, audio_window=window, seed=1, steps=2),
        GenerationRequest(mllm_features=feats, seed=1, steps=2),  # no source: zeros
    ]
    cond = part.condition(reqs)
    assert cond.source.shape == (2, cfg.dit.io_channels, cfg.latent_length)
    assert torch.equal(cond.source[0], part.encode_audio(window[None])[0])
    assert not cond.source[1].any()
    # The source reaches the sampled latents: same noise, text and mel tokens, another source latent.
    noise = torch.randn(1, cfg.dit.io_channels, cfg.latent_length, generator=g)
    scales = torch.tensor([3.0])
    first = type(cond)(cond.cross[:1], cond.cross_mask[:1], cond.prefix[:1], cond.source[:1])
    other = type(cond)(cond.cross[:1], cond.cross_mask[:1], cond.prefix[:1], cond.source[:1] + 1.0)
    a, b = part.sample_latents(first, noise, 2, scales), part.sample_latents(other, noise, 2, scales)
    assert float((a - b).abs().max()) > 1e-3
    assert build_sampler(get_preset("tiny"), seed=0).condition(reqs[:1]).source is None


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no committed weights at {WEIGHTS}")
def test_committed_small_thinker_hears_the_demo_scene(tmp_path):
    """The shipped thinker (training/recipes/thinker.py) on `make demo`'s own scene, source.wav (a siren
    over pink noise, examples/make_inputs.py): it names the siren, describes it with the very text the
    DiT was trained on for that class (what the describe -> generate / extract chains pass on), tells
    the background, and says it cannot tell when asked what these scenes cannot tell (a phrasing of the
    training set: held-out phrasings are refused 83 % of the time, docs/model.md)."""
    import importlib.util

    import soundfile as sf

    from model.build import build_encoder
    from model.mllm import UnderstandRequest
    from orchestrator.audio_io import resample
    from training.recipes.thinker_data import CANNOT_TELL, CLASS_TEXT

    spec = importlib.util.spec_from_file_location("make_inputs", ROOT / "examples" / "make_inputs.py")
    assert spec is not None and spec.loader is not None
    make_inputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_inputs)
    make_inputs.make_inputs(tmp_path)
    audio, rate = sf.read(tmp_path / "source.wav", dtype="float32")
    audio = resample(audio, rate, 16_000)
    encoder = build_encoder(get_preset("small"), weights=WEIGHTS)

    def ask(question: str) -> str:
        return encoder.understand([UnderstandRequest(question=question, audio=audio)], max_new_tokens=48)[0]

    assert "siren" in ask("What do you hear?").lower()
    assert ask("Describe the main sound in a few words.") == CLASS_TEXT["siren"]
    assert "pink noise" in ask("What is the background?").lower()
    assert ask("What genre is this music?") == CANNOT_TELL
