"""The sampler-side half of the omni conditioner (`omni_prompt`): thinker rows -> DiT context tokens.

The thinker itself runs on the encoder pool (`model.mllm.MLLMEncoder`), which hands over per-item
bfloat16 hidden rows; `OmniProjection` pads them, applies the weightless bf16 RMS norm and the
`proj_features` Linear (released name `conditioner.conditioners.omni_prompt.proj_features.*`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.conditioners.common import rms_norm

__all__ = ["OmniProjection"]


class OmniProjection(nn.Module):
    """Hidden rows of the thinker -> DiT cross-attention tokens (`omni_prompt.proj_features`).

    forward(features) takes per-item (L_i, D) rows, keeps the first `pad_length` (longer inputs are
    truncated: interpolation already happened on the encoder side), right-pads with zeros, applies
    the weightless RMS norm in bfloat16, casts to the Linear's dtype and projects to `out_dim`.
    Returns tokens (B, pad_length, out_dim) and a bool mask (B, pad_length), True on real rows;
    padded rows equal the Linear's bias and are masked in cross-attention.
    """

    def __init__(self, *, in_features: int, out_dim: int = 768, pad_length: int) -> None:
        super().__init__()
        if in_features < 1 or out_dim < 1:
            raise ValueError(f"in_features and out_dim must be >= 1, got {in_features} and {out_dim}")
        if pad_length < 1:
            raise ValueError(f"pad_length must be >= 1, got {pad_length}")
        self.in_features = in_features
        self.pad_length = pad_length
        self.proj_features = nn.Linear(in_features, out_dim)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        normed, mask = self.pad_and_norm(features)  # (B, P, D) bf16, (B, P)
        return self.proj_features(normed.to(self.proj_features.weight.dtype)), mask  # (B, P, out_dim)

    def pad_and_norm(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The bf16 padded, RMS-normed rows (B, pad_length, D) and the bool mask (B, pad_length)."""
        if len(features) == 0:
            raise ValueError("features must hold at least one item")
        weight = self.proj_features.weight
        padded = torch.zeros(
            len(features), self.pad_length, self.in_features, dtype=torch.bfloat16, device=weight.device
        )  # (B, P, D)
        mask = torch.zeros(len(features), self.pad_length, dtype=torch.bool, device=weight.device)
        for i, rows in enumerate(features):
            if rows.ndim != 2 or rows.shape[1] != self.in_features:
                raise ValueError(f"features[{i}] must be (L, {self.in_features}), got shape {tuple(rows.shape)}")
            if rows.shape[0] == 0:
                raise ValueError(f"features[{i}] has no rows; every prompt has at least one token")
            length = min(rows.shape[0], self.pad_length)
            padded[i, :length] = rows[:length].to(device=weight.device, dtype=torch.bfloat16)
            mask[i, :length] = True
        return rms_norm(padded), mask  # norm done in bf16 (spec §8 item 23)
