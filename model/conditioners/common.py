"""Pieces shared by the Audio-Omni conditioners."""

from __future__ import annotations

import torch
from torch import nn

RMS_EPS = 1e-6


def rms_norm(x: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """`x * rsqrt(mean(x^2, last dim) + eps)`, without a learnable scale, in `x`'s own dtype.

    The released conditioners normalise this way; the omni projection relies on the computation
    staying in bfloat16 when its input is bfloat16, so nothing is upcast here.
    """
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Weight-free RMS norm over the last axis (eps 1e-6); it has no state-dict entries."""

    def __init__(self, eps: float = RMS_EPS) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
