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
    assert small.mel.seq_len == small.output_samples // small.vae.downsampling_ratio == 216


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


def test_training_starts_the_dit_with_a_source_frame_lookup():
    """bench/train_small.py's start: head 0 of block 0 attends from latent frame k to source (mel)
    token k (within two frames, one on average: content noise in the query and key moves the peak
    of the rotary pattern to a neighbour), and the mel tokens pool equal
    runs of frames in time order."""
    import sys

    from model.dit import _split_heads, apply_rotary

    sys.path.insert(0, str(ROOT / "bench"))
    from train_small import init_mel_pooling, init_source_alignment

    torch.manual_seed(0)
    cfg = get_preset("small")
    part = SamplerPart(cfg)
    part.dit.init_weights()
    init_mel_pooling(part.mel)
    pool = part.mel.proj_sequence_features.weight  # (tokens, frames)
    assert torch.allclose(pool.sum(dim=1), torch.ones(cfg.mel.seq_len))
    assert bool((pool.argmax(dim=1).diff() > 0).all())  # token j pools later frames than token j - 1

    frames = cfg.output_samples // cfg.vae.downsampling_ratio
    init_source_alignment(part.dit, distance=frames)
    transformer, block = part.dit.transformer, part.dit.transformer.layers[0]
    sync_tokens = cfg.sync.seq_out
    prefix_len = sync_tokens + cfg.mel.seq_len
    h = torch.randn(1, prefix_len + frames, cfg.dit.embed_dim)  # unit-variance content, as after the norm
    cos, sin = transformer.rotary_pos_emb(h.shape[1])
    q, k, _ = (_split_heads(x, cfg.dit.num_heads) for x in block.self_attn.to_qkv(block.pre_norm(h)).chunk(3, dim=-1))
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    scores = q[0, 0, prefix_len:] @ k[0, 0].T  # (frames, all positions)
    looked_up = scores.argmax(dim=-1) - sync_tokens  # the mel token each latent frame attends to most
    error = (looked_up - torch.arange(frames)).abs().float()
    assert float(error.max()) <= 2 and float(error.mean()) <= 0.75, error


def test_freeze_lookup_keeps_head_0_query_and_key_rows_while_the_rest_trains():
    """`--freeze-lookup`: AdamW steps leave block 0's head 0 query/key rows exactly where
    `init_source_alignment` put them (weight decay off, so nothing else can move them), while the
    other rows of the same weight train; the hook's removal lets them train again."""
    import sys

    from model.build import build_sampler
    from model.training import FlowTrainer, TrainExample, TrainHyper

    sys.path.insert(0, str(ROOT / "bench"))
    from train_small import freeze_source_alignment, init_source_alignment

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    part = build_sampler(cfg, seed=0)
    part.dit.init_weights()
    init_source_alignment(part.dit, distance=cfg.mel.seq_len)
    handle = freeze_source_alignment(part.dit)
    trainer = FlowTrainer(part, TrainHyper(lr=1e-2, warmup_steps=0, weight_decay=0.0))
    dim, head_dim = cfg.dit.embed_dim, cfg.dit.embed_dim // cfg.dit.num_heads
    weight = part.dit.transformer.layers[0].self_attn.to_qkv.weight
    frozen = torch.cat([weight[:head_dim], weight[dim : dim + head_dim]]).detach().clone()
    rest = weight[head_dim:dim].detach().clone()  # query rows of the other heads
    assert frozen.abs().sum() > 0  # the lookup is in place

    g = torch.Generator().manual_seed(1)

    def batch():
        latents = torch.randn(2, cfg.dit.io_channels, cfg.latent_length, generator=g)
        feats = [TrainExample(mllm_features=torch.randn(4, cfg.mllm.hidden_size, generator=g)) for _ in range(2)]
        return latents, feats

    for _ in range(3):
        trainer.step(*batch())
    now = torch.cat([weight[:head_dim], weight[dim : dim + head_dim]]).detach()
    assert torch.equal(now, frozen)
    assert not torch.allclose(weight[head_dim:dim].detach(), rest)

    handle.remove()
    trainer.step(*batch())
    assert not torch.equal(torch.cat([weight[:head_dim], weight[dim : dim + head_dim]]).detach(), frozen)


def test_event_frame_weights_cover_the_frames_the_event_touches():
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from train_small import event_frame_weights

    w = event_frame_weights(onset=3000, length=5000, frames=10, hop=2048, weight=4.0)
    # samples 3000..7999 touch frames 1 (2048..4095), 2 and 3 (6144..8191)
    assert w.tolist() == [1, 4, 4, 4, 1, 1, 1, 1, 1, 1]
    edge = event_frame_weights(onset=2048 * 8, length=10**6, frames=10, hop=2048, weight=2.0)
    assert edge.tolist() == [1] * 8 + [2, 2]  # an event running past the clip stops at its last frame


def test_lookup_probe_sees_the_source_frame_lookup_and_not_a_random_head():
    """bench/eval_small.py's LookupProbe on a DiT forward: with `init_source_alignment` most of head
    0's attention from latent frame k lands on source tokens k-1..k+1; on the random start it is
    near what a uniform spread over the sequence gives."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from eval_small import LookupProbe
    from train_small import init_source_alignment

    cfg = get_preset("small")
    frames = cfg.output_samples // cfg.vae.downsampling_ratio
    seq = cfg.sync.seq_out + cfg.mel.seq_len + frames

    def mass(aligned: bool) -> float:
        torch.manual_seed(0)
        part = SamplerPart(cfg)
        part.dit.init_weights()
        if aligned:
            init_source_alignment(part.dit, distance=frames)
        h = torch.randn(1, seq, cfg.dit.embed_dim)
        with LookupProbe(part) as probe, torch.no_grad():
            part.dit.transformer.layers[0].pre_norm(h)
        assert len(probe.values) == 1
        return probe.mass

    assert mass(True) > 0.5
    assert mass(False) < 10 * 3 / seq
