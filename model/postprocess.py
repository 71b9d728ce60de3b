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
