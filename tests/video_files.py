"""Video files made in the tests (PyAV): a good clip of moving shapes, the variants the system must
handle (variable frame rate, rotation metadata, odd sizes, other containers) and a corpus of bad
files, one per refusal class. Deterministic and small (a few KB each)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

__all__ = ["BAD_VIDEOS", "bad_video", "make_video", "video_packets"]


def _picture(i: int, width: int, height: int) -> np.ndarray:
    """Frame i: a dark background, a bright square moving right, a bar moving down, and a
    top-left marker (pure red) that shows where the picture's corner went after rotation."""
    img = np.full((height, width, 3), 30, np.uint8)
    side = max(2, min(width, height) // 4)
    x = (i * 3) % max(1, width - side)
    img[height // 2 - side // 2 : height // 2 + side // 2, x : x + side] = (240, 240, 60)
    y = (i * 2) % max(1, height - 2)
    img[y : y + 2, :, 2] = 255
    img[: max(2, height // 8), : max(2, width // 8)] = (255, 0, 0)
    return img


def make_video(
    *,
    seconds: float = 3.0,
    fps: int = 25,
    width: int = 64,
    height: int = 48,
    fmt: str = "mp4",
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    vfr: bool = False,
    audio: bool = False,
) -> bytes:
    """A clip of `seconds` at `fps` (with `vfr`, frames alternate 1.5 and 0.5 frame periods)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "bframes": "0"}
        tick = Fraction(1, fps * 2)
        if vfr:
            stream.codec_context.time_base = tick
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=44_100) if audio else None
        pts = 0
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(_picture(i, width, height), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, tick
                pts += 3 if i % 2 == 0 else 1
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            _write_tone(out, sound, seconds)
    return buf.getvalue()


def _write_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = 44_100
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    for start in range(0, tone.shape[1], 1024):
        chunk = np.ascontiguousarray(tone[:, start : start + 1024])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        _write_tone(out, out.add_stream("aac", rate=44_100), 1.0)
    return buf.getvalue()


def _zero_frames() -> bytes:
    """A Matroska file whose video track is declared but holds no frame (MP4 drops such a track)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        _write_tone(out, out.add_stream("aac", rate=44_100), 1.0)
    return buf.getvalue()


def bad_video(kind: str) -> bytes:
    """One bad file of the class `kind` (a key of `BAD_VIDEOS`)."""
    if kind == "no_video_stream":
        return _audio_only()
    if kind == "zero_frames":
        return _zero_frames()
    if kind == "too_long":  # 301 s at 1 fps, over the 300 s limit
        return make_video(seconds=301, fps=1, width=16, height=16)
    if kind == "too_large":  # 4112 pixels wide, over the 4096-pixel side limit
        return make_video(seconds=0.2, fps=10, width=4112, height=16)
    if kind == "absurd_fps":
        return make_video(seconds=0.03, fps=1000, width=16, height=16)
    if kind == "truncated":  # a Matroska file cut in half: its header declares 3 s
        data = make_video(fmt="matroska")
        return data[: len(data) // 2]
    if kind == "truncated_tail":  # the sample tables (at the end) gone
        data = make_video()
        return data[: len(data) * 2 // 3]
    if kind == "garbage":
        return np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    raise ValueError(f"unknown bad video kind {kind!r}")


# kind -> words the refusal message must contain
BAD_VIDEOS: dict[str, str] = {
    "no_video_stream": "has no video stream",
    "zero_frames": "holds no video frames",
    "too_long": "the limit is 300 s",
    "too_large": "4112x16 pixels",
    "absurd_fps": "frame rate of 1000 fps",
    "truncated": "is truncated",
    "truncated_tail": "is not a readable video file",
    "garbage": "is not a readable video file",
}


def video_packets(data: bytes) -> list[bytes]:
    """The bytes of every packet of the first video stream, in file order."""
    with av.open(io.BytesIO(data)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]
