"""Video in: the one place that probes input video files and samples their frames (PyAV only, no
ffmpeg processes). The upload route (`probe_video`) and the engine (`VideoClip.open`, then
`VideoClip.frames`) run the same checks, so a file is refused or accepted identically whether it
arrives as an upload or as an `s3://` input.

`probe_video` refuses, before any frame is decoded:

- data that is not an MP4, MOV, Matroska or WebM file, or that the demuxer cannot read;
- a file with no video stream, or whose video uses a codec outside `VIDEO_CODECS`;
- a picture over `MAX_VIDEO_SIDE` / `MAX_VIDEO_PIXELS` (from the header), an average frame rate
  outside [`MIN_VIDEO_FPS`, `MAX_VIDEO_FPS`], a duration over the caller's limit (header first,
  then the packets' own timestamps);
- zero frames, and truncated data: fewer frames than the header declares, or packets that end
  well before the duration it declares.

Then it decodes the first frame (the codec really decodes it; its display rotation is read from
it). Every problem raises `BadVideo` (a `PermanentError`), whose message names what was being read.

Frames are sampled on their presentation timestamps (`VideoClip.frames`): the frame shown at
`start + i / fps` for each i, so a variable frame rate keeps its timing; the display rotation is
applied; each frame is squash-resized (no aspect kept, as the reference does: spec 4.5, 5.4) with
bilinear interpolation and antialiasing; a span past the video's end repeats its last frame.
torch is imported only inside `frames`, so the orchestrator may import this module at its top.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from model.limits import MAX_INPUT_VIDEO_S, MAX_VIDEO_FPS, MAX_VIDEO_PIXELS, MAX_VIDEO_SIDE, MIN_VIDEO_FPS
from orchestrator.errors import BadInputFile
from orchestrator.task_inputs import VIDEO_EXTENSIONS

if TYPE_CHECKING:
    import torch

__all__ = [
    "MP4_VIDEO_CODECS",
    "VIDEO_CODECS",
    "VIDEO_EXTENSIONS",
    "BadVideo",
    "VideoClip",
    "VideoInfo",
    "decode_frames",
    "is_video_name",
    "probe_video",
]

# The demuxers accepted (FFmpeg's names) -> what the file is called.
_MOV_FAMILY, _MATROSKA = "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
# Video codecs accepted (FFmpeg decoder names) and those an MP4 result can carry as they are.
VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "vp9", "av1", "mpeg4"})
_WEBM_CODECS = frozenset({"vp8", "vp9", "av1", "opus", "vorbis"})
# A file whose packets end this much before the duration its header declares is truncated.
_TRUNCATION_SLACK_S = 0.5
_TIME_EPS_S = 1e-4  # a frame this close after a sampling instant still counts as shown at it


class BadVideo(BadInputFile):
    """An input video file that cannot be used (`BadInputFile`: `what`, `reason`)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file turned out to be. `width`/`height` are the stored picture's; `rotation` is
    the display rotation (degrees counter-clockwise, a multiple of 90); `duration_s` and `frames`
    are the video stream's, from its packets' timestamps; `fps` is the average rate."""

    container: str  # "mp4", "mov", "mkv" or "webm"
    codec: str
    width: int
    height: int
    rotation: int
    fps: float
    duration_s: float
    frames: int
    has_audio: bool

    @property
    def ext(self) -> str:
        return self.container

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, rotation applied."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (result metadata, upload views)."""
        width, height = self.display_size
        return {
            "container": self.container,
            "codec": self.codec,
            "width": width,
            "height": height,
            "fps": round(self.fps, 3),
            "duration_s": round(self.duration_s, 3),
            "frames": self.frames,
            "has_audio": self.has_audio,
        }


def is_video_name(uri: str) -> bool:
    """Whether a URI or file name names a video file (by its ending, case-insensitive)."""
    return uri.lower().endswith(VIDEO_EXTENSIONS)


def probe_video(data: bytes, *, max_duration_s: float = MAX_INPUT_VIDEO_S, what: str = "video") -> VideoInfo:
    """Check `data` as an input video file and say what it is (see the module docstring).
    Raises `BadVideo` exactly where the engine's `VideoClip.open` would."""
    _check_limit(max_duration_s)
    with _opened(data, what) as container:
        stream = _video_stream(container, what)
        header = _header(container, stream, max_duration_s, what)
        duration_s, frames = _packets(container, stream, header, max_duration_s, what)
        rotation = _first_frame_rotation(container, stream, what)
        return VideoInfo(
            container=_container_name(container),
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rotation=rotation,
            fps=frames / duration_s,
            duration_s=duration_s,
            frames=frames,
            has_audio=bool(container.streams.audio),
        )


@dataclass(frozen=True)
class VideoClip:
    """A probed video file whose frames are decoded on demand, span by span."""

    data: bytes
    info: VideoInfo
    what: str = "video"

    @classmethod
    def open(cls, data: bytes, *, max_duration_s: float = MAX_INPUT_VIDEO_S, what: str = "video") -> VideoClip:
        return cls(data, probe_video(data, max_duration_s=max_duration_s, what=what), what)

    def frames(self, start_s: float, end_s: float, *, fps: float, size: int) -> torch.Tensor:
        """uint8 (T, 3, size, size): the frames shown at `start_s + i / fps` for i < T, with
        T = round((end_s - start_s) * fps); instants past the video's end repeat its last frame."""
        if not (math.isfinite(start_s) and math.isfinite(end_s) and 0 <= start_s < end_s):
            raise ValueError(f"the span [{start_s!r}, {end_s!r}) is invalid: expected 0 <= start < end seconds")
        if not (math.isfinite(fps) and fps > 0) or not 1 <= size <= 4096:
            raise ValueError(f"fps {fps!r} / size {size!r} are invalid: expected fps > 0 and size in [1, 4096]")
        count = max(1, round((end_s - start_s) * fps))
        instants = [start_s + i / fps for i in range(count)]
        return _sample(self.data, instants, size, self.what)


def decode_frames(
    data: bytes,
    *,
    start_s: float,
    end_s: float,
    fps: float,
    size: int,
    max_duration_s: float = MAX_INPUT_VIDEO_S,
    what: str = "video",
) -> torch.Tensor:
    """Probe `data` (`BadVideo` on refusal), then sample its frames (`VideoClip.frames`)."""
    return VideoClip.open(data, max_duration_s=max_duration_s, what=what).frames(start_s, end_s, fps=fps, size=size)


# --------------------------------------------------------------------------- the checks


def _check_limit(max_duration_s: float) -> None:
    if not (isinstance(max_duration_s, int | float) and max_duration_s > 0 and math.isfinite(max_duration_s)):
        raise ValueError(f"max_duration_s {max_duration_s!r} is invalid: expected a finite number of seconds > 0")


@contextmanager
def _opened(data: bytes, what: str) -> Iterator[Any]:
    """The demuxer over `data`, refused unless it is one of the accepted containers."""
    if not data:
        raise BadVideo(what, "is empty (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise BadVideo(what, f"is not a readable video file (MP4, MOV, MKV or WebM expected): {_reason(exc)}") from None
    try:
        if container.format.name not in (_MOV_FAMILY, _MATROSKA):
            raise BadVideo(what, f"is a {container.format.long_name} file; only MP4, MOV, MKV and WebM are accepted")
        yield container
    finally:
        container.close()


def _video_stream(container: Any, what: str) -> Any:
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise BadVideo(what, f"has no video stream (it holds: {', '.join(kinds)})")
    stream = streams[0]
    codec = stream.codec_context.name
    if codec not in VIDEO_CODECS:
        accepted = ", ".join(sorted(VIDEO_CODECS))
        raise BadVideo(what, f"uses the {codec or 'unknown'} video codec; accepted: {accepted}")
    return stream


@dataclass(frozen=True)
class _Header:
    declared_frames: int  # 0: not declared (Matroska)
    declared_s: float | None


def _header(container: Any, stream: Any, max_duration_s: float, what: str) -> _Header:
    """Resolution, frame rate and duration as the header declares them."""
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise BadVideo(what, f"declares a {width}x{height} picture; it is not a readable video file")
    if max(width, height) > MAX_VIDEO_SIDE or width * height > MAX_VIDEO_PIXELS:
        raise BadVideo(
            what,
            f"is {width}x{height} pixels; the limit is {MAX_VIDEO_SIDE} pixels a side and "
            f"{MAX_VIDEO_PIXELS / 1e6:.1f} megapixels",
        )
    declared_s = None
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        declared_s = float(stream.duration * stream.time_base)
    elif container.duration is not None and container.duration > 0:
        declared_s = container.duration / av.time_base
    if declared_s is not None and declared_s > max_duration_s:
        raise BadVideo(what, f"lasts {declared_s:.1f} s; the limit is {max_duration_s:g} s")
    rate = stream.average_rate or stream.guessed_rate
    if rate is not None and rate > 0:
        _check_fps(float(rate), what)
    return _Header(declared_frames=max(0, int(stream.frames or 0)), declared_s=declared_s)


def _check_fps(fps: float, what: str) -> None:
    if not MIN_VIDEO_FPS <= fps <= MAX_VIDEO_FPS:
        raise BadVideo(what, f"has a frame rate of {fps:g} fps; [{MIN_VIDEO_FPS:g}, {MAX_VIDEO_FPS:g}] fps is accepted")


def _packets(container: Any, stream: Any, header: _Header, max_duration_s: float, what: str) -> tuple[float, int]:
    """Demux (not decode) every video packet: (duration in s, frames). Refuses zero
    frames, truncation, and a duration or frame rate out of bounds by the packets' own timestamps."""
    time_base = stream.time_base or Fraction(1, 1)
    count, first, end = 0, None, None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # the demuxer's flush packet; or a packet without a time (nothing to show)
            count += 1
            first = packet.pts if first is None else min(first, packet.pts)
            stop = packet.pts + max(int(packet.duration or 0), 0)
            end = stop if end is None else max(end, stop)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise BadVideo(what, f"is not a readable video file: its data does not demux ({_reason(exc)})") from None
    if count == 0 or first is None or end is None:
        raise BadVideo(what, "holds no video frames")
    if header.declared_frames and count < header.declared_frames:
        raise BadVideo(
            what,
            f"is truncated: the header declares {header.declared_frames} frames but only {count} are present",
        )
    duration_s = float((end - first) * time_base)
    if duration_s <= 0:  # a single frame without a duration: it is shown for one nominal frame
        rate = stream.average_rate or stream.guessed_rate
        duration_s = 1.0 / float(rate) if rate else 1.0 / MAX_VIDEO_FPS
    if header.declared_s is not None and duration_s < header.declared_s - _TRUNCATION_SLACK_S:
        raise BadVideo(
            what,
            f"is truncated: the header declares {header.declared_s:.2f} s of video "
            f"but its frames end at {duration_s:.2f} s",
        )
    if duration_s > max_duration_s:
        raise BadVideo(what, f"lasts {duration_s:.1f} s; the limit is {max_duration_s:g} s")
    if count > 1:
        _check_fps(count / duration_s, what)
    return duration_s, count


def _first_frame_rotation(container: Any, stream: Any, what: str) -> int:
    """Decode the first frame (proof the codec decodes this stream) and read its display rotation."""
    try:
        container.seek(0)
        for frame in container.decode(stream):
            return _quarter_turns(frame.rotation, what) * 90
    except (av.FFmpegError, ValueError, OSError) as exc:
        reason = f"is not a readable video file: its first frame does not decode ({_reason(exc)})"
        raise BadVideo(what, reason) from None
    raise BadVideo(what, "is not a readable video file: none of its frames decode")


def _quarter_turns(rotation: float | None, what: str) -> int:
    """The display rotation as counter-clockwise quarter turns in [0, 4)."""
    degrees = float(rotation or 0.0)
    turns = round(degrees / 90.0)
    if abs(degrees - 90.0 * turns) > 1.0:
        raise BadVideo(what, f"asks to be shown rotated by {degrees:g} degrees; only multiples of 90 are supported")
    return turns % 4


def _container_name(container: Any) -> str:
    if container.format.name == _MOV_FAMILY:
        brand = str(container.metadata.get("major_brand", "")).strip()
        return "mov" if brand == "qt" else "mp4"
    codecs = {s.codec_context.name for s in container.streams if s.type in ("video", "audio")}
    return "webm" if codecs <= _WEBM_CODECS else "mkv"


def _reason(exc: BaseException) -> str:
    """FFmpeg's own reason, without the file name or object reprs PyAV puts around it."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror).rstrip(".")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if " object at 0x" not in text else type(exc).__name__


# --------------------------------------------------------------------------- sampling


def _sample(data: bytes, instants: list[float], size: int, what: str) -> torch.Tensor:
    """The frames shown at each instant (seconds from the first frame), resized to size x size."""
    import torch

    out: list[torch.Tensor] = []
    with _opened(data, what) as container:
        stream = _video_stream(container, what)
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base or 1)
        origin = _first_pts(container, stream, what)
        if instants[0] > 0:  # start decoding at the last key frame at or before the span
            container.seek(origin + int(instants[0] / time_base), stream=stream, backward=True, any_frame=False)
        shown: Any = None  # the frame on screen at the current instant
        shown_tensor: torch.Tensor | None = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                at = (frame.pts - origin) * time_base
                while len(out) < len(instants) and instants[len(out)] < at - _TIME_EPS_S:
                    if shown is None:  # an instant before the first frame: nothing earlier is shown
                        shown = frame
                    if shown_tensor is None:
                        shown_tensor = _to_tensor(shown, size, what)
                    out.append(shown_tensor)
                if len(out) == len(instants):
                    break
                shown, shown_tensor = frame, None
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise BadVideo(what, f"is not a readable video file: its frames do not decode ({_reason(exc)})") from None
        if shown is None:
            raise BadVideo(what, "is not a readable video file: none of its frames decode")
        last = shown_tensor if shown_tensor is not None else _to_tensor(shown, size, what)
        out.extend([last] * (len(instants) - len(out)))  # past the end: the last frame stays on screen
    return torch.stack(out)


def _first_pts(container: Any, stream: Any, what: str) -> int:
    """The presentation time of the stream's first frame (the origin of every instant)."""
    if stream.start_time is not None:
        return int(stream.start_time)
    for packet in container.demux(stream):
        if packet.pts is not None:
            container.seek(0)
            return int(packet.pts)
    raise BadVideo(what, "holds no video frames")


def _to_tensor(frame: Any, size: int, what: str) -> torch.Tensor:
    """uint8 (3, size, size) of one decoded frame: RGB, display rotation applied, squash-resized
    with bilinear interpolation and antialiasing on the uint8 pixels (as torchvision resizes a
    uint8 frame; torch's uint8 path is also many times faster than going through float)."""
    import torch
    import torch.nn.functional as F

    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
    turns = _quarter_turns(frame.rotation, what)
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))  # counter-clockwise, as the display matrix asks
    image = torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W), channels-last in memory
    if tuple(image.shape[1:]) == (size, size):
        return image.contiguous()
    resized = F.interpolate(image.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.squeeze(0).contiguous()
