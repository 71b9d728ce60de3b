"""Mel conditioner: a mono waveform at its own rate (10 s at 44.1 kHz in the release) -> `seq_len` tokens.

Checkpoint id `audio_input_prompt`. The waveform becomes a natural-log magnitude mel spectrogram
(torchaudio `MelSpectrogram` semantics, re-done here in plain torch), a linear map over the fixed
number of frames, a linear map over the mel bins and a weight-free RMS norm. Used for the source
audio of editing and the voice prompt of TTS.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.conditioners.common import rms_norm

__all__ = ["MelConditioner", "fit_window", "log_mel", "mel_filterbank"]

LOG_FLOOR = 1e-5  # log-mel of silence = ln(1e-5) = -11.5129


def _hz_to_mel(freq_hz: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq_hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + freq_hz / 700.0)
    return 2595.0 * math.log10(1.0 + freq_hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, f_max: float | None = None) -> torch.Tensor:
    """(n_fft//2+1, n_mels) float32 HTK triangular filters from 0 Hz to `f_max` (default
    sample_rate//2), no area norm: between the first and the last centre the filters sum to 1.

    Cached on the CPU; callers move it to their device.
    """
    n_freqs = n_fft // 2 + 1
    top = float(sample_rate // 2) if f_max is None else float(f_max)
    # Explicitly on the CPU: this is cached, and a caller under `torch.device("meta")` must not
    # leave a meta tensor in the cache.
    bin_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64, device="cpu")  # (F,)
    mel_points = torch.linspace(0.0, _hz_to_mel(top), n_mels + 2, dtype=torch.float64, device="cpu")
    edges_hz = _mel_to_hz(mel_points)  # (M+2,) filter edges: lower, centre, upper for each filter
    widths = edges_hz[1:] - edges_hz[:-1]  # (M+1,)
    offsets = edges_hz[None, :] - bin_freqs[:, None]  # (F, M+2)
    rising = -offsets[:, :-2] / widths[:-1]  # (F, M) from the lower edge up to the centre
    falling = offsets[:, 2:] / widths[1:]  # (F, M) from the centre down to the upper edge
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


@functools.lru_cache(maxsize=8)
def _hann(win_length: int) -> torch.Tensor:
    return torch.hann_window(win_length, periodic=True, dtype=torch.float32)


def log_mel(
    wav: torch.Tensor,
    *,
    sample_rate: int = 44100,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 100,
) -> torch.Tensor:
    """(B, N) or (B, C, N) waveform -> (B, n_mels, 1 + N // hop_length) natural-log magnitude mel.

    Periodic Hann window, centred frames with reflect padding, |STFT| (power 1), HTK mel filters,
    `log(max(mel, 1e-5))`. Always float32, autocast or not. Channels are averaged first.
    """
    if wav.dim() == 3:
        wav = wav.mean(dim=1)
    if wav.dim() != 2:
        raise ValueError(f"wav must be (B, N) or (B, C, N), got shape {tuple(wav.shape)}")
    if wav.shape[1] <= n_fft // 2:
        raise ValueError(f"wav needs more than n_fft//2 = {n_fft // 2} samples, got {wav.shape[1]}")
    with torch.autocast(device_type=wav.device.type, enabled=False):
        wav = wav.float()
        spec = torch.stft(
            wav,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=_hann(win_length).to(wav.device),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()  # (B, n_fft//2+1, T)
        fb = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels).to(wav.device)
        mel = torch.matmul(spec.transpose(1, 2), fb).transpose(1, 2)  # (B, M, T)
        return torch.log(torch.clamp(mel, min=LOG_FLOOR))


def fit_window(wav: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Crop a (N,) waveform to its first `num_samples`, or right-pad it with zeros to that length."""
    if wav.dim() != 1:
        raise ValueError(f"wav must be 1-D (N,), got shape {tuple(wav.shape)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if wav.shape[0] >= num_samples:
        return wav[:num_samples]
    return F.pad(wav, (0, num_samples - wav.shape[0]))


class MelConditioner(nn.Module):
    """Mel conditioner (`audio_input_prompt`): (B, N) waveform -> (B, seq_len, out_dim) tokens.

    The frame projection is fixed-size, so N must give exactly `num_frames` frames (440832..441087
    samples for the released 1723 at hop 256; `MelConfig.window_samples` picks one). The released
    Python API masked 70-100 % of a TTS voice prompt's frames at random at inference (a bug);
    nothing is masked here unless `mask_spans` asks for it. `empty_audio_feat` is kept for weight
    compatibility and is unused.
    """

    def __init__(
        self,
        *,
        seq_len: int,
        num_frames: int = 1723,
        n_mels: int = 100,
        out_dim: int = 768,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        sample_rate: int = 44100,
    ) -> None:
        super().__init__()
        for name, value in (
            ("seq_len", seq_len),
            ("num_frames", num_frames),
            ("n_mels", n_mels),
            ("out_dim", out_dim),
            ("n_fft", n_fft),
            ("hop_length", hop_length),
            ("sample_rate", sample_rate),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 1 <= win_length <= n_fft:
            raise ValueError(f"win_length must be in [1, n_fft={n_fft}], got {win_length}")
        self.seq_len = seq_len
        self.num_frames = num_frames
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.sample_rate = sample_rate
        self.empty_audio_feat = nn.Parameter(torch.zeros(1, seq_len, out_dim))
        self.proj_features = nn.Linear(n_mels, out_dim)
        self.proj_sequence_features = nn.Linear(num_frames, seq_len)  # acts on the frame axis

    @property
    def num_samples_range(self) -> tuple[int, int]:
        """Inclusive range of waveform lengths that give exactly `num_frames` frames."""
        low = (self.num_frames - 1) * self.hop_length
        return low, low + self.hop_length - 1

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, C, N) -> (B, n_mels, frames) float32 log-mel with this module's settings."""
        return log_mel(
            wav,
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            n_mels=self.n_mels,
        )

    def forward(
        self, wav: torch.Tensor, *, mask_spans: Sequence[tuple[int, int] | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, seq_len, out_dim) and an all-ones float mask (B, seq_len).

        `wav` (B, N) mono (or (B, C, N), averaged). `mask_spans[i] = (start, length)` sets log-mel
        frames [start, start+length) of item i to 0.0, the TTS training masking; None = no mask.
        """
        if wav.dim() not in (2, 3):
            raise ValueError(f"wav must be (B, N) or (B, C, N), got shape {tuple(wav.shape)}")
        low, high = self.num_samples_range
        if not low <= wav.shape[-1] <= high:
            raise ValueError(
                f"wav has {wav.shape[-1]} samples; the mel conditioner needs {low}..{high} "
                f"({self.num_frames} frames at hop {self.hop_length}); use fit_window to pad or crop"
            )
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("wav contains NaN or Inf samples")
        mel = self.log_mel(wav)  # (B, M, T)
        if mask_spans is not None:
            mel = self._apply_mask_spans(mel, mask_spans)
        return self.from_log_mel(mel)

    def from_log_mel(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and mask from a precomputed (B, n_mels, num_frames) `log_mel` (training caches it)."""
        if mel.dim() != 3 or tuple(mel.shape[1:]) != (self.n_mels, self.num_frames):
            raise ValueError(f"log-mel must be (B, {self.n_mels}, {self.num_frames}), got {tuple(mel.shape)}")
        dtype = self.proj_features.weight.dtype
        x = self.proj_sequence_features(mel.to(dtype))  # (B, M, S)
        x = rms_norm(self.proj_features(x.transpose(1, 2)))  # (B, S, D)
        return x, torch.ones(mel.shape[0], self.seq_len, device=mel.device)

    def _apply_mask_spans(self, mel: torch.Tensor, spans: Sequence[tuple[int, int] | None]) -> torch.Tensor:
        if len(spans) != mel.shape[0]:
            raise ValueError(f"mask_spans has {len(spans)} entries for a batch of {mel.shape[0]}")
        masked = torch.zeros(mel.shape[0], 1, self.num_frames, dtype=torch.bool, device=mel.device)
        for i, span in enumerate(spans):
            if span is None:
                continue
            start, length = (int(v) for v in span)
            if start < 0 or length < 0 or start + length > self.num_frames:
                raise ValueError(
                    f"mask span {span} of item {i} must satisfy 0 <= start, 0 <= length, "
                    f"start + length <= {self.num_frames}"
                )
            masked[i, :, start : start + length] = True
        return mel.masked_fill(masked, 0.0)  # (B, M, T); 0.0, not the log floor, as in training
