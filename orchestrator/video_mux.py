"""Video out: the input video with a generated soundtrack, as an MP4 (PyAV only).

`mux_soundtrack` copies the input's video packets into a new MP4 as they are (no re-encoding: the
picture, its timestamps and its codec parameters are the input's), encodes the generated audio as
AAC, and fits that audio to the video's length (cut, or padded with silence). The input's own
audio tracks, subtitles and attachments are dropped. The output is a pure function of its inputs.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

from orchestrator.video_io import MP4_VIDEO_CODECS, BadVideo, probe_video

__all__ = ["AAC_RATES", "check_muxable", "mux_soundtrack"]

# Sample rates an AAC track may have (MPEG-4 sampling frequency table).
AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000})
_AAC_BIT_RATE_PER_CHANNEL = 96_000
_AAC_FRAME = 1024  # samples per AAC frame


def check_muxable(codec: str, what: str = "video") -> None:
    """Refuse (`BadVideo`) a video codec an MP4 result could not carry unchanged."""
    if codec not in MP4_VIDEO_CODECS:
        accepted = ", ".join(sorted(MP4_VIDEO_CODECS))
        reason = f"uses the {codec} codec, which an MP4 result cannot carry unchanged ({accepted}); ask for wav or flac"
        raise BadVideo(what, reason)


def mux_soundtrack(video: bytes, audio: np.ndarray, sample_rate: int, *, what: str = "video") -> bytes:
    """An MP4 of `video`'s video stream (packets copied) and `audio` ((C, N) or (N,) float in
    [-1, 1] at `sample_rate`) as AAC, the audio cut or padded with silence to the video's length."""
    if sample_rate not in AAC_RATES:
        raise ValueError(f"sample_rate {sample_rate!r} is invalid for AAC: expected one of {sorted(AAC_RATES)}")
    samples = audio[None, :] if audio.ndim == 1 else audio
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= 2 or samples.shape[1] == 0:
        raise ValueError(f"audio must be (C, N) with C in {{1, 2}} and N > 0, got shape {tuple(audio.shape)}")
    info = probe_video(video, what=what)
    check_muxable(info.codec, what)
    length = max(1, round(info.duration_s * sample_rate))
    track = np.zeros((samples.shape[0], length), dtype=np.float32)
    keep = min(length, samples.shape[1])
    track[:, :keep] = np.clip(np.nan_to_num(samples[:, :keep].astype(np.float32), nan=0.0), -1.0, 1.0)

    out = io.BytesIO()
    with av.open(io.BytesIO(video), mode="r") as source, av.open(out, mode="w", format="mp4") as sink:
        in_video = next(s for s in source.streams.video if not s.disposition & av.stream.Disposition.attached_pic)
        out_video = sink.add_stream_from_template(in_video)
        out_audio = _aac_stream(sink, sample_rate, track.shape[0])
        for packet in source.demux(in_video):
            if packet.dts is None and packet.pts is None:
                continue  # the demuxer's flush packet
            packet.stream = out_video
            sink.mux(packet)
        _encode_audio(sink, out_audio, track, sample_rate)
    return out.getvalue()


def _aac_stream(sink: Any, sample_rate: int, channels: int) -> Any:
    stream = sink.add_stream("aac", rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    stream.bit_rate = _AAC_BIT_RATE_PER_CHANNEL * channels
    return stream


def _encode_audio(sink: Any, stream: Any, track: np.ndarray, sample_rate: int) -> None:
    layout = "mono" if track.shape[0] == 1 else "stereo"
    for start in range(0, track.shape[1], _AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(track[:, start : start + _AAC_FRAME]), format="fltp", layout=layout
        )
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            sink.mux(packet)
    for packet in stream.encode(None):
        sink.mux(packet)
