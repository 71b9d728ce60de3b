"""Audio in the formats people exchange, beyond the job system's own WAV/FLAC (`audio_io`): MP3,
Ogg Opus, AAC and raw PCM out, and any container PyAV reads in (MP3, M4A, Ogg, WebM, the audio
track of an MP4...). PyAV (`av`) only: no ffmpeg subprocess.

Used by the OpenAI-compatible routes (speech in the asked format; a transcription's upload of any
common format) and by the batch report (compact players as data URIs).

- `encode_delivery(audio, rate, fmt)`: (C, N) or (N,) float audio -> bytes of `fmt`, one of
  `DELIVERY_FORMATS`. `pcm` is headerless signed 16-bit little-endian mono at `PCM_RATE_HZ`
  (24 kHz, what OpenAI's `pcm` is), Opus is resampled to 48 kHz (the rate Opus codes at).
- `decode_media(data, max_duration_s=..., what=...)`: the first audio stream of a media file as
  (N, C) float32 and its rate; a file that is not one raises `BadAudio` naming `what`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from orchestrator.audio_io import MAX_CHANNELS, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, BadAudio, resample

__all__ = [
    "DELIVERY_FORMATS",
    "PCM_RATE_HZ",
    "DeliveryFormat",
    "decode_media",
    "encode_delivery",
]

PCM_RATE_HZ = 24_000  # raw PCM out: mono s16le at this rate (OpenAI's `pcm`)
OPUS_RATE_HZ = 48_000


@dataclass(frozen=True)
class DeliveryFormat:
    """How one format is written: PyAV container and codec (None for raw PCM), its MIME type."""

    name: str
    content_type: str
    container: str | None
    codec: str | None
    bit_rate: int | None = None


DELIVERY_FORMATS: dict[str, DeliveryFormat] = {
    "mp3": DeliveryFormat("mp3", "audio/mpeg", "mp3", "libmp3lame", 128_000),
    "opus": DeliveryFormat("opus", "audio/ogg", "ogg", "libopus", 64_000),
    "aac": DeliveryFormat("aac", "audio/aac", "adts", "aac", 128_000),
    "pcm": DeliveryFormat("pcm", "audio/pcm", None, None),
}


def encode_delivery(audio: np.ndarray, sample_rate: int, fmt: str, *, bit_rate: int | None = None) -> bytes:
    """Encode (C, N) or (N,) float audio in [-1, 1] as `fmt` (a key of `DELIVERY_FORMATS`).

    `bit_rate` overrides the format's default (bits per second; ignored for pcm)."""
    spec = DELIVERY_FORMATS.get(fmt)
    if spec is None:
        raise ValueError(f"fmt {fmt!r} is invalid: expected one of {', '.join(DELIVERY_FORMATS)}")
    if audio.ndim not in (1, 2) or audio.shape[-1] == 0:
        raise ValueError(f"audio must be (C, N) or (N,) with N > 0, got shape {tuple(audio.shape)}")
    frames = audio.T if audio.ndim == 2 else audio[:, None]  # (N, C)
    frames = np.clip(np.nan_to_num(frames.astype(np.float32), nan=0.0), -1.0, 1.0)
    if spec.container is None:  # raw PCM: mono s16le at PCM_RATE_HZ
        mono = resample(frames.mean(axis=1), sample_rate, PCM_RATE_HZ)
        return (np.clip(mono, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    if spec.codec == "libopus" and sample_rate != OPUS_RATE_HZ:
        frames = np.clip(resample(frames, sample_rate, OPUS_RATE_HZ), -1.0, 1.0)
        sample_rate = OPUS_RATE_HZ
    channels = min(frames.shape[1], 2)
    if frames.shape[1] > 2:  # down-mix anything wider than stereo
        frames = np.repeat(frames.mean(axis=1, keepdims=True), 2, axis=1)
    return _encode(frames[:, :channels], sample_rate, spec, bit_rate or spec.bit_rate)


def _encode(frames: np.ndarray, sample_rate: int, spec: DeliveryFormat, bit_rate: int | None) -> bytes:
    """(N, C) float32 frames through PyAV's encoder into `spec`'s container."""
    assert spec.container is not None and spec.codec is not None
    layout = "mono" if frames.shape[1] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=sample_rate, layout=layout)
        if not isinstance(stream, av.AudioStream):
            raise TypeError(f"{spec.codec} is not an audio encoder")
        if bit_rate:
            stream.bit_rate = bit_rate
        planar = np.ascontiguousarray(frames.T)  # (C, N): the "fltp" layout every encoder here takes
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def decode_media(data: bytes, *, max_duration_s: float, what: str = "the file") -> tuple[np.ndarray, int]:
    """The first audio stream of a media file as (N, C) float32 frames and their sample rate.

    Any container and codec PyAV reads (MP3, M4A/AAC, Ogg Vorbis/Opus, WebM, WAV, FLAC, the audio
    track of an MP4 or MKV video). Refused with `BadAudio` naming `what`: not a media file, no
    audio stream, a rate or channel count out of range, no samples, longer than `max_duration_s`
    (checked as it decodes, so an absurd file stops early), non-finite samples."""
    if not data:
        raise BadAudio(what, "is empty (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise BadAudio(what, f"is not a readable audio or video file ({_reason(exc)})") from None
    with container:
        if not container.streams.audio:
            raise BadAudio(what, "has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate or 0)
        channels = int(stream.channels or 0)
        if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
            raise BadAudio(
                what, f"has a sample rate of {rate} Hz; [{MIN_SAMPLE_RATE_HZ}, {MAX_SAMPLE_RATE_HZ}] Hz is accepted"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise BadAudio(what, f"has {channels} channels; 1 to {MAX_CHANNELS} are accepted")
        limit = int(max_duration_s * rate)
        parts: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                block = _planar(frame.to_ndarray(), frame.format.is_planar, channels)  # (n, C)
                total += block.shape[0]
                if total > limit:
                    raise BadAudio(what, f"lasts more than {max_duration_s:g} s; the limit is {max_duration_s:g} s")
                parts.append(block)
        except av.error.FFmpegError as exc:
            raise BadAudio(what, f"does not decode ({_reason(exc)})") from None
    if total == 0:
        raise BadAudio(what, "holds no audio samples")
    audio = np.concatenate(parts, axis=0)
    if not np.isfinite(audio).all():
        raise BadAudio(what, "contains NaN or Inf samples")
    return audio, rate


def _planar(samples: np.ndarray, planar: bool, channels: int) -> np.ndarray:
    """One decoded frame as (n, C) float32 in [-1, 1], whatever its sample format."""
    block = samples.T if planar else samples.reshape(-1, channels)  # (C, n) planar, (1, n * C) packed
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        block = (block.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    return np.ascontiguousarray(block, dtype=np.float32)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).rstrip(".") or type(exc).__name__
