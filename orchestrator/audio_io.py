"""Audio in and out of the job system: the one place that probes and decodes input audio, and
encodes model output to WAV/FLAC. numpy/soundfile/soxr only (no torch), so the orchestrator can
import it at module top.

The upload route (`probe_audio`) and the engine (`decode_audio`) run the same checks, so a file is
refused or accepted identically whether it arrives as an upload or as an `s3://` input:

- the format is WAV (PCM 8/16/24/32-bit integers or 32/64-bit floats) or FLAC;
- a WAV's RIFF header agrees with the bytes (RIFF size, chunk sizes, fmt fields, whole frames),
  because libsndfile quietly reads a lying header as shorter audio;
- 1 to `MAX_CHANNELS` channels, a sample rate in [`MIN_SAMPLE_RATE_HZ`, `MAX_SAMPLE_RATE_HZ`];
- at least one frame, no longer than the caller's limit (the header is checked before decoding);
- every frame the header declares decodes, and every sample is finite.

Every problem raises `BadAudio` (a `PermanentError`: retrying would not help), whose message names
what was being read and the problem, never a Python repr.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from orchestrator.errors import BadInputFile

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE_HZ",
    "MIN_SAMPLE_RATE_HZ",
    "AudioInfo",
    "BadAudio",
    "decode_audio",
    "encode_audio",
    "probe_audio",
    "resample",
]

SUPPORTED_FORMATS = ("wav", "flac")  # what `encode_audio` writes and the input checks accept
MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8_000, 192_000
MAX_CHANNELS = 8
BLOCK_FRAMES = 65_536  # frames decoded at a time

# libsndfile's major format names -> ours (WAVEX: a WAV with a WAVE_FORMAT_EXTENSIBLE fmt chunk).
_FORMATS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac"}
_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_WAV_BITS = {_WAV_PCM: (8, 16, 24, 32), _WAV_FLOAT: (32, 64)}
_WAV_KIND = {_WAV_PCM: "integer PCM", _WAV_FLOAT: "float"}


class BadAudio(BadInputFile):
    """An input audio file that cannot be used (`BadInputFile`: `what`, `reason`)."""


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file turned out to be, after all of it decoded."""

    format: str  # "wav" or "flac"
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample (N,) or (N, C) float audio with soxr's high-quality filter; same rate is a no-op."""
    for name, rate in (("from_hz", from_hz), ("to_hz", to_hz)):
        if not isinstance(rate, int) or not 1000 <= rate <= 384_000:
            raise ValueError(f"{name} {rate!r} is invalid: expected an integer in [1000, 384000] Hz")
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=False)
    out: np.ndarray = soxr.resample(audio.astype(np.float32, copy=False), from_hz, to_hz, quality="HQ")
    return out.astype(np.float32)


def probe_audio(data: bytes, *, max_duration_s: float, what: str = "audio") -> AudioInfo:
    """Check `data` as an input audio file and say what it is, decoding all of it (in blocks: the
    samples are not kept). Raises `BadAudio` exactly where `decode_audio` would."""
    info, handle = _open(data, max_duration_s=max_duration_s, what=what)
    with handle:
        for _ in _blocks(handle, info, what):
            pass
    return info


def decode_audio(
    data: bytes,
    *,
    sample_rate: int,
    max_duration_s: float,
    what: str = "audio",
    mono: bool = True,
) -> np.ndarray:
    """Decode WAV/FLAC bytes to float32 at `sample_rate`: (N,) when `mono` (channels averaged),
    else (N, C). Raises `BadAudio` naming `what` for any file `probe_audio` refuses."""
    info, handle = _open(data, max_duration_s=max_duration_s, what=what)
    with handle:
        # Mix each block as it decodes, so a mono decode never holds all channels at once.
        parts = [block.mean(axis=1) if mono else block for block in _blocks(handle, info, what)]
    audio = np.concatenate(parts, axis=0)  # (N,) or (N, C)
    return resample(audio, info.sample_rate, sample_rate)


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode (C, N) or (N,) float audio in [-1, 1] as 16-bit PCM WAV or FLAC bytes.

    The output is a pure function of the samples (no timestamps in the header), so a replayed job
    writes identical bytes.
    """
    if fmt not in SUPPORTED_FORMATS:
        raise ValueError(f"fmt {fmt!r} is invalid: expected one of {', '.join(SUPPORTED_FORMATS)}")
    if audio.ndim not in (1, 2) or audio.shape[-1] == 0:
        raise ValueError(f"audio must be (C, N) or (N,) with N > 0, got shape {tuple(audio.shape)}")
    frames = audio.T if audio.ndim == 2 else audio  # (N, C) or (N,)
    frames = np.clip(np.nan_to_num(frames.astype(np.float32), nan=0.0), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, frames, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


# --------------------------------------------------------------------------- the checks


def _open(data: bytes, *, max_duration_s: float, what: str) -> tuple[AudioInfo, sf.SoundFile]:
    """Every check that needs only the header; returns the file's info and an open handle."""
    if not (isinstance(max_duration_s, int | float) and max_duration_s > 0 and math.isfinite(max_duration_s)):
        raise ValueError(f"max_duration_s {max_duration_s!r} is invalid: expected a finite number of seconds > 0")
    if not data:
        raise BadAudio(what, "is empty (0 bytes)")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        problem = _wav_header_problem(data)
        if problem:
            raise BadAudio(what, problem)
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, sf.SoundFileRuntimeError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(what, f"is not a readable audio file (WAV or FLAC expected): {_sf_reason(exc)}") from None
    try:
        kind = _FORMATS.get(str(handle.format).upper())
        if kind is None:
            raise BadAudio(what, f"is {handle.format} audio; only WAV and FLAC are accepted")
        rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
        if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
            raise BadAudio(
                what, f"has a sample rate of {rate} Hz; [{MIN_SAMPLE_RATE_HZ}, {MAX_SAMPLE_RATE_HZ}] Hz is accepted"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise BadAudio(what, f"has {channels} channels; 1 to {MAX_CHANNELS} are accepted")
        if frames <= 0:
            raise BadAudio(what, "holds no samples (0 frames)")
        duration_s = frames / rate
        if duration_s > max_duration_s:
            raise BadAudio(what, f"lasts {duration_s:.1f} s; the limit is {max_duration_s:g} s")
    except BaseException:
        handle.close()
        raise
    return AudioInfo(format=kind, sample_rate=rate, channels=channels, frames=frames), handle


def _blocks(handle: sf.SoundFile, info: AudioInfo, what: str) -> Iterator[np.ndarray]:
    """The file's samples as (n, C) float32 blocks, each checked to be finite; refuses a file
    that decodes to more or fewer frames than its header declares."""
    decoded = 0
    try:
        while True:
            block = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)  # (n, C)
            if block.shape[0] == 0:
                break
            decoded += block.shape[0]
            if decoded > info.frames:
                break
            if not np.isfinite(block).all():
                raise BadAudio(what, "contains NaN or Inf samples")
            yield block
    except (sf.LibsndfileError, sf.SoundFileRuntimeError, RuntimeError) as exc:
        raise BadAudio(what, f"is not a readable audio file: it does not decode ({_sf_reason(exc)})") from None
    if decoded != info.frames:
        more = "more" if decoded > info.frames else f"only {decoded}"
        raise BadAudio(
            what, f"is not a readable audio file: the header declares {info.frames} frames but {more} decode"
        )


def _wav_header_problem(data: bytes) -> str | None:
    """Walk a RIFF/WAVE file's chunks; say what disagrees with the bytes or is not supported."""
    bad = "is not a readable audio file: "
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size + 8 != len(data):
        return f"{bad}the RIFF header says {riff_size + 8} bytes but the file has {len(data)}"
    pos, fmt_at, fmt_size, data_size = 12, -1, 0, -1
    while pos < len(data):
        if pos + 8 > len(data):
            return f"{bad}a truncated chunk header at byte {pos}"
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if body + size > len(data):
            name = chunk_id.decode("ascii", "replace").strip()
            return f"{bad}its '{name}' chunk claims {size} bytes but only {len(data) - body} follow"
        if chunk_id == b"fmt ":
            fmt_at, fmt_size = body, size
        elif chunk_id == b"data":
            data_size = size
        pos = body + size + (size & 1)  # chunks are padded to even sizes
    if fmt_at < 0 or data_size < 0:
        return f"{bad}it lacks a 'fmt ' or 'data' chunk"
    if fmt_size < 16:
        return f"{bad}its 'fmt ' chunk is {fmt_size} bytes; at least 16 expected"
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", data, fmt_at)
    valid_bits = bits
    if tag == _WAV_EXTENSIBLE:
        if fmt_size < 40:
            return f"{bad}its extensible 'fmt ' chunk is {fmt_size} bytes; 40 expected"
        valid_bits = struct.unpack_from("<H", data, fmt_at + 18)[0]
        tag = struct.unpack_from("<H", data, fmt_at + 24)[0]  # the sub-format GUID starts with the tag
    if tag not in _WAV_BITS:
        return f"uses WAV encoding 0x{tag:04x}; only integer PCM and IEEE float WAV are accepted"
    allowed = _WAV_BITS[tag]
    if bits not in allowed or valid_bits not in allowed or valid_bits > bits:
        width = valid_bits if bits in allowed else bits
        accepted = "/".join(str(b) for b in allowed)
        return f"has {width}-bit {_WAV_KIND[tag]} samples; {accepted}-bit {_WAV_KIND[tag]} WAV is accepted"
    if channels < 1 or block_align != channels * bits // 8:
        return (
            f"{bad}its 'fmt ' chunk disagrees with itself: {channels} channels of {bits} bits "
            f"but {block_align} bytes per frame"
        )
    if byte_rate != rate * block_align:
        return (
            f"{bad}its 'fmt ' chunk disagrees with itself: {byte_rate} bytes/s "
            f"is not {rate} Hz x {block_align} bytes per frame"
        )
    if data_size % block_align:
        return f"{bad}its 'data' chunk ({data_size} bytes) is not a whole number of {block_align}-byte frames"
    return None


def _sf_reason(exc: BaseException) -> str:
    """libsndfile's own reason, without the "Error opening <_io.BytesIO object at 0x...>: " prefix
    soundfile puts before it."""
    if isinstance(exc, sf.LibsndfileError):
        return exc.error_string.removeprefix("Error : ").rstrip(".")
    text = str(exc)
    if "<" in text and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text.rstrip(".") or type(exc).__name__
