"""The media of a report: each audio as a compact Ogg Opus data URI for its player, and its
spectrogram as a PNG data URI (numpy STFT, Pillow image; no plotting library).

The spectrogram is a fixed-size picture whatever the audio's length: `width` analysis frames spread
evenly over the clip (so a 300 s clip costs the same as a 3 s one), 0-Nyquist on a linear axis,
80 dB of range below the clip's loudest bin, coloured by a small dark-to-bright colour ramp."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.limits import MAX_INPUT_AUDIO_S
from orchestrator.audio_codecs import decode_media, encode_delivery

__all__ = ["PLAYER_BIT_RATE", "EmbeddedAudio", "embed_audio", "spectrogram_png"]

PLAYER_BIT_RATE = 48_000  # Opus at 48 kb/s: a 10 s clip is about 60 KB in the page
N_FFT = 1024
DYNAMIC_RANGE_DB = 80.0
# Colour ramp stops (position, RGB): near-black blue -> purple -> orange -> pale yellow.
_RAMP = (
    (0.0, (8, 6, 30)),
    (0.35, (90, 24, 110)),
    (0.65, (220, 80, 60)),
    (0.85, (250, 170, 50)),
    (1.0, (252, 250, 190)),
)


@dataclass(frozen=True)
class EmbeddedAudio:
    """One audio file ready for the page: the player's and the spectrogram's data URIs."""

    player_uri: str
    spectrogram_uri: str
    duration_s: float
    sample_rate: int
    channels: int


def embed_audio(
    data: bytes, *, what: str = "the audio", max_duration_s: float = MAX_INPUT_AUDIO_S * 2
) -> EmbeddedAudio:
    """Decode an audio (or video) file and make its player and spectrogram data URIs; raises
    `BadAudio` naming `what` if it does not decode."""
    frames, rate = decode_media(data, max_duration_s=max_duration_s, what=what)  # (N, C)
    opus = encode_delivery(frames.T, rate, "opus", bit_rate=PLAYER_BIT_RATE)
    png = spectrogram_png(frames.mean(axis=1), rate)
    return EmbeddedAudio(
        player_uri="data:audio/ogg;codecs=opus;base64," + base64.b64encode(opus).decode("ascii"),
        spectrogram_uri="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        duration_s=frames.shape[0] / rate,
        sample_rate=rate,
        channels=int(frames.shape[1]),
    )


def spectrogram_png(audio: np.ndarray, sample_rate: int, *, width: int = 480, height: int = 160) -> bytes:
    """A (N,) float signal's magnitude spectrogram as PNG bytes of `width` x `height` pixels
    (time left to right, frequency bottom to top)."""
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"audio must be (N,) with N > 0, got shape {tuple(audio.shape)}")
    if not (16 <= width <= 4096 and 16 <= height <= 2048):
        raise ValueError(f"width x height {width}x{height} is invalid: expected [16, 4096] x [16, 2048]")
    signal = np.asarray(audio, dtype=np.float32)
    if signal.size < N_FFT:
        signal = np.pad(signal, (0, N_FFT - signal.size))
    starts = np.linspace(0, signal.size - N_FFT, num=width).round().astype(np.int64)
    window = np.hanning(N_FFT).astype(np.float32)
    frames = signal[starts[:, None] + np.arange(N_FFT)[None, :]] * window  # (width, N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (width, N_FFT / 2 + 1)
    db = 10.0 * np.log10(np.maximum(power, 1e-12))
    top = float(db.max())
    level = np.clip((db - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)  # (width, bins)
    rows = _resample_rows(level.T[::-1], height)  # (height, width), low frequencies at the bottom
    pixels = _colour(rows)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _resample_rows(level: np.ndarray, height: int) -> np.ndarray:
    """(bins, width) -> (height, width) by the mean of each row's bins (max where bins < rows)."""
    edges = np.linspace(0, level.shape[0], num=height + 1)
    out = np.empty((height, level.shape[1]), dtype=np.float32)
    for i in range(height):
        lo = int(edges[i])
        hi = max(int(np.ceil(edges[i + 1])), lo + 1)
        out[i] = level[lo:hi].max(axis=0)
    return out


def _colour(level: np.ndarray) -> np.ndarray:
    """[0, 1] levels -> uint8 RGB through the colour ramp."""
    stops = np.array([p for p, _ in _RAMP], dtype=np.float32)
    colours = np.array([c for _, c in _RAMP], dtype=np.float32)  # (stops, 3)
    channels = [np.interp(level, stops, colours[:, k]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)
