"""The fixed log-mel codec of the `small` preset (model.melcodec), through the VAE entry points."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from model.checkpoint import internal_to_released, released_to_internal
from model.config import AudioOmniConfig, MelCodecConfig, get_preset
from model.melcodec import MelCodec
from model.vae import build_vae, decode, encode_moments, encode_sample, num_stages

SR = 44100
CFG = MelCodecConfig(
    hop=2048, n_fft=2048, stft_hop=512, n_mels=64, f_max=11025.0, log_floor=1e-4, griffin_lim_iters=16, io_channels=2
)
N = 2048 * 40  # 1.86 s


def _spectrum(x: torch.Tensor, span: slice) -> torch.Tensor:
    """Mean power spectrum (4096-point, Hann) of x[span]."""
    frames = x[span].unfold(0, 4096, 2048)
    return torch.fft.rfft(frames * torch.hann_window(4096), dim=-1).abs().square().mean(dim=0)


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """(A 700 Hz tone from 0.5 s to 1.2 s over soft low-passed noise, the noise alone), each (N,)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(N, generator=g)
    noise = torch.fft.irfft(torch.fft.rfft(noise) * (torch.fft.rfftfreq(N, 1 / SR) < 8000), n=N) * 0.03
    t = torch.arange(N) / SR
    tone = 0.3 * torch.sin(2 * math.pi * 700 * t) * ((t > 0.5) & (t < 1.2))
    return noise + tone, noise


def test_encode_decode_keeps_pitch_level_and_timing():
    codec = build_vae(CFG, sample_rate=SR)
    assert isinstance(codec, MelCodec) and num_stages(codec) is None
    x, _ = _scene()
    wav = x[None, None].expand(1, 2, -1)
    mean, std = encode_moments(codec, wav)
    assert mean.shape == (1, 64, 40) and torch.equal(std, torch.zeros_like(mean))
    assert torch.equal(encode_sample(codec, wav), mean)  # deterministic
    out = decode(codec, mean)
    assert out.shape == (1, 2, N) and torch.equal(out[0, 0], out[0, 1])
    y = out[0, 0]
    freqs = torch.fft.rfftfreq(4096, 1 / SR)
    during, before = slice(round(0.6 * SR), round(1.1 * SR)), slice(0, round(0.45 * SR))
    peak = float(freqs[_spectrum(y, during).argmax()])
    assert abs(peak - 700) < 40, peak  # the tone comes back as a narrow band at its pitch
    ratio = float(y[during].square().mean() / x[during].square().mean())
    assert 0.5 < ratio < 2.0, ratio  # at its level (within 3 dB)
    # ... and only where it was: before the tone the output is the soft noise, 20 dB down.
    assert float(y[before].square().mean()) < 0.01 * float(y[during].square().mean())
    assert torch.equal(decode(codec, mean), out)  # Griffin-Lim starts from a fixed seed


def test_nothing_comes_back_above_f_max():
    codec = MelCodec(replace(CFG, f_max=4000.0), sample_rate=SR)
    g = torch.Generator().manual_seed(1)
    white = 0.1 * torch.randn(N, generator=g)
    y = codec.decode(codec.encode(white[None, None].expand(1, 2, -1)))[0, 0]
    spec = _spectrum(y, slice(4096, N - 4096))
    freqs = torch.fft.rfftfreq(4096, 1 / SR)
    assert float(spec[freqs > 6000].sum()) < 1e-3 * float(spec[freqs < 3500].sum())


def test_fit_normalises_each_band_and_decoding_is_unchanged():
    codec = MelCodec(CFG, sample_rate=SR)
    x, noise = _scene()
    wav = torch.stack([x, noise])[:, None].expand(-1, 2, -1)
    before = codec.decode(codec.encode(wav))
    mean, std, top = codec.fit(wav)
    assert mean.shape == std.shape == top.shape == (64,) and bool((std > 0).all())
    z = codec.encode(wav)
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(64), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2)), torch.ones(64), atol=1e-3)
    assert torch.allclose(codec.decode(z), before, atol=1e-4)
    assert set(codec.state_dict()) == {"band_mean", "band_std", "band_max"}  # filters, window are rebuilt
    # Decoding never goes past the loudest band power it was fitted on, however far a latent is pushed.
    loud = codec.decode(z + 20.0)
    assert torch.allclose(loud, codec.decode(z + 40.0), atol=1e-5)  # capped: pushing further changes nothing
    assert float(loud.abs().max()) < 1.0


def test_bad_shapes_and_configs_are_refused():
    codec = MelCodec(CFG, sample_rate=SR)
    with pytest.raises(ValueError, match="multiple of 2048"):
        codec.encode(torch.zeros(1, 2, 3000))
    with pytest.raises(ValueError, match=r"\(B, 2, N\)"):
        codec.encode(torch.zeros(1, 1, 4096))
    with pytest.raises(ValueError, match=r"\(B, 64, T\)"):
        codec.decode(torch.zeros(1, 16, 4))
    with pytest.raises(ValueError, match="multiple of stft_hop"):
        replace(CFG, hop=1000)
    with pytest.raises(ValueError, match="Nyquist"):
        MelCodec(replace(CFG, f_max=30000.0), sample_rate=SR)
    with pytest.raises(ValueError, match="no STFT bin"):
        MelCodec(replace(CFG, n_fft=64, stft_hop=32, hop=64), sample_rate=SR)


def test_small_preset_config_and_checkpoint_names():
    cfg = get_preset("small")
    assert isinstance(cfg.vae, MelCodecConfig)
    d = cfg.to_dict()
    assert d["model"]["pretransform"]["type"] == "mel_codec"
    assert AudioOmniConfig.from_dict(d) == cfg
    assert cfg.output_band_hz == 11025.0 and get_preset("tiny").output_band_hz is None
    bad = cfg.to_dict()
    bad["model"]["pretransform"]["config"]["window"] = "hann"
    with pytest.raises(ValueError, match="window"):
        AudioOmniConfig.from_dict(bad)
    for key in ("band_mean", "band_std", "band_max"):
        assert internal_to_released(f"vae.{key}") == f"pretransform.model.{key}"
        assert released_to_internal(f"pretransform.model.{key}") == f"vae.{key}"
