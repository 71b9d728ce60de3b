"""Audio in and out of the job system: decode WAV/FLAC bytes, mix to mono, resample, check lengths,
and encode model output to WAV/FLAC. numpy/soundfile/soxr only (no torch), so the orchestrator can
import it at module top.

Every problem with an input raises `BadAudio` (a `PermanentError`): the job fails with that reason
and retrying would not help.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import soxr

from orchestrator.errors import PermanentError

__all__ = ["BadAudio", "decode_audio", "encode_audio", "resample"]

SUPPORTED_FORMATS = ("wav", "flac")


class BadAudio(PermanentError):
    """An input audio file that cannot be used (unreadable, empty, too long, NaN...)."""


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample (N,) or (N, C) float audio with soxr's high-quality filter; same rate is a no-op."""
    for name, rate in (("from_hz", from_hz), ("to_hz", to_hz)):
        if not isinstance(rate, int) or not 1000 <= rate <= 384_000:
            raise ValueError(f"{name} must be an int in [1000, 384000] Hz, got {rate!r}")
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio.astype(np.float32, copy=False), from_hz, to_hz, quality="HQ").astype(
        np.float32
    )


def decode_audio(
    data: bytes,
    *,
    sample_rate: int,
    max_duration_s: float,
    what: str = "audio",
    mono: bool = True,
) -> np.ndarray:
    """Decode WAV/FLAC (or any libsndfile format) bytes to float32 at `sample_rate`.

    Returns (N,) when `mono` (channels averaged), else (N, C). Raises `BadAudio` naming `what` when
    the bytes do not decode, hold no samples, contain NaN/Inf, or last longer than `max_duration_s`
    (checked on the header before decoding, so an oversized file is never fully read).
    """
    if not (isinstance(max_duration_s, int | float) and max_duration_s > 0 and math.isfinite(max_duration_s)):
        raise ValueError(f"max_duration_s must be a finite number > 0, got {max_duration_s!r}")
    if not data:
        raise BadAudio(f"{what}: the file is empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            frames, rate = handle.frames, handle.samplerate
            duration_s = frames / rate if rate else 0.0
            if duration_s > max_duration_s:
                raise BadAudio(f"{what} lasts {duration_s:.1f} s; the limit is {max_duration_s:g} s")
            samples = handle.read(dtype="float32", always_2d=True)  # (N, C)
    except BadAudio:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(f"{what} is not a readable audio file (WAV/FLAC expected): {exc}") from None
    if samples.shape[0] == 0:
        raise BadAudio(f"{what} holds no samples")
    if not np.isfinite(samples).all():
        raise BadAudio(f"{what} contains NaN or Inf samples")
    audio = samples.mean(axis=1) if mono else samples  # (N,) or (N, C)
    return resample(audio, int(rate), sample_rate)


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode (C, N) or (N,) float audio in [-1, 1] as 16-bit PCM WAV or FLAC bytes.

    The output is a pure function of the samples (no timestamps in the header), so a replayed job
    writes identical bytes.
    """
    if fmt not in SUPPORTED_FORMATS:
        raise ValueError(f"fmt must be one of {SUPPORTED_FORMATS}, got {fmt!r}")
    if audio.ndim not in (1, 2) or audio.shape[-1] == 0:
        raise ValueError(f"audio must be (C, N) or (N,) with N > 0, got shape {audio.shape}")
    frames = audio.T if audio.ndim == 2 else audio  # (N, C) or (N,)
    frames = np.clip(np.nan_to_num(frames.astype(np.float32), nan=0.0), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, frames, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()
