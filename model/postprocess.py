"""Waveform post-processing shared by every generating task (spec §7.6), in float."""

from __future__ import annotations

import torch


def peak_normalize(audio: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Scale (C, N) audio so its peak is 1, then clamp to [-1, 1].

    The reference divides by the global peak and would produce NaN for an all-zero output; silence
    stays silence here.
    """
    audio = audio.float()
    peak = audio.abs().amax()
    return (audio / peak.clamp_min(eps)).clamp(-1.0, 1.0)


def to_int16(audio: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] -> int16 by x32767 and truncation toward zero, as the reference does."""
    return (audio.clamp(-1.0, 1.0) * 32767.0).to(torch.int16)


def trim_silence(
    audio: torch.Tensor, *, frame: int = 2048, hop: int = 512, top_db: float = 30.0, min_samples: int = 8820
) -> torch.Tensor:
    """Trim leading/trailing low-energy audio (TTS outputs), keeping at least `min_samples`.

    Frames of `frame` samples every `hop`; a frame is active when its energy is within `top_db` of the
    loudest frame. Audio shorter than one frame is returned unchanged.
    """
    n = audio.shape[-1]
    if n < frame:
        return audio
    mono = audio.float().mean(dim=0)  # (N,)
    frames = mono.unfold(0, frame, hop)  # (F, frame)
    db = 10.0 * torch.log10((frames**2).mean(dim=1).clamp_min(1e-10))  # (F,)
    active = torch.nonzero(db >= db.max() - top_db).flatten()
    start = int(active[0]) * hop
    end = min(int(active[-1]) * hop + frame, n)
    if end - start < min_samples:
        centre = (start + end) // 2
        start = max(0, min(centre - min_samples // 2, n - min_samples))
        end = min(n, start + min_samples)
    return audio[..., start:end]


def source_mask(
    generated: torch.Tensor,
    source: torch.Tensor,
    *,
    n_fft: int = 2048,
    hop: int = 512,
    smooth_bins: int = 5,
    smooth_frames: int = 9,
    eps: float = 1e-10,
    band_hz: float | None = None,
    sample_rate: int = 44100,
) -> torch.Tensor:
    """Remove / extract output that keeps the source's phase: the model's output as a soft mask.

    `generated` (C, N) is the model's edit of `source` ((N,) mono or (C, N)). Both are taken to the
    STFT; their power spectra are smoothed over `smooth_bins` x `smooth_frames` (so the random
    fine structure of generated noise does not become a random mask); the gain
    `min(1, sqrt(P_generated / P_source))` is applied to the source's STFT, and the result is
    inverted. Where the model kept the source, the source passes unchanged; where it took something
    away, that part is attenuated. It can only take away from the source, so it suits edits whose
    target is a part of the source (remove, extract), not add or style transfer. Returns (C, N)
    float32 at the source's level (not peak-normalised).

    `band_hz`: the model's output carries nothing above this frequency (the `small` preset's codec).
    There each frame takes the gain the model gave the bins just below (at 0.9 x `band_hz`, under
    the band edge's roll-off), so what the model removes in its band goes above it too; without it
    everything above would be removed.
    """
    if generated.dim() != 2:
        raise ValueError(f"generated must be (C, N), got shape {tuple(generated.shape)}")
    channels, n = generated.shape
    src = source.float()
    if src.dim() == 1:
        src = src[None].expand(channels, -1)
    if src.dim() != 2 or tuple(src.shape) != (channels, n):
        raise ValueError(f"source must be ({n},) or ({channels}, {n}), got shape {tuple(source.shape)}")
    if smooth_bins < 1 or smooth_frames < 1 or smooth_bins % 2 == 0 or smooth_frames % 2 == 0:
        raise ValueError(f"smoothing sizes must be odd and >= 1, got {smooth_bins} x {smooth_frames}")
    if n <= n_fft // 2:
        return src.clone()  # too short for one frame: nothing to mask against
    window = torch.hann_window(n_fft, device=src.device)

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, n_fft, hop, window=window, return_complex=True)  # (C, F, T)

    def smoothed_power(spec: torch.Tensor) -> torch.Tensor:
        power = spec.abs().square().mean(dim=0, keepdim=True)  # (1, F, T): one mask for all channels
        kernel = (smooth_bins, smooth_frames)
        pad = (smooth_bins // 2, smooth_frames // 2)
        return torch.nn.functional.avg_pool2d(power, kernel, stride=1, padding=pad, count_include_pad=False)

    spec_src = stft(src)
    gain = (smoothed_power(stft(generated.float())) / (smoothed_power(spec_src) + eps)).sqrt().clamp(max=1.0)
    if band_hz is not None:
        edge = int(0.9 * band_hz * n_fft / sample_rate)  # STFT bin
        if not 0 < edge < gain.shape[1] - 1:
            raise ValueError(f"band_hz = {band_hz} is outside (0, {sample_rate / 2}) Hz for this STFT")
        gain[:, edge + 1 :] = gain[:, edge : edge + 1]  # (1, F, T): carry the edge's gain up, per frame
    return torch.istft(spec_src * gain, n_fft, hop, window=window, length=n)
