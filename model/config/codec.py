"""The latent codec: the released Oobleck VAE (`model.pretransform`) or the fixed log-mel codec."""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.config.checks import positive, positive_ints


@dataclass(frozen=True)
class VAEConfig:
    """Oobleck VAE (`model.pretransform`). Widths per stage are `channels * m` for m in `[1, *c_mults]`.

    `encoder_latent_dim` (the encoder's output width, mean ‖ scale) may differ from
    `encoder_channels`: the released schema allows it, and `model.vae.build_vae` gives the encoder's
    closing conv that width.
    """

    encoder_channels: int
    decoder_channels: int
    c_mults: tuple[int, ...]
    strides: tuple[int, ...]
    encoder_latent_dim: int  # encoder output channels = mean ‖ scale
    latent_dim: int
    downsampling_ratio: int
    io_channels: int

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "decoder_channels", "encoder_latent_dim", "latent_dim"):
            positive(f"vae.{name}", getattr(self, name))
        positive("vae.downsampling_ratio", self.downsampling_ratio)
        positive("vae.io_channels", self.io_channels)
        positive_ints("vae.c_mults", self.c_mults)
        positive_ints("vae.strides", self.strides)
        if len(self.c_mults) != len(self.strides):
            raise ValueError(
                f"vae.c_mults has {len(self.c_mults)} entries but vae.strides has {len(self.strides)}; "
                "they must be equal"
            )
        if math.prod(self.strides) != self.downsampling_ratio:
            raise ValueError(
                f"vae.downsampling_ratio = {self.downsampling_ratio} but the product of "
                f"vae.strides {list(self.strides)} is {math.prod(self.strides)}"
            )
        if self.encoder_latent_dim != 2 * self.latent_dim:
            raise ValueError(
                f"vae encoder latent_dim = {self.encoder_latent_dim} must be 2 * latent_dim "
                f"= {2 * self.latent_dim} (the VAE bottleneck splits it into mean and scale)"
            )

    @property
    def num_stages(self) -> int:
        return len(self.strides)


@dataclass(frozen=True)
class MelCodecConfig:
    """Fixed log-mel codec in place of the Oobleck VAE (`model.melcodec`; the `small` preset only).

    A latent frame is the normalised log power of `n_mels` mel bands (0 to `f_max` Hz) averaged over
    `hop / stft_hop` STFT frames; decoding rebuilds magnitudes and their phase by Griffin-Lim
    (`griffin_lim_iters` iterations). Not part of the released schema: written as
    `pretransform.type = "mel_codec"`.
    """

    hop: int
    n_fft: int
    stft_hop: int
    n_mels: int
    f_max: float
    log_floor: float
    griffin_lim_iters: int
    io_channels: int

    def __post_init__(self) -> None:
        for name in ("hop", "n_fft", "stft_hop", "n_mels", "griffin_lim_iters", "io_channels"):
            positive(f"mel_codec.{name}", getattr(self, name))
        if self.hop % self.stft_hop:
            raise ValueError(f"mel_codec.hop = {self.hop} must be a multiple of stft_hop = {self.stft_hop}")
        if self.stft_hop > self.n_fft:
            raise ValueError(f"mel_codec.stft_hop = {self.stft_hop} must be at most n_fft = {self.n_fft}")
        if not self.f_max > 0 or not self.log_floor > 0:
            raise ValueError(f"mel_codec.f_max and log_floor must be > 0, got {self.f_max}, {self.log_floor}")

    @property
    def latent_dim(self) -> int:
        return self.n_mels

    @property
    def downsampling_ratio(self) -> int:
        return self.hop
