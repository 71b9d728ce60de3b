"""Frames -> Synchformer sync features: normalisation, segmenting and the MotionFormer (spec 4.5).

uint8 frames (T, 3, 224, 224) at 25 fps -> x / 255 -> (x - 0.5) / 0.5 -> windows of 16 frames every
8 frames -> each window through the MotionFormer -> 8 tokens per window -> windows concatenated in
time: 250 frames (10 s) give 30 windows, (240, 768) at full size.

`SyncExtractor` holds the network under the child name `vfeat_extractor`, so its state dict has the
released file's key names exactly. The segments of every clip of a call go through the network
together, in passes of a bounded number of segments (`clip_features`): that is how the encoder pool
batches video windows of different jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.config.sync_extractor import SYNC_SIZE, SyncExtractorConfig
from model.sync.motionformer import MotionFormer

__all__ = ["SEGMENTS_PER_PASS", "SyncExtractor", "normalise_frames"]

# The most segments the worker pools send through the network in one pass (about 1.2 GB of
# activations at full size); a batch of clips from several jobs takes as many passes as it needs.
SEGMENTS_PER_PASS = 64


def normalise_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] (or float in that range) -> float32 [-1, 1]: x / 255, then (x - 0.5) / 0.5."""
    return frames.float().div(255.0).sub_(0.5).div_(0.5)


class SyncExtractor(nn.Module):
    """(B, T, 3, 224, 224) uint8 frames at 25 fps -> (B, segments * tokens_per_segment, D) float32."""

    def __init__(self, cfg: SyncExtractorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vfeat_extractor = MotionFormer(cfg)

    @property
    def device(self) -> torch.device:
        return self.vfeat_extractor.cls_token.device

    def check_frames(self, frames_u8: torch.Tensor, *, where: str = "frames") -> None:
        """A clip (T, 3, 224, 224) uint8 with at least one segment's worth of frames."""
        if frames_u8.dtype != torch.uint8:
            raise ValueError(f"{where} must be uint8 (0-255), got {frames_u8.dtype}")
        if frames_u8.dim() != 4 or tuple(frames_u8.shape[1:]) != (3, SYNC_SIZE, SYNC_SIZE):
            raise ValueError(
                f"{where} must be (T, 3, {SYNC_SIZE}, {SYNC_SIZE}) RGB frames, got {tuple(frames_u8.shape)}"
            )
        self.cfg.segment_count(int(frames_u8.shape[0]))  # raises for fewer frames than one segment

    def segments(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) -> (S, segment_frames, 3, H, W) overlapping windows (a view, no copy)."""
        cfg = self.cfg
        n = cfg.segment_count(int(frames.shape[0]))
        windows = frames.unfold(0, cfg.segment_frames, cfg.segment_stride)  # (S', 3, H, W, 16)
        return windows[:n].permute(0, 4, 1, 2, 3)

    def prepare(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """(T, 3, 224, 224) uint8 -> (T, 3, S, S) normalised float32 on the module's device.

        Frames are converted once, before segmenting (each frame is in two segments). An
        `image_size` below 224 (the test presets) averages them down to it.
        """
        x = frames_u8.to(self.device)
        size = self.cfg.image_size
        if size != SYNC_SIZE:  # average first: the normalisation is affine, and 50x less work after it
            x = F.interpolate(x.float(), size=(size, size), mode="area")
        return normalise_frames(x)

    def network_input(self, segments: torch.Tensor) -> torch.Tensor:
        """(N, segment_frames, 3, S, S) prepared segments -> the network's (N, 3, segment_frames, S, S)."""
        return segments.permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def clip_features(
        self, clips: Sequence[torch.Tensor], *, max_segments_per_pass: int | None = None
    ) -> list[torch.Tensor]:
        """Features (tokens_i, D) float32 of each clip (T_i, 3, 224, 224) uint8; clips may differ in length.

        The segments of all clips go through the network together, at most `max_segments_per_pass`
        at a time (None: all in one pass), which bounds the activation memory. A clip's features
        agree to float rounding (~5e-7) whichever clips share its passes.
        """
        if not clips:
            return []
        if max_segments_per_pass is not None and max_segments_per_pass < 1:
            raise ValueError(f"max_segments_per_pass must be >= 1, got {max_segments_per_pass}")
        for i, clip in enumerate(clips):
            self.check_frames(clip, where=f"clip {i}")
        windows = [self.segments(self.prepare(clip)) for clip in clips]  # views into each prepared clip
        counts = [w.shape[0] for w in windows]
        flat = [seg for w in windows for seg in w]
        step = max_segments_per_pass or len(flat)
        outputs = [
            self.vfeat_extractor(self.network_input(torch.stack(flat[start : start + step])))
            for start in range(0, len(flat), step)
        ]
        tokens = torch.cat(outputs)  # (total segments, tokens_per_segment, D)
        return [t.reshape(-1, t.shape[-1]) for t in torch.split(tokens, counts)]

    def forward(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """frames_u8: (B, T, 3, 224, 224) uint8 -> (B, n_segments * tokens_per_segment, D) float32."""
        if frames_u8.dim() != 5:
            raise ValueError(f"frames must be (B, T, 3, {SYNC_SIZE}, {SYNC_SIZE}) uint8, got {tuple(frames_u8.shape)}")
        return torch.stack(self.clip_features(list(frames_u8)))
