"""The diffusion transformer's section (`model.diffusion.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from model.config.checks import positive

COND_DIM = 768  # conditioning width, hard-coded in the released network (not configurable there)


@dataclass(frozen=True)
class DiTConfig:
    """Diffusion transformer (`model.diffusion.config`)."""

    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int = COND_DIM
    global_cond_dim: int = COND_DIM
    # Channels concatenated to the noisy latent: 0 (released), or io_channels for an edit's source
    # latent (the `small` preset; `model.parts.SamplerPart.source_latents`).
    input_concat_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim"):
            positive(f"dit.{name}", getattr(self, name))
        if self.input_concat_dim not in (0, self.io_channels):
            raise ValueError(
                f"dit.input_concat_dim = {self.input_concat_dim} must be 0 or dit.io_channels = {self.io_channels} "
                "(the only input concatenated is the source's latent)"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"dit.embed_dim = {self.embed_dim} must be divisible by dit.num_heads = {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads
