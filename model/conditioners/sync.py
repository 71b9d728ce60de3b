"""Sync conditioner: Synchformer video features (B, 240, 768) -> `seq_out` prefix tokens.

Checkpoint id `sync_feature`. LayerNorm and a linear map over channels, then a linear map over
time (240 -> seq_out). Without a video the input is all zeros (there is no learned null), so the
"no video" tokens are a fixed function of the weights.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SyncConditioner"]


class SyncConditioner(nn.Module):
    """(B, seq_in, dim) Synchformer features -> tokens (B, seq_out, dim) and an all-ones mask."""

    def __init__(self, *, seq_in: int = 240, seq_out: int, dim: int = 768) -> None:
        super().__init__()
        for name, value in (("seq_in", seq_in), ("seq_out", seq_out), ("dim", dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.seq_in = seq_in
        self.seq_out = seq_out
        self.dim = dim
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.proj = nn.Linear(dim, dim)
        self.dim_project = nn.Linear(seq_in, seq_out)  # acts on the time axis

    def null_features(self, batch: int) -> torch.Tensor:
        """The (batch, seq_in, dim) all-zero input that stands for "no video"."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        weight = self.proj.weight
        return torch.zeros(batch, self.seq_in, self.dim, dtype=weight.dtype, device=weight.device)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, seq_out, dim) and an all-ones float mask (B, seq_out)."""
        if features.dim() != 3 or tuple(features.shape[1:]) != (self.seq_in, self.dim):
            raise ValueError(
                f"sync features must have shape (B, {self.seq_in}, {self.dim}), got {tuple(features.shape)}"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("sync features contain NaN or Inf")
        x = self.proj(self.norm(features.to(self.proj.weight.dtype)))  # (B, T_in, D)
        x = self.dim_project(x.transpose(1, 2)).transpose(1, 2)  # (B, T_out, D)
        return x, torch.ones(features.shape[0], self.seq_out, device=features.device)
