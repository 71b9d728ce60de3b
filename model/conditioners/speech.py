"""Transcript (speech) conditioner: vocabulary ids -> `proj_seq_len` cross-attention tokens.

Checkpoint id `speech_prompt`. An F5-TTS-style text encoder (embedding + fixed sinusoid table +
ConvNeXt-V2 blocks over a fixed `seq_len` positions) followed by a channel projection, a linear map
over the time axis and a weight-free RMS norm. Items without a transcript use the learned
`empty_speech_feat` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.conditioners import text_frontend
from model.conditioners.common import rms_norm

__all__ = ["SpeechConditioner", "sinusoid_table"]


def sinusoid_table(num_positions: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(num_positions, dim) float32 table `[cos(p w_k), sin(p w_k)]`, `w_k = theta^(-2k/dim)`.

    Computed in float32 in this order on purpose: that is how the released model's table was made.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))  # (dim/2,)
    angles = torch.outer(torch.arange(num_positions, dtype=torch.float32), freqs)  # (P, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (P, dim)


class GRN(nn.Module):
    """Global response normalisation over the time axis (ConvNeXt-V2), on (B, T, C) inputs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The norm runs over every position, the zeroed filler included (as trained).
        g = torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True)  # (B, 1, C)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)  # (B, 1, C)
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv (k7) -> LayerNorm -> Linear -> GELU -> GRN -> Linear, plus the residual."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, ffn_dim)
        self.grn = GRN(ffn_dim)
        self.pwconv2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        h = F.gelu(self.pwconv1(self.norm(h)))  # (B, T, F)
        h = self.pwconv2(self.grn(h))  # (B, T, C)
        return x + h


class TextEmbedding(nn.Module):
    """Filler-aware embedding + sinusoid table + ConvNeXt-V2 stack over `seq_len` positions."""

    def __init__(self, *, vocab_size: int, dim: int, ffn_dim: int, num_blocks: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.text_embed = nn.Embedding(vocab_size + 1, dim)  # row 0 is the filler
        self.text_blocks = nn.ModuleList([ConvNeXtV2Block(dim, ffn_dim) for _ in range(num_blocks)])
        # Fixed, so not in the checkpoint. Only the first seq_len rows are ever used.
        self.register_buffer("pos_table", sinusoid_table(seq_len, dim), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # A module built on the meta device and loaded with `assign=True` would keep a meta table;
        # rebuild it next to the loaded weights.
        weight = state_dict.get(prefix + "text_embed.weight")
        if self.pos_table.is_meta and weight is not None and not weight.is_meta:
            self.pos_table = sinusoid_table(self.seq_len, self.text_embed.embedding_dim).to(weight.device)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids with -1 padding -> (B, seq_len, dim); longer inputs are truncated."""
        ids = (token_ids + 1)[:, : self.seq_len]  # 0 = filler, real tokens 1..vocab_size
        ids = F.pad(ids, (0, self.seq_len - ids.shape[1]), value=0)  # (B, N)
        keep = (ids != 0).unsqueeze(-1)  # (B, N, 1)
        x = self.text_embed(ids) + self.pos_table.to(self.text_embed.weight.dtype)  # (B, N, D)
        x = x * keep
        for block in self.text_blocks:
            x = block(x) * keep  # re-zero the filler after every block
        return x


class SpeechConditioner(nn.Module):
    """Transcript conditioner (`speech_prompt`): token ids -> (B, proj_seq_len, out_dim) tokens.

    Items without a transcript (`is_none`) get the learned `empty_speech_feat` tokens. The released
    model returns that tensor raw when the *whole* batch has no transcript, but RMS-normalised when
    it is batched with transcripts, so a request's output depended on its batch-mates. Here a None
    item always gets the raw tensor (what a single-request run of the released model gives), so
    results never depend on batching. `legacy_mixed_batch_norm=True` reproduces the released
    mixed-batch behaviour (normalised empty tokens when some item has a transcript); it exists to
    replay reference vectors.
    """

    def __init__(
        self,
        *,
        seq_len: int,
        proj_seq_len: int,
        out_dim: int = 768,
        vocab_size: int = text_frontend.VOCAB_SIZE,
        text_dim: int = 512,
        ffn_dim: int = 1024,
        num_blocks: int = 4,
        max_positions: int = 4096,
    ) -> None:
        super().__init__()
        for name, value in (
            ("seq_len", seq_len),
            ("proj_seq_len", proj_seq_len),
            ("out_dim", out_dim),
            ("vocab_size", vocab_size),
            ("ffn_dim", ffn_dim),
            ("num_blocks", num_blocks),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if text_dim < 2 or text_dim % 2:
            raise ValueError(f"text_dim must be an even number >= 2, got {text_dim}")
        if not 1 <= seq_len <= max_positions:
            raise ValueError(f"seq_len must be in [1, max_positions={max_positions}], got {seq_len}")
        self.seq_len = seq_len
        self.num_tokens = proj_seq_len  # `proj_seq_len` is the checkpoint's name for the time projection
        self.out_dim = out_dim
        self.vocab_size = vocab_size
        self.empty_speech_feat = nn.Parameter(torch.zeros(1, proj_seq_len, out_dim))
        self.text_embed = TextEmbedding(
            vocab_size=vocab_size, dim=text_dim, ffn_dim=ffn_dim, num_blocks=num_blocks, seq_len=seq_len
        )
        self.proj_features = nn.Linear(text_dim, out_dim)
        self.proj_seq_len = nn.Linear(seq_len, proj_seq_len)  # acts on the time axis

    def speech_token_ids(
        self, texts: Sequence[str | None], vocab: dict[str, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(token_ids (B, L), is_none (B,))` for `forward`, on this module's device."""
        token_ids, is_none = text_frontend.speech_token_ids(texts, vocab)
        device = self.empty_speech_feat.device
        return token_ids.to(device), is_none.to(device)

    def _check_ids(self, token_ids: torch.Tensor) -> None:
        if token_ids.dim() != 2 or token_ids.dtype != torch.long:
            raise ValueError(
                f"token_ids must be a (B, L) int64 tensor, got shape {tuple(token_ids.shape)} {token_ids.dtype}"
            )
        if token_ids.numel():
            low, high = int(token_ids.min()), int(token_ids.max())
            if low < -1 or high >= self.vocab_size:
                raise ValueError(
                    f"token ids must be in [-1, {self.vocab_size - 1}] (-1 = padding), got [{low}, {high}]"
                )

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, -1 padded -> (B, seq_len, text_dim) text-encoder output (before the norm)."""
        self._check_ids(token_ids)
        return self.text_embed(token_ids)

    def forward(
        self, token_ids: torch.Tensor, is_none: torch.Tensor, *, legacy_mixed_batch_norm: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, proj_seq_len, out_dim) float32 and an all-ones float mask (B, proj_seq_len).

        `token_ids` (B, L) int64 padded with -1 (rows of None items are ignored); `is_none` (B,) bool.
        """
        self._check_ids(token_ids)
        batch = token_ids.shape[0]
        if is_none.shape != (batch,) or is_none.dtype != torch.bool:
            raise ValueError(
                f"is_none must be a ({batch},) bool tensor, got shape {tuple(is_none.shape)} {is_none.dtype}"
            )
        is_none = is_none.to(token_ids.device)
        mask = torch.ones(batch, self.num_tokens, device=token_ids.device)  # (B, S)
        empty = self.empty_speech_feat.expand(batch, -1, -1)  # (B, S, D)
        if bool(is_none.all()):
            return empty.float().contiguous(), mask

        if legacy_mixed_batch_norm:
            x = self._project(self.text_embed(token_ids))  # (B, S, D)
            x = rms_norm(torch.where(is_none[:, None, None], empty.to(x.dtype), x))
        else:
            # Only items with a transcript go through the encoder; None items keep the raw tokens.
            keep = ~is_none
            encoded = rms_norm(self._project(self.text_embed(token_ids[keep])))  # (B', S, D)
            x = empty.to(encoded.dtype).clone()
            x[keep] = encoded
        return x.float(), mask

    def _project(self, text: torch.Tensor) -> torch.Tensor:
        x = self.proj_features(rms_norm(text))  # (B, N, D)
        return self.proj_seq_len(x.transpose(1, 2)).transpose(1, 2)  # (B, S, D)
