"""The Audio-Omni DiT: a rectified-flow velocity network over VAE latents.

Written from the facts-only spec (AUDIO_OMNI_SPEC.md §2.3, §3) and checked against the parity vectors.
Module and attribute names are chosen so that ``state_dict()`` keys equal the released checkpoint's
``model.model.*`` keys with that prefix removed; the loader only strips the prefix.

Layout of one forward (B batch, C latent channels, T latent frames, S context tokens, G prefix tokens):

* context ``(B, S, 768)`` -> MLP -> ``(B, S, E)``: keys/values of every cross-attention;
* global ``(B, G, 768)`` -> MLP, plus the timestep embedding -> ``G`` prefix tokens;
* latent ``(B, C, T)`` -> 1x1 conv residual -> ``project_in`` -> ``T`` tokens after the prefix;
* ``depth`` pre-norm blocks (self-attention with partial RoPE, masked cross-attention, SwiGLU);
* ``project_out`` on the latent positions -> 1x1 conv residual -> velocity ``(B, C, T)``.

Sampling fast path. The context is the same at every Euler step, so :meth:`DiffusionTransformer.
prepare_context` runs the context MLP and every layer's key/value projection once per sampling run
(a :class:`PreparedContext`); ``forward`` and ``guided_velocity`` take it as ``context=``. With it,
guidance also skips the cross-attention of the unconditional half: its context is all zeros and the
context MLP, ``to_kv`` and ``to_out`` have no biases, so those rows' cross-attention output is exactly
0 (spec §3.6). The plain tensor API still runs the naive path (one full 2B forward per step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model.dit_layers import (
    FF_MULT,
    FOURIER_FEATURES,
    HEAD_DIM,
    NORM_EPS,
    ROPE_BASE,
    ROTARY_DIM,
    CrossAttention,
    DiTBlock,
    DiTTransformer,
    FeedForward,
    FourierFeatures,
    LayerNorm,
    RotaryEmbedding,
    SelfAttention,
    SwiGLU,
    apply_rotary,
    per_item_linear,
)

__all__ = [
    "FF_MULT",
    "FOURIER_FEATURES",
    "HEAD_DIM",
    "NORM_EPS",
    "ROPE_BASE",
    "ROTARY_DIM",
    "CrossAttention",
    "DiTBlock",
    "DiTTransformer",
    "DiffusionTransformer",
    "FeedForward",
    "FourierFeatures",
    "LayerNorm",
    "PreparedContext",
    "RotaryEmbedding",
    "SelfAttention",
    "SwiGLU",
    "apply_rotary",
    "per_item_linear",
]


@dataclass(frozen=True)
class PreparedContext:
    """The cross-attention inputs of a sampling run, computed once by
    :meth:`DiffusionTransformer.prepare_context` and reused at every step.

    Attributes:
        kv: one (keys, values) pair per DiT layer, each (B, H, S, 64), in the dtype the context
            was prepared in.
        key_mask: (B, 1, 1, S) bool, True = attend; rows with no open key are already opened fully.
    """

    kv: tuple[tuple[Tensor, Tensor], ...]
    key_mask: Tensor

    @property
    def batch(self) -> int:
        """Number of items B the context was prepared for."""
        return self.key_mask.shape[0]

    @property
    def context_len(self) -> int:
        """Number of context tokens S."""
        return self.key_mask.shape[-1]


class DiffusionTransformer(nn.Module):
    """Audio-Omni velocity network ``v(x_t, t | context, global tokens)`` for rectified flow.

    Args:
        io_channels: latent channels C (64 for the released model).
        embed_dim: transformer width E; must be a multiple of 64 (head dim).
        depth: number of blocks.
        num_heads: attention heads; must equal ``embed_dim // 64``.
        cond_token_dim: width of the cross-attention context tokens (768).
        global_cond_dim: width of the prepended global tokens (768).
        input_concat_dim: channels of a per-frame input concatenated to the noisy latent before the
            input conv (0 in the released model; the `small` preset feeds an edit's source latent
            there). The input conv and projection then read ``io_channels + input_concat_dim``.
    """

    def __init__(
        self,
        *,
        io_channels: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        cond_token_dim: int,
        global_cond_dim: int,
        input_concat_dim: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("io_channels", io_channels),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("cond_token_dim", cond_token_dim),
            ("global_cond_dim", global_cond_dim),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(input_concat_dim, int) or isinstance(input_concat_dim, bool) or input_concat_dim < 0:
            raise ValueError(f"input_concat_dim must be a non-negative int, got {input_concat_dim!r}")
        if embed_dim % HEAD_DIM != 0 or num_heads != embed_dim // HEAD_DIM:
            raise ValueError(
                f"head dim is fixed at {HEAD_DIM}: need embed_dim a multiple of {HEAD_DIM} and "
                f"num_heads == embed_dim // {HEAD_DIM}, got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        self.io_channels = io_channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.cond_token_dim = cond_token_dim
        self.global_cond_dim = global_cond_dim
        self.input_concat_dim = input_concat_dim
        in_channels = io_channels + input_concat_dim

        self.timestep_features = FourierFeatures(FOURIER_FEATURES)
        self.to_timestep_embed = nn.Sequential(
            nn.Linear(2 * FOURIER_FEATURES, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.to_cond_embed = nn.Sequential(
            nn.Linear(cond_token_dim, embed_dim, bias=False),
            nn.SiLU(),
            nn.Linear(embed_dim, embed_dim, bias=False),
        )
        self.to_global_embed = nn.Sequential(
            nn.Linear(global_cond_dim, embed_dim, bias=False),
            nn.SiLU(),
            nn.Linear(embed_dim, embed_dim, bias=False),
        )
        self.transformer = DiTTransformer(
            io_channels=io_channels, embed_dim=embed_dim, depth=depth, num_heads=num_heads, in_channels=in_channels
        )
        self.preprocess_conv = nn.Conv1d(in_channels, in_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DiffusionTransformer:
        """Build from a ``model.diffusion.config`` dict of the reference's JSON config.

        Options this implementation does not support (another transformer type, patching,
        unprojected context, non-prepend global conditioning) raise ``ValueError``; keys with no
        effect in the reference (``condition_mask_type``, ``video_fps``) are ignored.
        """
        required = ("io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim")
        optional = ("input_concat_dim",)
        missing = [key for key in required if key not in config]
        if missing:
            raise ValueError(f"DiT config is missing {missing}; required keys: {list(required)}")
        supported = {
            "transformer_type": "continuous_transformer",
            "project_cond_tokens": True,
            "project_global_cond": True,
            "patch_size": 1,
            "prepend_cond_dim": 0,
            "global_cond_type": "prepend",
        }
        for key, allowed in supported.items():
            if key in config and config[key] != allowed:
                raise ValueError(f"DiT config {key}={config[key]!r} is not supported; only {allowed!r}")
        return cls(**{key: config[key] for key in required + optional if key in config})

    def init_weights(self) -> None:
        """Fresh training-time initialisation, as the reference starts training.

        PyTorch default init everywhere (Fourier frequencies ~ N(0, 1), LayerNorm gains 1), then every
        parameter is halved, then the attention output projections, the feed-forward output layer
        and the two 1x1 residual convs are zeroed, so each residual branch starts as the identity.
        """
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Conv1d):
                    module.reset_parameters()
                elif isinstance(module, LayerNorm):
                    module.gamma.fill_(1.0)
                    module.beta.zero_()
                elif isinstance(module, FourierFeatures):
                    module.weight.normal_()
            for param in self.parameters():
                param.mul_(0.5)
            zeroed: list[nn.Module] = [self.preprocess_conv, self.postprocess_conv]
            for layer in self.transformer.layers:
                zeroed += [layer.self_attn.to_out, layer.cross_attn.to_out, layer.ff.ff[2]]
            for module in zeroed:
                for param in module.parameters():
                    param.zero_()

    # ----------------------------------------------------------------------------- embeddings

    def embed_timestep(self, t: Tensor) -> Tensor:
        """Flow time ``t`` (B,) in [0, 1] -> timestep embedding (B, E)."""
        features = self.timestep_features(t)  # (B, 256) float32
        first, act, second = self.to_timestep_embed
        h = per_item_linear(first, features.to(first.weight.dtype))
        return per_item_linear(second, act(h))  # (B, E)

    def embed_cond(self, cross_cond: Tensor) -> Tensor:
        """Context tokens (B, S, cond_token_dim) -> (B, S, E)."""
        return self.to_cond_embed(cross_cond)

    def embed_global(self, global_cond: Tensor) -> Tensor:
        """Global tokens (B, G, global_cond_dim) -> (B, G, E), before the timestep is added."""
        return self.to_global_embed(global_cond)

    # ----------------------------------------------------------------------------- forward

    def check_inputs(self, x: Tensor, t: Tensor, cross_cond: Tensor, cross_mask: Tensor, global_cond: Tensor) -> None:
        """Raise ``ValueError`` naming the expected shape when an input does not fit."""
        self._check_latent(x, t)
        self._check_cross(x.shape[0], cross_cond, cross_mask)
        self._check_global(x.shape[0], global_cond)

    def _check_latent(self, x: Tensor, t: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.io_channels or x.shape[0] < 1 or x.shape[2] < 1:
            raise ValueError(f"x must have shape (B, {self.io_channels}, T) with B, T >= 1, got {tuple(x.shape)}")
        batch = x.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) (one time per item), got {tuple(t.shape)}")

    def _check_concat(self, x: Tensor, input_concat: Tensor | None) -> None:
        if self.input_concat_dim == 0:
            if input_concat is not None:
                raise ValueError("this DiT has input_concat_dim 0: pass input_concat=None")
            return
        want = (x.shape[0], self.input_concat_dim, x.shape[2])
        if input_concat is None or tuple(input_concat.shape) != want:
            got = None if input_concat is None else tuple(input_concat.shape)
            raise ValueError(f"input_concat must have shape {want} (B, input_concat_dim, T of x), got {got}")

    def _check_cross(self, batch: int, cross_cond: Tensor, cross_mask: Tensor) -> None:
        if (
            cross_cond.dim() != 3
            or cross_cond.shape[0] != batch
            or cross_cond.shape[2] != self.cond_token_dim
            or cross_cond.shape[1] < 1
        ):
            raise ValueError(
                f"cross_cond must have shape ({batch}, S, {self.cond_token_dim}) with S >= 1, "
                f"got {tuple(cross_cond.shape)}"
            )
        if cross_mask.shape != cross_cond.shape[:2]:
            raise ValueError(
                f"cross_mask must have shape {tuple(cross_cond.shape[:2])} (B, S of cross_cond), "
                f"got {tuple(cross_mask.shape)}"
            )

    def _check_global(self, batch: int, global_cond: Tensor) -> None:
        if global_cond.dim() != 3 or global_cond.shape[0] != batch or global_cond.shape[2] != self.global_cond_dim:
            raise ValueError(
                f"global_cond must have shape ({batch}, G, {self.global_cond_dim}), got {tuple(global_cond.shape)}"
            )

    def _check_prepared(
        self,
        batch: int,
        cross_cond: Tensor | None,
        cross_mask: Tensor | None,
        context: PreparedContext,
    ) -> None:
        if cross_cond is not None or cross_mask is not None:
            raise ValueError("pass either cross_cond and cross_mask or a prepared context, not both")
        if not isinstance(context, PreparedContext):
            raise ValueError(f"context must be a PreparedContext, got {type(context).__name__}")
        if len(context.kv) != self.depth:
            raise ValueError(f"context holds keys/values for {len(context.kv)} layers, this DiT has depth {self.depth}")
        if context.batch != batch:
            raise ValueError(f"context was prepared for {context.batch} items, x has {batch}")

    @staticmethod
    def _key_mask(cross_mask: Tensor) -> Tensor:
        """(B, S) mask -> (B, 1, 1, S) bool SDPA mask with fully masked rows opened."""
        key_mask = cross_mask if cross_mask.dtype == torch.bool else cross_mask != 0
        # A row with no key to attend would give NaN in SDPA; the reference then attends uniformly
        # over all keys, which is what opening such a row entirely does (no host sync needed).
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
        return key_mask[:, None, None, :]  # (B, 1, 1, S)

    def prepare_context(self, cross_cond: Tensor, cross_mask: Tensor) -> PreparedContext:
        """Run the context MLP and every layer's key/value projection once for a sampling run.

        Call it under the same precision (autocast or not) as the forwards that will use it; it
        keeps autograd if enabled, so wrap it in ``torch.no_grad()`` for sampling. The result holds
        ``depth * 2 * B * S * embed_dim`` values (about 0.68 GB per item in bf16 at full size).

        Args:
            cross_cond: cross-attention context (B, S, cond_token_dim).
            cross_mask: (B, S), True = attend (a non-bool mask counts as True where nonzero).
        """
        if cross_cond.dim() < 1:
            raise ValueError(f"cross_cond must have shape (B, S, {self.cond_token_dim}), got a scalar")
        self._check_cross(cross_cond.shape[0], cross_cond, cross_mask)
        dtype = self.preprocess_conv.weight.dtype
        context = self.embed_cond(cross_cond.to(dtype))  # (B, S, E)
        kv = tuple(layer.cross_attn.project_context(context) for layer in self.transformer.layers)
        return PreparedContext(kv=kv, key_mask=self._key_mask(cross_mask))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cross_cond: Tensor | None,
        cross_mask: Tensor | None,
        global_cond: Tensor,
        *,
        context: PreparedContext | None = None,
        input_concat: Tensor | None = None,
    ) -> Tensor:
        """One unguided velocity evaluation.

        Args:
            x: noisy latent (B, C, T).
            t: flow time (B,), 1 = pure noise, 0 = data.
            cross_cond: cross-attention context (B, S, cond_token_dim); None with ``context``.
            cross_mask: (B, S), True = attend (a non-bool mask counts as True where nonzero); None
                with ``context``.
            global_cond: tokens prepended to the sequence (B, G, global_cond_dim).
            context: the same context from :meth:`prepare_context` (B items), instead of
                ``cross_cond`` and ``cross_mask``.
            input_concat: (B, input_concat_dim, T) concatenated to ``x`` along channels; required
                exactly when ``input_concat_dim`` > 0.

        Returns:
            predicted velocity (B, C, T), in the parameter dtype (or the autocast dtype).
        """
        if context is None:
            if cross_cond is None or cross_mask is None:
                raise ValueError("forward needs cross_cond and cross_mask, or a prepared context")
            self.check_inputs(x, t, cross_cond, cross_mask, global_cond)
            self._check_concat(x, input_concat)
            dtype = self.preprocess_conv.weight.dtype
            key_mask = self._key_mask(cross_mask)  # (B, 1, 1, S)
            projected = self.embed_cond(cross_cond.to(dtype))  # (B, S, E)
            return self._velocity(x, t, global_cond, projected, key_mask, input_concat)
        self._check_latent(x, t)
        self._check_prepared(x.shape[0], cross_cond, cross_mask, context)
        self._check_global(x.shape[0], global_cond)
        self._check_concat(x, input_concat)
        return self._velocity(x, t, global_cond, context.kv, context.key_mask, input_concat)

    def _velocity(
        self,
        x: Tensor,
        t: Tensor,
        global_cond: Tensor,
        context: Tensor | Sequence[tuple[Tensor, Tensor]],
        key_mask: Tensor,
        input_concat: Tensor | None = None,
    ) -> Tensor:
        """Velocity of R rows (R, C, T); the first B = ``key_mask.shape[0]`` rows have ``context``,
        the rest an all-zero one (their cross-attention is skipped)."""
        dtype = self.preprocess_conv.weight.dtype
        prefix = self.embed_global(global_cond.to(dtype)) + self.embed_timestep(t)[:, None, :]  # (R, G, E)
        x = x.to(dtype)
        if input_concat is not None:
            x = torch.cat([x, input_concat.to(dtype)], dim=1)  # (R, C + D, T)
        x = x + self.preprocess_conv(x)  # (R, C_in, T)
        out = self.transformer(x.transpose(1, 2), prefix, context, key_mask)  # (R, T, C)
        out = out.transpose(1, 2)  # (R, C, T)
        return out + self.postprocess_conv(out)

    def guided_velocity(
        self,
        x: Tensor,
        t: Tensor,
        cross_cond: Tensor | None,
        cross_mask: Tensor | None,
        global_cond: Tensor,
        cfg_scale: float | Tensor,
        scale_phi: float = 0.0,
        *,
        context: PreparedContext | None = None,
        input_concat: Tensor | None = None,
    ) -> Tensor:
        """Classifier-free guided velocity, conditional and unconditional in one 2B forward.

        The unconditional half gets an all-zero context with the same mask; the global (prefix)
        tokens and ``input_concat`` are not nulled. ``v = v_u + (v_c - v_u) * cfg_scale``; with ``scale_phi`` > 0 the
        result is blended with a copy rescaled to the per-position channel std of ``v_c``.

        Args:
            cfg_scale: a float or a per-item (B,) tensor. Items whose scale is 1 get ``v_c`` exactly;
                when every scale is 1 only a B-item forward runs. Pass a float or a CPU tensor:
                deciding that needs the values on the host.
            scale_phi: guidance rescale weight in [0, 1]; 0 disables it.
            context: a :meth:`prepare_context` result for the B items, instead of ``cross_cond``
                and ``cross_mask`` (pass those as None). The fast path: no context MLP or key/value
                projection per call, and no cross-attention for the unconditional half, whose
                zero context makes it exactly 0. Equal to the plain call up to float rounding.
        """
        if not 0.0 <= scale_phi <= 1.0:
            raise ValueError(f"scale_phi must be in [0, 1], got {scale_phi!r}")
        batch = x.shape[0]
        if isinstance(cfg_scale, Tensor):
            if cfg_scale.shape != (batch,):
                raise ValueError(f"cfg_scale tensor must have shape ({batch},), got {tuple(cfg_scale.shape)}")
            all_unguided = bool((cfg_scale.detach().cpu() == 1).all())
        else:
            if not math.isfinite(cfg_scale):
                raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
            all_unguided = cfg_scale == 1
        if all_unguided:
            return self(x, t, cross_cond, cross_mask, global_cond, context=context, input_concat=input_concat)
        self._check_concat(x, input_concat)
        both_concat = None if input_concat is None else torch.cat([input_concat, input_concat])

        if context is None:
            if cross_cond is None or cross_mask is None:
                raise ValueError("guided_velocity needs cross_cond and cross_mask, or a prepared context")
            self.check_inputs(x, t, cross_cond, cross_mask, global_cond)
            both = self(
                torch.cat([x, x]),
                torch.cat([t, t]),
                torch.cat([cross_cond, torch.zeros_like(cross_cond)]),
                torch.cat([cross_mask, cross_mask]),
                torch.cat([global_cond, global_cond]),
                input_concat=both_concat,
            )  # (2B, C, T)
        else:
            self._check_latent(x, t)
            self._check_prepared(batch, cross_cond, cross_mask, context)
            self._check_global(batch, global_cond)
            # Rows B: are the unconditional half: _velocity skips their (exactly zero) cross-attention.
            both = self._velocity(
                torch.cat([x, x]),
                torch.cat([t, t]),
                torch.cat([global_cond, global_cond]),
                context.kv,
                context.key_mask,
                both_concat,
            )  # (2B, C, T)
        v_cond, v_uncond = both[:batch], both[batch:]
        if isinstance(cfg_scale, Tensor):
            if cfg_scale.device.type == "cpu" and both.device.type == "cuda":
                # A plain copy from pageable memory would stall the host on every sampling step.
                cfg_scale = cfg_scale.pin_memory().to(both.device, non_blocking=True)
            scale = cfg_scale.to(device=both.device, dtype=both.dtype)[:, None, None]  # (B, 1, 1)
        else:
            scale = cfg_scale
        v = v_uncond + (v_cond - v_uncond) * scale
        if scale_phi != 0.0:
            ratio = v_cond.std(dim=1, keepdim=True) / v.std(dim=1, keepdim=True)  # (B, 1, T)
            v = scale_phi * v * ratio + (1 - scale_phi) * v
        if isinstance(cfg_scale, Tensor):
            # Unguided items take v_c itself so they equal an unbatched cfg-1 call bit for bit.
            v = torch.where(scale == 1, v_cond, v)
        return v

    # ----------------------------------------------------------------------------- cost model

    @staticmethod
    def _check_sizes(**sizes: int) -> None:
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    def _macs_per_item(self, latent_len: int, prefix_len: int, context_len: int) -> dict[str, int]:
        """Multiply-accumulates of one item's forward, split by what the fast path does with them.

        ``trunk``: every row always pays it (embeddings of t and the global tokens, the latent I/O,
        self-attention, feed-forward). ``cross``: the cross-attention's q, QK^T, AV and out over all
        layers, skipped for zero-context rows. ``context``: the context MLP and every layer's
        ``to_kv``, done once per run by :meth:`prepare_context`.
        """
        e, c = self.embed_dim, self.io_channels
        seq = prefix_len + latent_len
        hidden = FF_MULT * e
        trunk = 2 * FOURIER_FEATURES * e + e * e  # timestep MLP
        trunk += prefix_len * (self.global_cond_dim * e + e * e)  # global MLP
        c_in = c + self.input_concat_dim
        trunk += latent_len * (c_in * c_in + c * c + c_in * e + c * e)  # pre/post 1x1 convs, project_in/out
        per_layer = seq * 3 * e * e + 2 * seq * seq * e + seq * e * e  # self-attn: qkv, QK^T + AV, out
        per_layer += seq * e * 2 * hidden + seq * hidden * e  # SwiGLU in, out
        trunk += self.depth * per_layer
        cross = self.depth * (seq * e * e + 2 * seq * context_len * e + seq * e * e)  # q, QK^T + AV, out
        context = context_len * (self.cond_token_dim * e + e * e) + self.depth * context_len * 2 * e * e
        return {"trunk": trunk, "cross": cross, "context": context}

    def flops_per_forward(self, batch: int, latent_len: int, prefix_len: int, context_len: int) -> int:
        """Matmul FLOPs (2 x multiply-accumulates) of one plain :meth:`forward` on these sizes.

        Counts every Linear, the two 1x1 convs and the attention score and value products; ignores
        norms, activations, RoPE and softmax. A plain guided call with scale != 1 costs this at
        ``2 * batch``: the naive count, the reference's work per step.
        """
        self._check_sizes(batch=batch, latent_len=latent_len, prefix_len=prefix_len, context_len=context_len)
        macs = self._macs_per_item(latent_len, prefix_len, context_len)
        return 2 * batch * (macs["trunk"] + macs["cross"] + macs["context"])

    def flops_per_guided_step(
        self,
        batch: int,
        latent_len: int,
        prefix_len: int,
        context_len: int,
        *,
        guided: bool = True,
        prepared_context: bool = True,
    ) -> int:
        """Matmul FLOPs one sampling step really executes (same counting rules as ``flops_per_forward``).

        Args:
            batch: items B.
            guided: some cfg scale != 1 (2B rows run); False: every scale is 1 (B rows).
            prepared_context: the step uses a :meth:`prepare_context` result: no context MLP or
                ``to_kv`` per step (see :meth:`flops_prepare_context`, paid once per run) and the
                unconditional rows skip cross-attention. False: the plain path, the naive count.
        """
        self._check_sizes(batch=batch, latent_len=latent_len, prefix_len=prefix_len, context_len=context_len)
        rows = 2 * batch if guided else batch
        if not prepared_context:
            return self.flops_per_forward(rows, latent_len, prefix_len, context_len)
        macs = self._macs_per_item(latent_len, prefix_len, context_len)
        return 2 * (rows * macs["trunk"] + batch * macs["cross"])

    def flops_prepare_context(self, batch: int, context_len: int) -> int:
        """Matmul FLOPs of one :meth:`prepare_context` (context MLP + every layer's ``to_kv``)."""
        self._check_sizes(batch=batch, context_len=context_len)
        return 2 * batch * self._macs_per_item(0, 0, context_len)["context"]
