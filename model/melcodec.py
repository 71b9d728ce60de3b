"""A fixed log-mel codec standing in for the Oobleck VAE in the `small` preset.

Why it exists: a 44.1 kHz waveform VAE does not train from scratch on two CPU cores in an hour, and
a lossless linear latent (an MDCT of the same band) needs more channels per frame than a width-128
DiT can denoise; see docs/model.md, "The embedded small model". This codec needs no training and
gives the DiT a smooth, low-dimensional target:

* encode: the channel mean's power STFT (`n_fft`, hop `stft_hop`, Hann), averaged over the
  `hop / stft_hop` STFT frames of each latent frame, pooled into `n_mels` HTK mel bands from 0 to
  `f_max` (each band the weighted mean power of its bins), `log(power + log_floor)`, then
  normalised per band by `band_mean` / `band_std` (buffers fitted to training data; 0 / 1 until
  fitted).
* decode: the inverse of each step down to band powers, capped per band at the loudest log power
  seen when fitting (`band_max`; a diffusion sample pushed past the data by guidance would
  otherwise decode to a burst far louder than anything trained on), the band powers interpolated back over
  frequency (the same triangles, which sum to 1 between band centres) and over time (log domain,
  to every STFT frame), then a phase by fast Griffin-Lim (momentum 0.99, `griffin_lim_iters`
  iterations from a fixed-seed start, so decoding is deterministic), copied to every channel.

It is lossy: fine spectral structure inside a band and the phase are not kept, so a pure tone
comes back as a narrow band of noise around its pitch, and nothing above `f_max` comes back.
Encode/decode follow the calling conventions of the Oobleck VAE in `model.vae`, which dispatches to
this class; its state is `band_mean`, `band_std` and `band_max` (released keys
`pretransform.model.band_*`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.conditioners.mel import mel_filterbank
from model.config import MelCodecConfig

CODEC_KEYS = frozenset({"band_mean", "band_std", "band_max"})  # the codec's whole state dict
GRIFFIN_LIM_MOMENTUM = 0.99
GRIFFIN_LIM_SEED = 0


class MelCodec(nn.Module):
    """Waveform (B, A, T * hop) <-> latents (B, n_mels, T); see the module docstring."""

    def __init__(self, cfg: MelCodecConfig, *, sample_rate: int) -> None:
        super().__init__()
        if cfg.f_max > sample_rate / 2:
            raise ValueError(f"mel_codec.f_max = {cfg.f_max} is above the Nyquist frequency {sample_rate / 2}")
        self.cfg = cfg
        self.register_buffer("band_mean", torch.zeros(cfg.n_mels), persistent=True)
        self.register_buffer("band_std", torch.ones(cfg.n_mels), persistent=True)
        self.register_buffer("band_max", torch.full((cfg.n_mels,), torch.inf), persistent=True)
        fb = mel_filterbank(sample_rate=sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, f_max=cfg.f_max)  # (F, M)
        if bool((fb.sum(dim=0) == 0).any()):
            raise ValueError(f"mel_codec: {cfg.n_mels} bands up to {cfg.f_max} Hz leave a band with no STFT bin")
        self.register_buffer("filters", fb, persistent=False)  # (F, M): decode spreads bands over bins
        self.register_buffer("pool", fb / fb.sum(dim=0, keepdim=True), persistent=False)  # (F, M) weighted mean
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    # ------------------------------------------------------------------ transforms

    def _stft(self, x: Tensor) -> Tensor:
        return torch.stft(x, self.cfg.n_fft, self.cfg.stft_hop, window=self.window, return_complex=True)

    def _istft(self, spec: Tensor, length: int) -> Tensor:
        return torch.istft(spec, self.cfg.n_fft, self.cfg.stft_hop, window=self.window, length=length)

    def band_log_power(self, wav: Tensor) -> Tensor:
        """(B, A, N) -> un-normalised (B, n_mels, N / hop) log band power."""
        hop, per = self.cfg.hop, self.cfg.hop // self.cfg.stft_hop
        if wav.ndim != 3 or wav.shape[1] != self.cfg.io_channels:
            raise ValueError(f"wav must be (B, {self.cfg.io_channels}, N), got {tuple(wav.shape)}")
        if wav.shape[-1] == 0 or wav.shape[-1] % hop:
            raise ValueError(f"wav length {wav.shape[-1]} must be a positive multiple of {hop}")
        frames = wav.shape[-1] // hop
        power = self._stft(wav.to(self.window).mean(dim=1)).abs().square()  # (B, F, S), S = N / stft_hop + 1
        power = power[..., : frames * per].unflatten(-1, (frames, per)).mean(dim=-1)  # (B, F, T)
        bands = torch.einsum("fm,bft->bmt", self.pool, power)  # (B, M, T)
        return torch.log(bands + self.cfg.log_floor)

    def encode(self, wav: Tensor) -> Tensor:
        """(B, A, N) float32, N a positive multiple of hop -> (B, n_mels, N / hop) normalised latents."""
        return (self.band_log_power(wav) - self.band_mean[:, None]) / self.band_std[:, None]

    def decode(self, latents: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, io_channels, T * hop) float32."""
        cfg = self.cfg
        if latents.ndim != 3 or latents.shape[1] != cfg.n_mels:
            raise ValueError(f"latents must be (B, {cfg.n_mels}, T), got {tuple(latents.shape)}")
        log_bands = latents.to(self.window) * self.band_std[:, None] + self.band_mean[:, None]  # (B, M, T)
        log_bands = torch.minimum(log_bands, self.band_max[:, None])
        frames, per = latents.shape[-1], cfg.hop // cfg.stft_hop
        n = frames * cfg.hop
        # Latent frame t averages STFT frames t*per .. t*per + per - 1, centred at STFT frame t*per + (per-1)/2.
        s = torch.arange(n // cfg.stft_hop + 1, device=latents.device, dtype=log_bands.dtype)
        pos = ((s - (per - 1) / 2) / per).clamp(0, frames - 1)  # (S,) fractional latent index
        lo = pos.floor().long().clamp(max=frames - 1)
        hi = (lo + 1).clamp(max=frames - 1)
        w = pos - lo
        log_s = log_bands[..., lo] * (1 - w) + log_bands[..., hi] * w  # (B, M, S)
        bands = (log_s.exp() - cfg.log_floor).clamp_min(0.0)
        magnitude = torch.einsum("fm,bms->bfs", self.filters, bands).sqrt()  # (B, F, S)
        mono = self.griffin_lim(magnitude, n)  # (B, N)
        return mono[:, None, :].expand(-1, cfg.io_channels, -1).contiguous()

    def griffin_lim(self, magnitude: Tensor, length: int) -> Tensor:
        """Fast Griffin-Lim (Perraudin et al. 2013): a waveform whose STFT magnitude approaches `magnitude`."""
        g = torch.Generator().manual_seed(GRIFFIN_LIM_SEED)
        phase = torch.rand(magnitude.shape[1:], generator=g, dtype=magnitude.dtype) * (2 * torch.pi)
        angles = torch.polar(torch.ones_like(phase), phase).to(magnitude.device).expand_as(magnitude)  # (B, F, S)
        previous = torch.zeros_like(angles)
        for _ in range(self.cfg.griffin_lim_iters):
            rebuilt = self._stft(self._istft(magnitude * angles, length))
            angles = rebuilt - previous * (GRIFFIN_LIM_MOMENTUM / (1 + GRIFFIN_LIM_MOMENTUM))
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        return self._istft(magnitude * angles, length)

    @torch.no_grad()
    def fit(self, wav: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Set `band_mean` / `band_std` / `band_max` to the statistics of `wav` (B, A, N) per band;
        returns them."""
        log_bands = self.band_log_power(wav)  # (B, M, T)
        self.band_mean.copy_(log_bands.mean(dim=(0, 2)))
        self.band_std.copy_(log_bands.std(dim=(0, 2)).clamp_min(1e-3))
        self.band_max.copy_(log_bands.amax(dim=(0, 2)))
        return self.band_mean.clone(), self.band_std.clone(), self.band_max.clone()
