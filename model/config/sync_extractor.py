"""The Synchformer visual extractor's section: the video sync-feature network (spec 4.5).

The released `Audio-Omni.json` has no field for it (the extractor comes with its own
`synchformer_state_dict.pth`), so the released layout is the default; a config may carry an
`extractor` object inside the `sync_feature` conditioner's config (our extension, written only
when it differs from the release). The sampling constants of the extractor's input live here too,
torch-free, so the job side can plan frame counts without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from model.config.checks import positive

SYNC_FPS = 25  # frames per second the extractor reads
SYNC_SIZE = 224  # frames reach the extractor squash-resized to SYNC_SIZE x SYNC_SIZE
SYNC_SEGMENT_FRAMES = 16  # frames per segment of the released extractor
SYNC_SEGMENT_STRIDE = 8  # frames between segment starts
SYNC_WINDOW_S = 10.0  # the span one generation's sync features cover (250 frames -> 240 tokens)


def sync_frame_count(duration_s: float) -> int:
    """Frames the extractor reads for a span of `duration_s` seconds (250 for 10 s)."""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    return round(SYNC_FPS * duration_s)


@dataclass(frozen=True)
class SyncExtractorConfig:
    """MotionFormer ViT with divided space-time attention, then a per-time-step spatial pooling.

    Defaults are the released layout (ViT-B/16: 768 wide, 12 blocks, 12 heads). A segment of
    `segment_frames` frames gives `segment_frames // patch_size_temp` tokens of width `embed_dim`.
    An `image_size` below `SYNC_SIZE` makes the extractor average the 224 x 224 frames down to it
    first (the test presets' way to keep a 768-wide extractor cheap on a CPU).
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    patch_size_temp: int = 2
    image_size: int = SYNC_SIZE
    segment_frames: int = SYNC_SEGMENT_FRAMES
    segment_stride: int = SYNC_SEGMENT_STRIDE
    layernorm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in (
            "embed_dim",
            "depth",
            "num_heads",
            "patch_size",
            "patch_size_temp",
            "image_size",
            "segment_frames",
            "segment_stride",
        ):
            positive(f"sync.extractor.{name}", getattr(self, name))
        for name in ("mlp_ratio", "layernorm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"sync.extractor.{name} must be a positive number, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"sync.extractor.embed_dim = {self.embed_dim} must be divisible by num_heads = {self.num_heads}"
            )
        hidden = self.mlp_ratio * self.embed_dim
        if hidden != int(hidden):
            raise ValueError(f"sync.extractor.mlp_ratio * embed_dim = {hidden} must be a whole number (the MLP width)")
        if self.image_size > SYNC_SIZE or self.image_size % self.patch_size:
            raise ValueError(
                f"sync.extractor.image_size = {self.image_size} must be at most {SYNC_SIZE} and a multiple of "
                f"patch_size = {self.patch_size}"
            )
        if self.segment_frames % self.patch_size_temp:
            raise ValueError(
                f"sync.extractor.segment_frames = {self.segment_frames} must be a multiple of "
                f"patch_size_temp = {self.patch_size_temp}"
            )

    # ----------------------------------------------------------------- derived

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.embed_dim)

    @property
    def grid(self) -> int:
        """Patches along each side of a frame."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_segment(self) -> int:
        """Output tokens of one segment (its temporal patches)."""
        return self.segment_frames // self.patch_size_temp

    def segment_count(self, n_frames: int) -> int:
        """Segments in `n_frames` frames; fewer frames than one segment raise `ValueError`."""
        if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < self.segment_frames:
            raise ValueError(
                f"the sync extractor needs at least {self.segment_frames} frames "
                f"({self.segment_frames / SYNC_FPS:g} s at {SYNC_FPS} fps), got {n_frames!r}"
            )
        return (n_frames - self.segment_frames) // self.segment_stride + 1

    def token_count(self, n_frames: int) -> int:
        """Feature tokens for `n_frames` frames (240 for the 250 frames of 10 s)."""
        return self.segment_count(n_frames) * self.tokens_per_segment

    # ----------------------------------------------------------------- schema

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))
