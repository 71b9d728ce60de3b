"""The DiT's building blocks: norms, timestep features, partial rotary embedding, attention, SwiGLU
feed-forward, the pre-norm block and the block stack (`model.dit.DiffusionTransformer.transformer`).

Module and attribute names follow the released checkpoint (`model.model.transformer.*`); see
`model.dit` for the whole network and AUDIO_OMNI_SPEC.md §2.3 for the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_DIM = 64
# Each head rotates max(HEAD_DIM // 2, 32) = 32 of its 64 channels; the rest pass through.
ROTARY_DIM = 32
ROPE_BASE = 10000.0
FOURIER_FEATURES = 128  # timestep Fourier frequencies; the MLP sees cos || sin = 256 values
FF_MULT = 4
NORM_EPS = 1e-5


class LayerNorm(nn.Module):
    """LayerNorm whose gain is a parameter (``gamma``) and whose bias is a saved buffer (``beta``).

    The released checkpoint stores ``beta`` as a persistent buffer (zeros), so it must be a buffer
    here too for strict loading; it is never trained.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, eps=NORM_EPS)


class FourierFeatures(nn.Module):
    """Learned Fourier frequencies ``weight`` (F, 1) for the scalar flow time."""

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_frequencies, 1))

    def forward(self, t: Tensor) -> Tensor:
        """``t`` (B,) -> ``[cos f, sin f]`` (B, 2F) in float32, ``f = 2*pi*t*w``."""
        # float32 whatever the module dtype: a bf16/fp16 angle of up to 2*pi*|w| loses the phase.
        angle = (2 * math.pi * t.float())[:, None] * self.weight[:, 0].float()[None, :]  # (B, F)
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)  # (B, 2F)


class RotaryEmbedding(nn.Module):
    """Rotary position angles; ``inv_freq`` (ROTARY_DIM / 2,) is a saved buffer of the checkpoint."""

    def __init__(self, rotary_dim: int = ROTARY_DIM, base: float = ROPE_BASE) -> None:
        super().__init__()
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim
        self.register_buffer("inv_freq", 1.0 / (base**exponents), persistent=True)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles for positions ``0 .. seq_len-1``, each (N, ROTARY_DIM) float32."""
        inv_freq = self.inv_freq.float()
        positions = torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32)
        angles = positions[:, None] * inv_freq[None, :]  # (N, R/2)
        angles = torch.cat([angles, angles], dim=-1)  # (N, R): the same angle for channel j and j + R/2
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of every head (NeoX rotate-half pairing j, j+R/2).

    ``x`` (B, H, N, D); ``cos``/``sin`` (N, R) float32. Done in float32 with autocast off, then cast
    back, so fp16/bf16 runs keep the angle precision.
    """
    rot_dim = cos.shape[-1]
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_rot = x[..., :rot_dim].float()  # (B, H, N, R)
        first, second = x_rot.chunk(2, dim=-1)
        x_rot = x_rot * cos + torch.cat([-second, first], dim=-1) * sin
    return torch.cat([x_rot.to(x.dtype), x[..., rot_dim:]], dim=-1)


def per_item_linear(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear`` on (B, D_in) as B one-row products, so a row's result never depends on its neighbours.

    BLAS picks different kernels (and summation orders) for 1, 2 or 4 rows; on the short timestep
    batch that made an item's velocity differ with batch size and CFG doubling. One row per batch
    entry of a batched matmul keeps it bit-identical to an unbatched call.
    """
    batch = x.shape[0]
    weight = linear.weight.t().expand(batch, -1, -1)  # (B, D_in, D_out), a view
    out = torch.bmm(x[:, None, :], weight)[:, 0]  # (B, D_out)
    return out if linear.bias is None else out + linear.bias.to(out.dtype)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    batch, seq, _ = x.shape
    return x.view(batch, seq, num_heads, -1).transpose(1, 2)  # (B, H, N, D)


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * head_dim)  # (B, N, H*D)


class SelfAttention(nn.Module):
    """Unmasked multi-head self-attention with rotary positions on q and k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)  # rows: q, then k, then v
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = (_split_heads(part, self.num_heads) for part in self.to_qkv(x).chunk(3, dim=-1))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
        return self.to_out(_merge_heads(out))


class CrossAttention(nn.Module):
    """Multi-head attention from the sequence to the projected context; masked keys are skipped.

    No projection has a bias, so an all-zero context gives K = V = 0 and an output of exactly 0.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)  # rows: k, then v
        self.to_out = nn.Linear(dim, dim, bias=False)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``context`` (B, S, E) -> keys and values, each (B, H, S, D)."""
        k, v = (_split_heads(part, self.num_heads) for part in self.to_kv(context).chunk(2, dim=-1))
        return k, v

    def attend(self, x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        """``x`` (B, N, E) attends to projected ``k``/``v`` (B, H, S, D); ``key_mask`` (B, 1, 1, S)."""
        q = _split_heads(self.to_q(x), self.num_heads)  # (B, H, N, D)
        # A context prepared outside autocast meets half-precision queries: match them (no-op otherwise).
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=key_mask)
        return self.to_out(_merge_heads(out))  # (B, N, E)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor) -> Tensor:
        """``x`` (B, N, E), ``context`` (B, S, E), ``key_mask`` (B, 1, 1, S) bool, True = attend."""
        return self.attend(x, *self.project_context(context), key_mask)


class SwiGLU(nn.Module):
    """``proj`` gives value || gate; output ``value * SiLU(gate)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.silu(gate)


class FeedForward(nn.Module):
    """SwiGLU feed-forward; index 1 of ``ff`` is an identity so the output layer is ``ff.2``."""

    def __init__(self, dim: int, mult: int = FF_MULT) -> None:
        super().__init__()
        self.ff = nn.Sequential(SwiGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention, feed-forward, each with a residual."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.pre_norm = LayerNorm(dim)
        self.self_attn = SelfAttention(dim, num_heads)
        self.cross_attend_norm = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.ff_norm = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(
        self, x: Tensor, context: Tensor | tuple[Tensor, Tensor], key_mask: Tensor, cos: Tensor, sin: Tensor
    ) -> Tensor:
        """``x`` (R, N, E); ``context`` the projected context (B, S, E) or this layer's prepared
        (keys, values), each (B, H, S, D); ``key_mask`` (B, 1, 1, S).

        B <= R: rows ``B:`` of ``x`` have an all-zero context, whose cross-attention output is
        exactly 0, so it is skipped for them.
        """
        x = x + self.self_attn(self.pre_norm(x), cos, sin)
        rows = key_mask.shape[0]
        if isinstance(context, Tensor):
            k, v = self.cross_attn.project_context(context)  # (B, H, S, D) each
        else:
            k, v = context
        if rows == x.shape[0]:
            x = x + self.cross_attn.attend(self.cross_attend_norm(x), k, v, key_mask)
        else:
            head = x[:rows]  # (B, N, E): the rows that have a context
            head = head + self.cross_attn.attend(self.cross_attend_norm(head), k, v, key_mask)
            x = torch.cat([head, x[rows:]])  # (R, N, E)
        return x + self.ff(self.ff_norm(x))


class DiTTransformer(nn.Module):
    """Token projections, rotary table and the stack of blocks (checkpoint prefix ``transformer.``)."""

    def __init__(self, *, io_channels: int, embed_dim: int, depth: int, num_heads: int, in_channels: int = 0) -> None:
        super().__init__()
        # in_channels: what project_in reads (the latent plus any input-concat channels); 0 = io_channels
        self.project_in = nn.Linear(in_channels or io_channels, embed_dim, bias=False)
        self.project_out = nn.Linear(embed_dim, io_channels, bias=False)
        self.rotary_pos_emb = RotaryEmbedding()
        self.layers = nn.ModuleList(DiTBlock(embed_dim, num_heads) for _ in range(depth))

    def forward(
        self,
        latent: Tensor,
        prefix: Tensor,
        context: Tensor | Sequence[tuple[Tensor, Tensor]],
        key_mask: Tensor,
    ) -> Tensor:
        """``latent`` (R, T, C_in), ``prefix`` (R, G, E) -> (R, T, C).

        ``context`` is the projected context (B, S, E) or one prepared (keys, values) pair per layer;
        rows ``B:`` of an R-row batch (B <= R) have an all-zero context (see :class:`DiTBlock`).
        """
        prefix_len = prefix.shape[1]
        h = torch.cat([prefix, self.project_in(latent)], dim=1)  # (R, G+T, E)
        # Positions run over the whole prefix + latent sequence.
        cos, sin = self.rotary_pos_emb(h.shape[1])
        per_layer = [context] * len(self.layers) if isinstance(context, Tensor) else context
        for layer, layer_context in zip(self.layers, per_layer, strict=True):
            h = layer(h, layer_context, key_mask, cos, sin)
        # No final norm; only the latent positions are projected (the prefix outputs are discarded).
        return self.project_out(h[:, prefix_len:])  # (B, T, C)
