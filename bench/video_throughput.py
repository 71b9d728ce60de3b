"""Video-to-sync-features throughput: seconds of video turned into sync features per second.

    .venv/bin/python bench/video_throughput.py [--preset tiny] [--device cpu] [--seconds 10]
        [--width 640 --height 360 --fps 30] [--repeats 3]

Makes an H.264 MP4 of moving shapes with PyAV, then times what a video job does before sampling,
window by window (`model.pipeline.VIDEO_WINDOW_S`): probing (`VideoClip.open`), decoding and
resizing the window's 25 fps Synchformer frames (`VideoClip.frames`), and the preset's extractor
(random weights; `SyncExtractor.clip_features` as the encoder pool calls it, `SEGMENTS_PER_PASS`
segments per pass). Reports the fastest of `--repeats` runs of each, as seconds of video per
wall-clock second (higher is better). Only the extractor is built, so `--preset full --device cuda`
times the full-size one. A figure, not a test. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from model.pipeline import VIDEO_WINDOW_S  # noqa: E402
from orchestrator.video_io import VideoClip  # noqa: E402


def make_clip(seconds: float, width: int, height: int, fps: int) -> bytes:
    """An H.264 MP4 of a bright disc crossing a drifting gradient (encodes like real footage:
    every frame differs)."""
    buf = io.BytesIO()
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            t = i / fps
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = (120 + 100 * np.sin(2 * np.pi * (x / width + 0.2 * t))).astype(np.uint8)
            img[..., 1] = (60 + 120 * y / height).astype(np.uint8)
            img[..., 2] = 80
            cx, cy = (0.1 + 0.8 * (t / seconds)) * width, height / 2 + height / 4 * math.sin(2 * math.pi * t)
            img[(x - cx) ** 2 + (y - cy) ** 2 <= (height / 8) ** 2] = (250, 240, 200)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _fastest(fn: Any, repeats: int) -> tuple[float, Any]:
    best, value = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def measure(
    preset: str = "tiny",
    device: str = "cpu",
    *,
    seconds: float = 10.0,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time probe, frame sampling and sync features over `seconds` of a made clip (whole windows)."""
    from model.build import build_sync_extractor
    from model.config import get_preset
    from model.sync import SEGMENTS_PER_PASS, SYNC_FPS, SYNC_SIZE, sync_frame_count

    torch.set_grad_enabled(False)
    data = make_clip(seconds, width, height, fps)
    extractor = build_sync_extractor(get_preset(preset), device=device)
    if extractor is None:
        raise SystemExit(f"preset {preset!r} builds no sync extractor")
    windows = max(1, math.floor(seconds / VIDEO_WINDOW_S))
    spans = [(k * VIDEO_WINDOW_S, (k + 1) * VIDEO_WINDOW_S) for k in range(windows)]
    count = sync_frame_count(VIDEO_WINDOW_S)

    probe_s, clip = _fastest(lambda: VideoClip.open(data), repeats)

    def frames() -> list[torch.Tensor]:
        return [clip.frames(a, b, fps=SYNC_FPS, size=SYNC_SIZE)[:count] for a, b in spans]

    decode_s, windows_frames = _fastest(frames, repeats)

    def features() -> list[torch.Tensor]:
        out = [
            extractor.clip_features([f.to(device)], max_segments_per_pass=SEGMENTS_PER_PASS)[0] for f in windows_frames
        ]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    features()  # warm-up (kernels, allocator)
    sync_s, feats = _fastest(features, repeats)
    video_s = windows * VIDEO_WINDOW_S
    total_s = probe_s + decode_s + sync_s
    return {
        "preset": preset,
        "device": device,
        "threads": torch.get_num_threads(),
        "source": {"width": width, "height": height, "fps": fps, "codec": "h264", "bytes": len(data)},
        "video_s": video_s,
        "windows": windows,
        "sync_frames_per_window": count,
        "features_shape": list(feats[0].shape),
        "probe_s": round(probe_s, 4),
        "decode_s": round(decode_s, 4),
        "sync_s": round(sync_s, 4),
        "decode_video_s_per_s": round(video_s / decode_s, 2),
        "sync_video_s_per_s": round(video_s / sync_s, 2),
        "total_video_s_per_s": round(video_s / total_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0, help="video length (whole 10 s windows are timed)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    result = measure(
        args.preset,
        args.device,
        seconds=args.seconds,
        width=args.width,
        height=args.height,
        fps=args.fps,
        repeats=args.repeats,
    )
    print(
        f"{result['video_s']:g} s of {args.width}x{args.height} {args.fps} fps video: probe {result['probe_s']:.3f} s, "
        f"decode+resize {result['decode_s']:.3f} s, sync features {result['sync_s']:.3f} s -> "
        f"{result['total_video_s_per_s']:.1f} s of video per second"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
