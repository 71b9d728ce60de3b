"""The Synchformer visual extractor: video frames -> sync features for the sync conditioner.

`SyncExtractor` (frames -> features), its weights (`model.sync.loading`: the released
`synchformer_state_dict.pth`, only its `vfeat_extractor.*` keys, loaded strictly) and the parity
check against reference vectors (`model.sync.verify`, `audio-omni verify-sync`). The frame sampling
constants are defined torch-free in `model.config.sync_extractor` and re-exported here.
"""

from __future__ import annotations

from model.config import AudioOmniConfig
from model.config.sync_extractor import (
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_SEGMENT_STRIDE,
    SYNC_SIZE,
    SYNC_WINDOW_S,
    SyncExtractorConfig,
    sync_frame_count,
)
from model.sync.extractor import SEGMENTS_PER_PASS, SyncExtractor, normalise_frames

__all__ = [
    "SEGMENTS_PER_PASS",
    "SYNC_FPS",
    "SYNC_SEGMENT_FRAMES",
    "SYNC_SEGMENT_STRIDE",
    "SYNC_SIZE",
    "SYNC_WINDOW_S",
    "SyncExtractor",
    "SyncExtractorConfig",
    "normalise_frames",
    "sync_frame_count",
    "sync_token_count",
]


def sync_token_count(n_frames: int, cfg: SyncExtractorConfig | AudioOmniConfig) -> int:
    """Feature tokens the extractor of `cfg` (a model config or its extractor section) gives for
    `n_frames` frames: ((n - 16) // 8 + 1) * (16 // patch_size_temp); 240 for 250 frames."""
    extractor = cfg.sync_extractor if isinstance(cfg, AudioOmniConfig) else cfg
    return extractor.token_count(n_frames)
