"""Audio longer than one model window: split into overlapping segments, condition each segment on the
end of the previous one, and join them with a linear crossfade.

The reference (spec §7.7) uses 11 s segments with 1 s overlap (hop 10 s) and a 1 s crossfade, but it
conditions segment k on the *first* 10 s of segment k-1 (spec §8.18). We condition on the *last*
window of the previous segment: that is the audio the new segment continues from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentPlan:
    num_segments: int
    hop_samples: int
    fade_samples: int
    total_samples: int


def plan_segments(total_samples: int, segment_samples: int, overlap_samples: int) -> SegmentPlan:
    """How many segments of `segment_samples` (overlapping by `overlap_samples`) cover `total_samples`."""
    if total_samples <= 0:
        raise ValueError(f"total_samples must be > 0, got {total_samples}")
    if not 0 <= overlap_samples < segment_samples:
        raise ValueError(f"overlap_samples must be in [0, segment_samples={segment_samples}), got {overlap_samples}")
    hop = segment_samples - overlap_samples
    n = 1 if total_samples <= segment_samples else 1 + math.ceil((total_samples - segment_samples) / hop)
    return SegmentPlan(n, hop, overlap_samples, total_samples)


def continuation_window(previous: torch.Tensor, window_samples: int) -> torch.Tensor:
    """Mono conditioning audio for the next segment: the last `window_samples` of the previous one.

    previous: (C, N) float waveform. Returns (window_samples,), left-padded with zeros if N is shorter.
    """
    mono = previous.float().mean(dim=0)  # (N,)
    tail = mono[-window_samples:]
    if tail.shape[0] < window_samples:
        tail = torch.nn.functional.pad(tail, (window_samples - tail.shape[0], 0))
    return tail


def crossfade_join(segments: list[torch.Tensor], fade_samples: int, total_samples: int) -> torch.Tensor:
    """Join (C, N_i) segments left to right with a linear crossfade of `fade_samples`; crop to total."""
    if not segments:
        raise ValueError("crossfade_join needs at least one segment")
    out = segments[0]
    for seg in segments[1:]:
        f = min(fade_samples, out.shape[-1], seg.shape[-1])
        if f == 0:
            out = torch.cat([out, seg], dim=-1)
            continue
        ramp = torch.linspace(0.0, 1.0, f, dtype=out.dtype, device=out.device)  # (F,)
        mixed = out[..., -f:] * (1.0 - ramp) + seg[..., :f] * ramp
        out = torch.cat([out[..., :-f], mixed, seg[..., f:]], dim=-1)
    return out[..., :total_samples]
