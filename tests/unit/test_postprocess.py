"""Waveform post-processing: the source mask for remove / extract edits."""

from __future__ import annotations

import math

import pytest
import torch

from model.postprocess import source_mask

SR = 44100
N = 3 * SR


def _si_sdr(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x - x.mean(), ref - ref.mean()
    target = (x @ ref) / (ref @ ref) * ref
    return 10 * math.log10(float(target.square().sum() / (x - target).square().sum()))


def _scene(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(background noise, a 1-s 700 Hz tone from 1 s to 2 s at about 0 dB SNR), each (N,)."""
    g = torch.Generator().manual_seed(seed)
    background = 0.1 * torch.randn(N, generator=g)
    t = torch.arange(SR) / SR
    event = torch.zeros(N)
    event[SR : 2 * SR] = 0.14 * torch.sin(2 * math.pi * 700 * t + float(torch.rand(1, generator=g)) * 6.28)
    return background, event


def test_an_output_equal_to_the_source_gives_the_source_back():
    background, event = _scene(0)
    mixture = background + event
    out = source_mask(mixture[None].repeat(2, 1), mixture)
    assert out.shape == (2, N)
    assert torch.allclose(out[0], mixture, atol=1e-5)


def test_remove_keeps_the_background_and_attenuates_the_event():
    background, event = _scene(0)
    mixture = background + event
    # What a generative model gives: a background of the same kind, not the same samples.
    other_background, _ = _scene(1)
    out = source_mask(other_background[None], mixture)[0]
    assert _si_sdr(out, background) > _si_sdr(mixture, background) + 3.0
    span = slice(SR, 2 * SR)
    assert float((out[span] - background[span]).square().mean()) < 0.2 * float(event[span].square().mean())


def test_extract_keeps_the_event_and_attenuates_the_background():
    background, event = _scene(0)
    mixture = background + event
    _, other_event = _scene(2)  # same tone and span, another phase: not the same samples
    out = source_mask(other_event[None], mixture)[0]
    assert _si_sdr(out, event) > _si_sdr(mixture, event) + 10.0
    # Outside the event the background is taken away (to well under a tenth of its power).
    quiet = slice(0, SR - 4096)
    assert float(out[quiet].square().mean()) < 0.1 * float(background[quiet].square().mean())


@pytest.mark.parametrize(
    ("generated", "source", "match"),
    [
        (torch.zeros(N), torch.zeros(N), "generated must be"),
        (torch.zeros(2, N), torch.zeros(N - 1), "source must be"),
        (torch.zeros(2, N), torch.zeros(3, N), "source must be"),
    ],
)
def test_bad_shapes_are_refused(generated, source, match):
    with pytest.raises(ValueError, match=match):
        source_mask(generated, source)


def test_even_smoothing_is_refused():
    with pytest.raises(ValueError, match="odd"):
        source_mask(torch.zeros(1, N), torch.zeros(N), smooth_bins=4)


def test_band_limited_output_masks_above_its_band_like_the_band_edge():
    # A codec that keeps only 0-4.1 kHz: what the model removes below the edge goes above it too.
    g = torch.Generator().manual_seed(3)
    background = 0.1 * torch.randn(N, generator=g)
    event = torch.zeros(N)
    event[SR : 2 * SR] = 0.3 * torch.randn(SR, generator=g)  # broadband burst, 1 s to 2 s
    mixture = background + event
    spec = torch.fft.rfft(background)
    spec[int(4134 * N / SR) :] = 0  # the model's remove output: the background, band-limited
    low_background = torch.fft.irfft(spec, n=N)
    plain = source_mask(low_background[None], mixture)[0]
    banded = source_mask(low_background[None], mixture, band_hz=4134.0, sample_rate=SR)[0]
    # Without the band, everything above it is taken away; with it the background's top stays ...
    assert _si_sdr(banded, background) > _si_sdr(plain, background) + 3.0
    assert _si_sdr(banded, background) > _si_sdr(mixture, background) + 3.0
    # ... and the burst is attenuated above the band as well as below it.
    # The 1-s event span has 1 Hz bins: compare what is left of the burst above 6 kHz.
    top = torch.fft.rfft(banded[SR : 2 * SR] - background[SR : 2 * SR])[6000:]
    top_event = torch.fft.rfft(event[SR : 2 * SR])[6000:]
    assert float(top.abs().square().sum()) < 0.3 * float(top_event.abs().square().sum())
    with pytest.raises(ValueError, match="band_hz"):
        source_mask(low_background[None], mixture, band_hz=30000.0, sample_rate=SR)
