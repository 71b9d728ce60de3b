"""orchestrator.video_io / video_mux on real files made with PyAV: what is accepted and how it is
described, the bad-file corpus refused before decoding, frames sampled on their timestamps (VFR,
rotation, odd sizes, squash-resize), the MP4 soundtrack mux (packets copied byte for byte), and the
plan of a long video-to-music job (each segment reads its own span of video)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import get_preset
from model.pipeline import VIDEO_WINDOW_S, TaskInputs, plan_task, window_frames
from model.tasks import Task
from orchestrator.errors import PermanentError
from orchestrator.video_io import BadVideo, VideoClip, decode_frames, is_video_name, probe_video
from orchestrator.video_mux import check_muxable, mux_soundtrack
from tests.video_files import BAD_VIDEOS, bad_video, make_video, video_packets

RATE_HZ = 44_100


def _decoded(data: bytes) -> list[tuple[float, np.ndarray]]:
    """Every frame of the first video stream as (seconds from the first frame, RGB (H, W, 3))."""
    with av.open(io.BytesIO(data)) as container:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    origin = frames[0][0]
    return [(t - origin, rgb) for t, rgb in frames]


def _resized(rgb: np.ndarray, size: int) -> torch.Tensor:
    """The spec's resize (bilinear, antialiased) of a uint8 RGB frame, uint8 (3, size, size)."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).contiguous()
    out = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    # the uint8 kernel rounds in fixed point: within one level of the float computation
    ref = F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    assert (out.float() - ref.round().clamp(0, 255)).abs().max() <= 1
    return out.squeeze(0)


@pytest.mark.parametrize(
    ("kwargs", "container", "codec"),
    [
        ({}, "mp4", "h264"),
        ({"fmt": "mov"}, "mov", "h264"),
        ({"fmt": "matroska"}, "mkv", "h264"),
        ({"fmt": "webm", "codec": "libvpx-vp9"}, "webm", "vp9"),
    ],
)
def test_probe_describes_accepted_containers(kwargs, container, codec):
    info = probe_video(make_video(**kwargs), what="input video")
    assert (info.container, info.codec, info.width, info.height) == (container, codec, 64, 48)
    assert info.frames == 75 and info.fps == pytest.approx(25.0) and info.duration_s == pytest.approx(3.0)
    assert info.rotation == 0 and not info.has_audio and info.ext == container


def test_probe_reports_audio_rotation_and_odd_sizes():
    assert probe_video(make_video(audio=True)).has_audio
    rotated = probe_video(make_video(rotation=90))
    assert rotated.rotation == 90 and rotated.display_size == (48, 64)
    assert rotated.summary()["width"] == 48 and rotated.summary()["height"] == 64
    odd = probe_video(make_video(width=225, height=127, pix_fmt="yuv444p"))
    assert (odd.width, odd.height) == (225, 127)
    vfr = probe_video(make_video(vfr=True))
    assert vfr.frames == 75 and vfr.duration_s == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("kind", sorted(BAD_VIDEOS))
def test_bad_videos_are_refused_with_their_reason(kind):
    with pytest.raises(BadVideo) as info:
        probe_video(bad_video(kind), what="input video")
    message = str(info.value)
    assert isinstance(info.value, PermanentError)
    assert message.startswith("input video ") and BAD_VIDEOS[kind] in message, message
    assert "0x" not in message and "<" not in message  # no Python reprs


def test_refusals_before_decoding_use_the_callers_limit_and_empty_data():
    with pytest.raises(BadVideo, match=r"lasts 3\.0 s; the limit is 2 s"):
        probe_video(make_video(), max_duration_s=2.0)
    with pytest.raises(BadVideo, match=r"is empty \(0 bytes\)"):
        probe_video(b"")
    with pytest.raises(BadVideo, match="only MP4, MOV, MKV and WebM"):
        probe_video(_gif())
    with pytest.raises(ValueError, match="max_duration_s"):
        probe_video(make_video(), max_duration_s=0)


def _gif() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="gif") as out:
        stream = out.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb8"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_frames_at_the_source_rate_are_the_decoded_frames_then_the_last_repeats():
    data = make_video()
    decoded = _decoded(data)
    frames = decode_frames(data, start_s=0.0, end_s=VIDEO_WINDOW_S, fps=25, size=224)
    assert frames.shape == (250, 3, 224, 224) and frames.dtype == torch.uint8
    for i in (0, 1, 37, 74):
        assert torch.equal(frames[i], _resized(decoded[i][1], 224))
    assert all(torch.equal(frames[i], frames[74]) for i in range(75, 250))  # past the end: the last frame


def test_frames_of_a_later_span_and_a_lower_rate_follow_the_timestamps():
    data = make_video()
    decoded = _decoded(data)
    clip = VideoClip.open(data)
    frames = clip.frames(1.0, 2.0, fps=5, size=32)  # instants 1.0, 1.2, ... 1.8 s -> frames 25, 30, ... 45
    assert frames.shape == (5, 3, 32, 32)
    for i, index in enumerate(range(25, 50, 5)):
        assert torch.equal(frames[i], _resized(decoded[index][1], 32))


def test_variable_frame_rate_is_sampled_on_timestamps():
    data = make_video(vfr=True)
    decoded = _decoded(data)
    frames = decode_frames(data, start_s=0.0, end_s=2.0, fps=25, size=48)
    for i in range(50):
        t = i / 25
        shown = max((k for k, (at, _) in enumerate(decoded) if at <= t + 1e-4), default=0)
        assert torch.equal(frames[i], _resized(decoded[shown][1], 48)), i
    # the frames are not evenly spaced: sampling by index would differ
    assert not all(torch.equal(frames[i], _resized(decoded[i][1], 48)) for i in range(50))


def test_rotation_metadata_is_applied():
    upright = decode_frames(make_video(), start_s=0.0, end_s=0.04, fps=25, size=64)[0]
    turned = decode_frames(make_video(rotation=90), start_s=0.0, end_s=0.04, fps=25, size=64)[0]
    red = torch.tensor([255, 0, 0], dtype=torch.float32)

    def is_red(img: torch.Tensor, y: slice, x: slice) -> bool:
        return bool(((img[:, y, x].float().mean(dim=(1, 2)) - red).abs() < 40).all())

    assert is_red(upright, slice(0, 4), slice(0, 4))  # the marker is the stored picture's top left
    assert not is_red(turned, slice(0, 4), slice(0, 4))
    assert is_red(turned, slice(60, 64), slice(0, 4))  # a quarter turn counter-clockwise: bottom left


def test_odd_sizes_are_squash_resized():
    data = make_video(width=225, height=127, pix_fmt="yuv444p")
    frames = decode_frames(data, start_s=0.0, end_s=0.4, fps=25, size=224)
    assert frames.shape == (10, 3, 224, 224)
    assert torch.equal(frames[3], _resized(_decoded(data)[3][1], 224))


def test_frames_refuse_bad_spans():
    clip = VideoClip.open(make_video())
    with pytest.raises(ValueError, match="span"):
        clip.frames(2.0, 1.0, fps=25, size=224)
    with pytest.raises(ValueError, match="fps"):
        clip.frames(0.0, 1.0, fps=0, size=224)


def test_video_names():
    assert is_video_name("s3://b/k/clip.MP4") and is_video_name("a.webm") and is_video_name("x.mkv")
    assert not is_video_name("frames.npy") and not is_video_name("clip.mp4.wav")


# --------------------------------------------------------------------------- the soundtrack mux


def _streams(data: bytes) -> dict[str, tuple[str, float]]:
    with av.open(io.BytesIO(data)) as container:
        return {s.type: (s.codec_context.name, float(s.duration * s.time_base)) for s in container.streams}


@pytest.mark.parametrize("kwargs", [{}, {"fmt": "matroska"}, {"fmt": "webm", "codec": "libvpx-vp9"}, {"vfr": True}])
def test_mux_copies_the_video_packets_and_fits_the_audio(kwargs):
    video = make_video(audio=kwargs.get("fmt") != "webm", **kwargs)  # (WebM takes no AAC)
    info = probe_video(video)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 5 * RATE_HZ)).astype(np.float32)
    out = mux_soundtrack(video, audio, RATE_HZ)
    streams = _streams(out)
    assert sorted(streams) == ["audio", "video"]  # the input's own audio track is replaced
    assert streams["audio"][0] == "aac" and streams["video"][0] == info.codec
    assert abs(streams["audio"][1] - info.duration_s) < 0.1 and abs(streams["video"][1] - info.duration_s) < 0.1
    assert video_packets(out) == video_packets(video)  # not re-encoded
    with av.open(io.BytesIO(out)) as container:
        assert container.format.name.startswith("mov,mp4")
    assert mux_soundtrack(video, audio, RATE_HZ) == out  # a pure function of its inputs


def test_mux_pads_short_audio_with_silence():
    video = make_video()
    out = mux_soundtrack(video, np.full((1, RATE_HZ), 0.5, np.float32), RATE_HZ)  # 1 s of audio, 3 s of video
    assert abs(_streams(out)["audio"][1] - 3.0) < 0.1
    with av.open(io.BytesIO(out)) as container:
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert np.abs(samples[:, 2 * RATE_HZ :]).max() < 1e-3 and np.abs(samples[:, : RATE_HZ // 2]).max() > 0.1


def test_mux_refusals():
    with pytest.raises(BadVideo, match="cannot carry unchanged"):
        check_muxable("vp8", "input video")
    with pytest.raises(ValueError, match="sample_rate"):
        mux_soundtrack(make_video(), np.zeros((1, 10), np.float32), 44_000)
    with pytest.raises(ValueError, match="audio must be"):
        mux_soundtrack(make_video(), np.zeros((3, 10), np.float32), RATE_HZ)
    with pytest.raises(BadVideo, match="has no video stream"):
        mux_soundtrack(bad_video("no_video_stream"), np.zeros((1, 10), np.float32), RATE_HZ)


# --------------------------------------------------------------------------- the plan


def _numbered_frames(seconds: float, fps: int) -> torch.Tensor:
    """uint8 frames whose pixels hold their own index (mod 256)."""
    n = round(seconds * fps)
    return (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()


def test_long_video_to_music_reads_each_segments_own_span():
    config = get_preset("tiny")
    fps = config.video_fps
    frames = _numbered_frames(40.0, fps)
    plan = plan_task(config, TaskInputs(Task.VIDEO_TO_MUSIC, prompt="drums", video_frames=frames, duration_s=30.0))
    gen = plan.generation
    assert gen is not None and gen.num_segments > 1 and gen.video_per_segment
    per_window = round(VIDEO_WINDOW_S * fps)
    assert plan.encode is not None and torch.equal(plan.encode.video, frames[:per_window])
    for k in range(gen.num_segments):
        start, end = gen.video_span(k)
        assert start == pytest.approx(k * gen.hop_samples / config.sample_rate) and end == start + VIDEO_WINDOW_S
        video = plan.segment_prompt(k).video
        first = round(start * fps)
        assert video.shape[0] == per_window and int(video[0, 0, 0, 0]) == first % 256
        assert torch.equal(video, frames[first : first + per_window])
        assert plan.segment_prompt(k).text == plan.encode.text
    # each segment's request carries the sync features it is given (those of its own span)
    own = torch.full((config.sync.seq_in, config.cond_dim), 0.5)
    request = gen.request(1, torch.zeros(3, config.mllm.hidden_size), torch.zeros(2, 100), sync_features=own)
    assert request.sync_features is own


def test_short_video_window_pads_with_the_last_frame_and_one_segment_reads_once():
    config = get_preset("tiny")
    frames = _numbered_frames(3.0, config.video_fps)
    plan = plan_task(config, TaskInputs(Task.VIDEO_TO_AUDIO, video_frames=frames, duration_s=3.0))
    assert plan.generation is not None and not plan.generation.video_per_segment
    video = plan.encode.video
    assert video.shape[0] == round(VIDEO_WINDOW_S * config.video_fps)
    assert torch.equal(video[: frames.shape[0]], frames) and bool((video[frames.shape[0] :] == frames[-1]).all())
    tail = window_frames(frames, 20.0, 30.0, config.video_fps)  # wholly past the end: the last frame
    assert bool((tail == frames[-1]).all())


def test_understanding_a_long_video_asks_one_question_per_window_of_it():
    from model.limits import THINKER_WINDOW_S

    config = get_preset("tiny")
    fps = config.video_fps
    frames = _numbered_frames(70.0, fps)
    plan = plan_task(config, TaskInputs(Task.UNDERSTAND, prompt="What happens?", video_frames=frames))
    windows = plan.understand_windows
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 70.0)]
    for w in windows:
        first = round(w.start_s * fps)
        assert w.request.audio is None and torch.equal(w.request.video, frames[first : round(w.end_s * fps)])
    assert plan.notes == [f"video of 70.0 s asked in 3 windows of at most {THINKER_WINDOW_S:g} s"]
    short = plan_task(config, TaskInputs(Task.UNDERSTAND, prompt="q", video_frames=frames[: round(20 * fps)]))
    assert len(short.understand_windows) == 1 and not short.notes
