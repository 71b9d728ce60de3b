"""The two separately deployed parts of Audio-Omni.

* the encoder part is the frozen thinker (`model.mllm.MLLMEncoder`);
* the sampler part (`SamplerPart`) holds everything else: the projection of the thinker states, the
  transcript, mel and sync conditioners, the DiT and the VAE. It turns `GenerationRequest`s into
  waveforms, batching requests from different jobs into one sampling loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.conditioners.mel import MelConditioner
from model.conditioners.speech import SpeechConditioner
from model.conditioners.sync import SyncConditioner
from model.conditioners.text_frontend import load_vocab
from model.config import MEL_ID, OMNI_ID, SPEECH_ID, SYNC_ID, AudioOmniConfig
from model.dit import DiffusionTransformer
from model.limits import MAX_CFG_SCALE, MAX_STEPS, MIN_CFG_SCALE, MIN_STEPS
from model.mllm import OmniProjection
from model.requests import GenerationRequest
from model.sampler import euler_sample, per_sample_noise
from model.vae import build_vae, decode, encode_moments


@dataclass
class Conditioning:
    cross: torch.Tensor  # (B, S, cond_dim) cross-attention context
    cross_mask: torch.Tensor  # (B, S) bool, True = attend
    prefix: torch.Tensor  # (B, G, cond_dim) tokens prepended to the DiT sequence
    # (B, C, T) the source's latent, concatenated to the noisy latent; only for a DiT with
    # input_concat_dim > 0 (None otherwise)
    source: torch.Tensor | None = None


class SamplerPart(nn.Module):
    """DiT + conditioners + VAE. Child names (`dit`, `omni_proj`, `sync`, `speech`, `mel`, `vae`) are
    what `model.checkpoint` maps the released key prefixes onto."""

    def __init__(self, config: AudioOmniConfig) -> None:
        super().__init__()
        self.config = config
        self.dit = DiffusionTransformer(**asdict(config.dit))  # DiTConfig fields are its arguments
        self.omni_proj = OmniProjection(
            in_features=config.mllm.hidden_size, out_dim=config.cond_dim, pad_length=config.mllm.pad_length
        )
        self.sync = SyncConditioner(seq_in=config.sync.seq_in, seq_out=config.sync.seq_out, dim=config.cond_dim)
        self.speech = SpeechConditioner(
            seq_len=config.speech.seq_len, proj_seq_len=config.speech.proj_seq_len, out_dim=config.cond_dim
        )
        m = config.mel
        self.mel = MelConditioner(
            seq_len=m.seq_len,
            num_frames=m.num_frames,
            n_mels=m.n_mels,
            out_dim=config.cond_dim,
            n_fft=m.n_fft,
            hop_length=m.hop_length,
            win_length=m.win_length,
            sample_rate=m.sample_rate,
        )
        self.vae = build_vae(config.vae, sample_rate=config.sample_rate)
        self._vocab: dict[str, int] | None = None
        # Autocast dtype for the DiT (None = run in the parameter dtype). Mel and VAE stay float32.
        self.autocast_dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return self.dit.preprocess_conv.weight.device

    @property
    def vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = load_vocab(self.config.speech.vocab_file)
        return self._vocab

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def check_requests(self, requests: Sequence[GenerationRequest]) -> None:
        """Validate a batch at the boundary: one step count, shapes, finite values."""
        if not requests:
            raise ValueError("a sampling batch needs at least one request")
        steps = {r.steps for r in requests}
        if len(steps) != 1:
            raise ValueError(f"requests in one batch must share `steps`, got {sorted(steps)}")
        window = self.config.mel.window_samples
        hidden = self.config.mllm.hidden_size
        for i, r in enumerate(requests):
            f = r.mllm_features
            if f.dim() != 2 or f.shape[1] != hidden or f.shape[0] < 1:
                raise ValueError(f"request {i}: mllm_features must be (L>=1, {hidden}), got {tuple(f.shape)}")
            if not MIN_STEPS <= r.steps <= MAX_STEPS:
                raise ValueError(f"request {i}: steps must be in [{MIN_STEPS}, {MAX_STEPS}], got {r.steps}")
            if not MIN_CFG_SCALE <= r.cfg_scale <= MAX_CFG_SCALE:
                raise ValueError(
                    f"request {i}: cfg_scale must be in [{MIN_CFG_SCALE:g}, {MAX_CFG_SCALE:g}], got {r.cfg_scale}"
                )
            if r.audio_window is not None and tuple(r.audio_window.shape) != (window,):
                raise ValueError(
                    f"request {i}: audio_window must be ({window},) mono samples, got {tuple(r.audio_window.shape)}"
                )
            if r.sync_features is not None:
                want = (self.config.sync.seq_in, self.config.cond_dim)
                if tuple(r.sync_features.shape) != want:
                    raise ValueError(f"request {i}: sync_features must be {want}, got {tuple(r.sync_features.shape)}")

    # ------------------------------------------------------------------ stages

    @torch.no_grad()
    def condition(self, requests: Sequence[GenerationRequest]) -> Conditioning:
        """Run the four conditioners and assemble the DiT's context and prefix tokens.

        The conditioners run one request at a time: they are cheap next to the DiT, and a matmul's
        rounding can depend on how many rows it gets, so a job's conditioning would otherwise depend
        on its batch-mates. The DiT then runs the whole batch.
        """
        per_item = [self._condition_one(r) for r in requests]
        return Conditioning(
            torch.cat([c.cross for c in per_item]),
            torch.cat([c.cross_mask for c in per_item]),
            torch.cat([c.prefix for c in per_item]),
            self.source_latents([r.audio_window for r in requests]),
        )

    @torch.no_grad()
    def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio -> latents (B, C, T) with the VAE encoder's mean (deterministic), in float32.

        ``wav`` (B, N) mono or (B, A, N); mono is copied to the VAE's channels and the length is
        cropped or zero-padded to ``output_samples`` so the latent length is ``latent_length``.
        """
        cfg = self.config
        if wav.dim() == 2:
            wav = wav[:, None, :].expand(-1, cfg.vae.io_channels, -1)  # (B, A, N)
        if wav.dim() != 3 or wav.shape[1] != cfg.vae.io_channels:
            raise ValueError(f"wav must be (B, N) or (B, {cfg.vae.io_channels}, N), got {tuple(wav.shape)}")
        n = cfg.output_samples
        wav = wav[..., :n]
        if wav.shape[-1] < n:
            wav = F.pad(wav, (0, n - wav.shape[-1]))
        mean, _ = encode_moments(self.vae, wav.to(self.device, torch.float32))  # (B, C, T)
        return mean

    @torch.no_grad()
    def source_latents(self, windows: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """The DiT's input-concat channels (B, C, T): each source window's latent, zeros where an
        item has no source. None when the DiT takes no input concat (the released layout).

        Encoded one item at a time, like the conditioners, so an item's latent does not depend on
        its batch-mates.
        """
        if self.config.dit.input_concat_dim == 0:
            return None
        shape = (self.config.dit.io_channels, self.config.latent_length)
        return torch.stack(
            [
                torch.zeros(shape, device=self.device) if w is None else self.encode_audio(w.float()[None])[0]
                for w in windows
            ]
        )

    def _condition_one(self, r: GenerationRequest) -> Conditioning:
        device = self.device
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        outputs[OMNI_ID] = self.omni_proj([r.mllm_features.to(device)])
        ids, is_none = self.speech.speech_token_ids([r.transcript], self.vocab)
        outputs[SPEECH_ID] = self.speech(ids, is_none)
        window = self.config.mel.window_samples
        wav = r.audio_window.float() if r.audio_window is not None else torch.zeros(window)
        outputs[MEL_ID] = self.mel(wav.to(device)[None])  # (1, N)
        sync_in = self.sync.null_features(1)  # (1, 240, D)
        if r.sync_features is not None:
            sync_in[0] = r.sync_features.to(device=device, dtype=sync_in.dtype)
        outputs[SYNC_ID] = self.sync(sync_in)
        return self.assemble(outputs)

    def assemble(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Conditioning:
        """Concatenate conditioner outputs in the configured order along the sequence axis."""
        cfg = self.config
        cross = torch.cat([outputs[c][0].float() for c in cfg.high_level_cond_ids], dim=1)  # (B, S, D)
        cross_mask = torch.cat([outputs[c][1].bool() for c in cfg.high_level_cond_ids], dim=1)  # (B, S)
        prefix = torch.cat([outputs[c][0].float() for c in cfg.low_level_cond_ids], dim=1)  # (B, G, D)
        return Conditioning(cross, cross_mask, prefix)

    @torch.no_grad()
    def sample_latents(
        self,
        cond: Conditioning,
        noise: torch.Tensor,
        steps: int,
        cfg_scale: torch.Tensor,
        *,
        on_step: Callable | None = None,
    ) -> torch.Tensor:
        """Rectified-flow Euler from `noise` (B, C, T) to clean latents, guidance per item.

        The context's MLP and key/value projections are computed once here, not at every step, and
        the unconditional half skips its (exactly zero) cross-attention: see
        `DiffusionTransformer.prepare_context`.
        """
        with self._autocast():  # the same precision as the steps that use it
            context = self.dit.prepare_context(cond.cross, cond.cross_mask)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.dit.guided_velocity(
                    x, t, None, None, cond.prefix, cfg_scale, context=context, input_concat=cond.source
                )

        return euler_sample(velocity, noise, steps, on_step=on_step)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T) latents -> (B, channels, T * ratio) float32 audio; always in float32."""
        return decode(self.vae, latents.float())

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], *, pad_to: int | None = None) -> torch.Tensor:
        """Sample and decode a batch -> (B, channels, N) float32.

        Each item gets its own noise (its seed) and guidance scale. With `pad_to`, the batch is
        padded to that many items (copies of the last request, discarded afterwards): every call then
        has the same shapes, so the BLAS/cuBLAS kernels and their rounding are the same whoever shares
        the batch, and a job's output is bit-identical alone or batched. It also keeps CUDA graphs and
        compiled kernels on one shape. Without it, outputs agree only to float rounding (~1e-7).
        """
        self.check_requests(requests)
        real = len(requests)
        if pad_to is not None:
            if pad_to < real:
                raise ValueError(f"pad_to = {pad_to} is smaller than the batch of {real} requests")
            requests = list(requests) + [requests[-1]] * (pad_to - real)
        cond = self.condition(requests)
        shape = (self.config.dit.io_channels, self.config.latent_length)
        noise = per_sample_noise([r.seed for r in requests], shape, device=self.device)  # (B, C, T)
        scales = torch.tensor([float(r.cfg_scale) for r in requests])  # (B,) on CPU: host-side check
        latents = self.sample_latents(cond, noise, requests[0].steps, scales)[:real]  # (B, C, T)
        # One item per decode call: convolution kernels are chosen by batch size too.
        return torch.cat([self.decode(z[None]) for z in latents])
