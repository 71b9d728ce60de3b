"""The Synchformer visual network: a MotionFormer ViT with divided space-time attention.

One segment (N, 3, F_in, S, S) of normalised frames becomes F = F_in / patch_size_temp tokens
of width D (spec 4.5):

1. tubelets of (patch_size_temp, patch, patch) pixels -> F * P tokens (P = patches per frame),
   ordered frame by frame; a class token in front; a learned position per spatial patch plus a
   learned position per temporal patch (and the class token's own);
2. `depth` blocks, each: attention over time (every patch with the same patch in the other frames),
   then attention over space (every patch with the other patches of its frame), then an MLP, each
   pre-normalised and residual. In both attentions a patch also attends to the class token, and the
   class token attends to every token;
3. the class token is dropped, the rest normalised; per frame, a one-layer pre-norm transformer
   encoder with its own class token pools the P patches into one token.

Parameter names follow the released `synchformer_state_dict.pth` (below its `vfeat_extractor.`),
so the released weights load strictly. `patch_embed` (a 2-D patch embedding) is part of that
layout but not of this forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config.sync_extractor import SyncExtractorConfig

__all__ = ["MotionFormer"]


class _PatchEmbed(nn.Module):
    """A strided convolution: non-overlapping patches (2-D) or tubelets (3-D) -> D channels."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        self.proj = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, [T,] H, W) -> (N, tokens, D), tokens in (t, h, w) order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _FactorisedAttention(nn.Module):
    """Multi-head attention restricted to groups of patch tokens (one frame, or one patch over time).

    The sequence is a class token followed by `frames * patches` tokens in frame-major order. Each
    patch attends to its group plus the class token; the class token attends to the whole sequence.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, frames: int, patches: int, over_time: bool) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.num_heads
        hd = dim // h
        qkv = self.qkv(x).reshape(n, length, 3, h, hd).permute(2, 0, 3, 1, 4)  # (3, N, H, L, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (N, H, 1, hd)

        def grouped(t: torch.Tensor) -> torch.Tensor:
            """(N, H, F*P, hd) -> (N * groups, H, group_len, hd)."""
            t = t.reshape(n, h, frames, patches, hd)
            if over_time:  # a group: one spatial patch across the frames
                return t.permute(0, 3, 1, 2, 4).reshape(n * patches, h, frames, hd)
            return t.permute(0, 2, 1, 3, 4).reshape(n * frames, h, patches, hd)  # a group: one frame

        groups = patches if over_time else frames

        def with_cls(t: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
            """Prepend the class token's key or value to every group."""
            cls = cls[:, None].expand(n, groups, h, 1, hd).reshape(n * groups, h, 1, hd)
            return torch.cat([cls, grouped(t)], dim=2)

        out = F.scaled_dot_product_attention(
            grouped(q[:, :, 1:]), with_cls(k[:, :, 1:], k[:, :, :1]), with_cls(v[:, :, 1:], v[:, :, :1])
        )
        if over_time:  # (N*P, H, F, hd) -> (N, H, F, P, hd)
            out = out.reshape(n, patches, h, frames, hd).permute(0, 2, 3, 1, 4)
        else:  # (N*F, H, P, hd) -> (N, H, F, P, hd)
            out = out.reshape(n, frames, h, patches, hd).permute(0, 2, 1, 3, 4)
        out = torch.cat([cls_out, out.reshape(n, h, frames * patches, hd)], dim=2)  # (N, H, L, hd)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class _SpaceTimeBlock(nn.Module):
    """Time attention (norm3), then space attention (norm1), then the MLP (norm2); all residual."""

    def __init__(self, cfg: SyncExtractorConfig) -> None:
        super().__init__()
        d, eps = cfg.embed_dim, cfg.layernorm_eps
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = _FactorisedAttention(d, cfg.num_heads)
        self.timeattn = _FactorisedAttention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = _Mlp(d, cfg.mlp_hidden)
        self.norm3 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, *, frames: int, patches: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames=frames, patches=patches, over_time=True)
        x = x + self.attn(self.norm1(x), frames=frames, patches=patches, over_time=False)
        return x + self.mlp(self.norm2(x))


class _SpatialPooling(nn.Module):
    """One pre-norm transformer encoder layer over [class token, P patches]; returns the class token."""

    def __init__(self, cfg: SyncExtractorConfig) -> None:
        super().__init__()
        d, eps = cfg.embed_dim, cfg.layernorm_eps
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, batch_first=True)
        self.linear1 = nn.Linear(d, cfg.mlp_hidden)
        self.linear2 = nn.Linear(cfg.mlp_hidden, d)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(G, P, D) -> (G, D)."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, need_weights=False)[0]
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0]


class MotionFormer(nn.Module):
    """(N, 3, segment_frames, S, S) normalised frames -> (N, segment_frames // patch_size_temp, D)."""

    def __init__(self, cfg: SyncExtractorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, pt = cfg.embed_dim, cfg.patch_size, cfg.patch_size_temp
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, d))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.tokens_per_segment, d))
        self.patch_embed = _PatchEmbed(nn.Conv2d(3, d, kernel_size=p, stride=p))
        self.patch_embed_3d = _PatchEmbed(nn.Conv3d(3, d, kernel_size=(pt, p, p), stride=(pt, p, p)))
        self.blocks = nn.ModuleList(_SpaceTimeBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layernorm_eps)
        self.spatial_attn_agg = _SpatialPooling(cfg)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ViT-style random weights (truncated normal, std 0.02); the released file replaces them."""
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # LayerNorm weights
                param.fill_(1.0)
            else:
                nn.init.trunc_normal_(param, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, F_in, S, S) -> (N, F * P, D) tubelet tokens (no positions yet)."""
        cfg = self.cfg
        want = (3, cfg.segment_frames, cfg.image_size, cfg.image_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"a segment batch must be (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        return self.patch_embed_3d(x)

    def positions(self) -> torch.Tensor:
        """(1, 1 + F * P, D): the class token's position, then spatial + temporal per token."""
        patches = self.pos_embed.shape[1] - 1
        frames = self.temp_embed.shape[1]
        spatial = self.pos_embed[:, 1:].repeat(1, frames, 1)  # patch i of every frame
        temporal = self.temp_embed.repeat_interleave(patches, dim=1)  # frame t for all its patches
        return torch.cat([self.pos_embed[:, :1], spatial + temporal], dim=1)

    def encode(self, tokens: torch.Tensor, *, keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Tubelet tokens (N, F * P, D) -> block outputs (N, 1 + F * P, D), class token first.
        With `keep`, each block's output is appended to it (parity checks)."""
        frames, patches = self.temp_embed.shape[1], self.pos_embed.shape[1] - 1
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.positions()
        for block in self.blocks:
            x = block(x, frames=frames, patches=patches)
            if keep is not None:
                keep.append(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Block outputs (N, 1 + F * P, D) -> one token per frame (N, F, D)."""
        n, _, d = x.shape
        frames = self.temp_embed.shape[1]
        x = self.norm(x[:, 1:]).reshape(n * frames, -1, d)  # (N*F, P, D)
        return self.spatial_attn_agg(x).reshape(n, frames, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(self.embed(x)))
