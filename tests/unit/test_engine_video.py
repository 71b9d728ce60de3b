"""Video jobs through the engine without Ray (tiny preset, `InProcessPools` behind a recorder): the
sync features come from the video of each segment's own span, a long video-to-music job prompts
each segment with its own frames, given sync features are used as they are, and the video rules
that only the engine can check refuse a job in one attempt."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.pipeline import VIDEO_WINDOW_S
from model.sync import SYNC_FPS, SYNC_SIZE
from orchestrator.engine import Engine, EngineSettings, JobResult
from orchestrator.errors import Outcome
from orchestrator.sources import ManifestSource
from orchestrator.storage import InputPolicy, InputResolver, LocalStorage
from orchestrator.video_io import VideoClip
from tests.video_files import make_video
from workers.app import InProcessPools
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)
CONFIG = SETTINGS.load_config()


class RecordingPools:
    """The in-process pools, recording what the engine asks of them."""

    def __init__(self, pools: InProcessPools) -> None:
        self.pools = pools
        self.sync_frames: list[torch.Tensor] = []
        self.prompt_videos: list[torch.Tensor | None] = []
        self.requests: list[Any] = []
        self.lock = threading.Lock()

    def encode(self, prompt):
        with self.lock:
            self.prompt_videos.append(None if prompt.video is None else torch.as_tensor(prompt.video).clone())
        return self.pools.encode(prompt)

    def understand(self, request):
        with self.lock:
            self.prompt_videos.append(None if request.video is None else torch.as_tensor(request.video).clone())
        return self.pools.understand(request)

    def sync_features(self, frames_u8):
        with self.lock:
            self.sync_frames.append(frames_u8.clone())
        return self.pools.sync_features(frames_u8)

    def generate(self, request, keep_samples=None):
        with self.lock:
            self.requests.append(request)
        return self.pools.generate(request, keep_samples=keep_samples)


@pytest.fixture(scope="module")
def base_pools() -> InProcessPools:
    return InProcessPools.build(SETTINGS)


@pytest.fixture()
def pools(base_pools) -> RecordingPools:
    return RecordingPools(base_pools)


def _run(tmp: Path, lines: list[dict], pools: RecordingPools) -> tuple[list[JobResult], Path]:
    manifest = tmp / "video.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    source = ManifestSource(manifest, max_attempts=2)
    out = tmp / "out"
    storage = LocalStorage(out)
    results: list[JobResult] = []
    engine = Engine(
        source,
        storage,
        InputResolver(storage, InputPolicy(embedded=True, input_root=tmp)),
        pools,
        CONFIG,
        EngineSettings(claim_block_s=0.05, max_in_flight=1),
        on_done=results.append,
    )
    engine.run(until_exhausted=True)
    return results, out


def test_long_video_to_music_syncs_and_prompts_each_segment_with_its_own_span(tmp_path, pools):
    clip = make_video(seconds=24.0, fps=25, width=48, height=32)
    (tmp_path / "long.mp4").write_bytes(clip)
    job = {"task": "video_to_music", "video_uri": "long.mp4", "prompt": "drums", "duration_s": 24.0, "steps": 1}
    results, out = _run(tmp_path, [job], pools)
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED], results

    hop_s = (CONFIG.output_samples - round(CONFIG.sample_rate)) / CONFIG.sample_rate  # 1 s overlap
    segments = len(pools.requests)
    assert segments >= 3 and len(pools.sync_frames) == segments and len(pools.prompt_videos) == segments
    video = VideoClip.open(clip)
    thinker = video.frames(0.0, 24.0, fps=CONFIG.video_fps, size=224)
    for k in range(segments):
        start = k * hop_s
        want_sync = video.frames(start, start + VIDEO_WINDOW_S, fps=SYNC_FPS, size=SYNC_SIZE)
        assert torch.equal(pools.sync_frames[k], want_sync), k
        # the thinker's frames of the video (5 fps from t = 0) that fall in the segment's span
        first, per_window = round(start * CONFIG.video_fps), round(VIDEO_WINDOW_S * CONFIG.video_fps)
        want_prompt = thinker[first : first + per_window]
        want_prompt = torch.cat([want_prompt, want_prompt[-1:].expand(per_window - len(want_prompt), 3, 224, 224)])
        assert torch.equal(pools.prompt_videos[k], want_prompt), k
        assert pools.requests[k].sync_features is not None
    assert not torch.equal(pools.sync_frames[0], pools.sync_frames[1])  # different spans, different frames
    assert not torch.equal(pools.requests[0].sync_features, pools.requests[1].sync_features)
    meta = json.loads(next(out.rglob("*.json")).read_text())
    assert meta["video"]["duration_s"] == 24.0 and meta["timings_s"]["sync"] > 0
    assert not any("no sync features" in note for note in meta["notes"])


def test_given_sync_features_are_used_and_mp4_needs_a_video_file(tmp_path, pools):
    (tmp_path / "clip.mp4").write_bytes(make_video())
    sync = (0.1 * np.random.default_rng(0).standard_normal((CONFIG.sync.seq_in, CONFIG.cond_dim))).astype(np.float32)
    np.save(tmp_path / "sync.npy", sync)
    np.save(tmp_path / "frames.npy", np.zeros((4, 3, 16, 16), np.uint8))
    lines = [
        {
            "task": "video_to_audio",
            "video_uri": "clip.mp4",
            "sync_feature_uri": "sync.npy",
            "duration_s": 2.0,
            "steps": 1,
        },
        {"task": "video_to_audio", "video_uri": "frames.npy", "output_format": "mp4", "steps": 1},
        {"task": "understand", "prompt": "What moves?", "video_uri": "clip.mp4"},
    ]
    results, _ = _run(tmp_path, lines, pools)
    outcomes = {r.job_id.rsplit("-", 1)[-1]: r for r in results}
    assert outcomes["0"].outcome is Outcome.SUCCEEDED and not pools.sync_frames  # the given features, not the video's
    assert torch.equal(pools.requests[0].sync_features, torch.from_numpy(sync))
    assert outcomes["1"].outcome is Outcome.FAILED and "needs video_uri to name a video file" in outcomes["1"].error
    assert outcomes["2"].outcome is Outcome.SUCCEEDED
    understood = pools.prompt_videos[-1]  # the whole 3 s clip at the thinker's rate
    assert understood.shape == (round(3.0 * CONFIG.video_fps), 3, 224, 224)
