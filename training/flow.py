"""Rectified-flow training pieces for the sampler part, in pure PyTorch (no I/O, no Ray).

Convention (spec §7.3): flow time t in [0, 1], 1 = pure noise. With clean latents ``x_data`` and
noise ``eps``::

    x_t = (1 - t) * x_data + t * eps          v_target = eps - x_data

so the sampler's Euler steps from t = 1 to t = 0 follow the learned velocity back to the data.
t is drawn uniformly in [0, 1). Classifier-free guidance is learned as the reference trains it
(spec §3.6): with probability ``cond_dropout`` an item's *whole* cross-attention context is replaced
by zeros (no learned null token; the prefix tokens from the mel and sync conditioners are kept).

Every random draw of a step (t, noise, dropout) comes from one CPU `torch.Generator` whose state is
checkpointed, so a resumed run takes exactly the step an uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model.config import MEL_ID, OMNI_ID, SPEECH_ID, SYNC_ID
from model.parts import Conditioning, SamplerPart

# Children of `SamplerPart` that train. The VAE is frozen (spec §2.7) and the thinker lives elsewhere.
TRAINABLE_CHILDREN: tuple[str, ...] = ("dit", "omni_proj", "sync", "speech", "mel")


# --------------------------------------------------------------------------- flow matching


def interpolate(x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x_data + t noise`` with per-item t (B,); x_data, noise (B, C, T)."""
    if x_data.shape != noise.shape:
        raise ValueError(f"x_data {tuple(x_data.shape)} and noise {tuple(noise.shape)} must have one shape")
    if t.shape != (x_data.shape[0],):
        raise ValueError(f"t must have shape ({x_data.shape[0]},), got {tuple(t.shape)}")
    tt = t.to(x_data.dtype)[:, None, None]  # (B, 1, 1)
    return (1 - tt) * x_data + tt * noise  # (B, C, T)


def velocity_target(x_data: Tensor, noise: Tensor) -> Tensor:
    """The rectified-flow regression target ``noise - x_data`` (B, C, T)."""
    return noise - x_data


def drop_context(cross: Tensor, drop: Tensor) -> Tensor:
    """Zero the whole cross-attention context (B, S, D) of items where ``drop`` (B,) is True."""
    if drop.shape != (cross.shape[0],) or drop.dtype != torch.bool:
        raise ValueError(f"drop must be a ({cross.shape[0]},) bool tensor, got {tuple(drop.shape)} {drop.dtype}")
    return cross * (~drop).to(device=cross.device, dtype=cross.dtype)[:, None, None]  # (B, S, D)


@dataclass
class StepDraws:
    """The random draws of one training step, all made on the CPU generator (device independent)."""

    t: Tensor  # (B,) flow time in [0, 1)
    noise: Tensor  # (B, C, T) standard normal
    drop: Tensor  # (B,) bool: context dropped for CFG


def draw_step(generator: torch.Generator, batch: int, latent_shape: tuple[int, int], cond_dropout: float) -> StepDraws:
    """Draw t ~ U(0, 1), the noise and the CFG dropout of one step, in that fixed order."""
    if not 0.0 <= cond_dropout < 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    t = torch.rand(batch, generator=generator)
    noise = torch.randn((batch, *latent_shape), generator=generator)
    drop = torch.rand(batch, generator=generator) < cond_dropout
    return StepDraws(t=t, noise=noise, drop=drop)


def rectified_flow_loss(
    dit: nn.Module,
    x_data: Tensor,
    cond: Conditioning,
    draws: StepDraws,
    *,
    autocast_dtype: torch.dtype | None = None,
    frame_weights: Tensor | None = None,
) -> Tensor:
    """Mean squared error between the DiT's velocity at ``x_t`` and ``noise - x_data`` (a scalar).

    ``x_data`` (B, C, T) clean latents; ``cond`` the (already conditioned) context and prefix.
    The forward runs under autocast in ``autocast_dtype`` when given (bf16 on GPU); the loss is
    computed in float32. ``frame_weights`` (B, T), non-negative, weight each latent frame's squared
    error (a weighted mean: all ones is the plain MSE).
    """
    if frame_weights is not None:
        b, _, frames = x_data.shape
        if tuple(frame_weights.shape) != (b, frames):
            raise ValueError(f"frame_weights must be ({b}, {frames}), got {tuple(frame_weights.shape)}")
        if not bool(torch.isfinite(frame_weights).all()) or bool((frame_weights < 0).any()):
            raise ValueError("frame_weights must be finite and >= 0")
        if not float(frame_weights.sum()) > 0:
            raise ValueError("frame_weights must not all be zero")
    device = x_data.device
    t = draws.t.to(device)
    noise = draws.noise.to(device=device, dtype=x_data.dtype)
    x_t = interpolate(x_data, noise, t)  # (B, C, T)
    cross = drop_context(cond.cross, draws.drop.to(device))  # (B, S, D)
    ctx = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx:
        v = dit(x_t, t, cross, cond.cross_mask, cond.prefix, input_concat=cond.source)  # (B, C, T)
    err = (v.float() - velocity_target(x_data, noise).float()).square()  # (B, C, T)
    if frame_weights is None:
        return err.mean()
    w = frame_weights.to(device=device, dtype=torch.float32)[:, None, :]  # (B, 1, T)
    return (err * w).sum() / (w.sum() * err.shape[1])


# --------------------------------------------------------------------------- conditioning with grads


@dataclass
class TrainExample:
    """One conditioning input of a training batch (tensors on any device)."""

    mllm_features: Tensor  # (L, hidden) thinker states of the instruction, precomputed
    audio_window: Tensor | None = None  # (window_samples,) mono source audio; None = silence (T2A)
    transcript: str | None = None
    # (n_mels, frames) log-mel of the source, precomputed with `part.mel.log_mel`; used instead of
    # `audio_window` when given (the spectrogram is fixed, so a trainer can compute it once per clip)
    source_mel: Tensor | None = None
    # (C, T) latent of the source, precomputed with `SamplerPart.encode_audio`; the DiT's input-concat channels
    # (presets with dit.input_concat_dim > 0), else encoded from `audio_window` (zeros without one)
    source_latent: Tensor | None = None
    # (latent frames,) >= 0: how much each frame of this example's target counts in the loss
    # (e.g. more on an edit's event span); None = 1 everywhere
    frame_weights: Tensor | None = None


def condition_batch(part: SamplerPart, examples: Sequence[TrainExample]) -> Conditioning:
    """Run the trainable conditioner heads on a batch, keeping the graph (unlike `SamplerPart.condition`).

    Returns the DiT's cross-attention context (B, S, D), its mask (B, S) and the prefix (B, G, D).
    """
    if not examples:
        raise ValueError("condition_batch needs at least one example")
    device = part.device
    outputs: dict[str, tuple[Tensor, Tensor]] = {}
    outputs[OMNI_ID] = part.omni_proj([e.mllm_features.to(device) for e in examples])
    ids, is_none = part.speech.speech_token_ids([e.transcript for e in examples], part.vocab)
    outputs[SPEECH_ID] = part.speech(ids, is_none)
    outputs[MEL_ID] = part.mel.from_log_mel(_source_log_mels(part, examples))  # (B, S_mel, D)
    outputs[SYNC_ID] = part.sync(part.sync.null_features(len(examples)))
    cond = part.assemble(outputs)
    cond.source = _source_latents(part, examples)
    return cond


@torch.no_grad()
def _source_latents(part: SamplerPart, examples: Sequence[TrainExample]) -> Tensor | None:
    """(B, C, T) input-concat latents (cached, encoded from the window, or zeros); None when the
    DiT takes none."""
    if part.config.dit.input_concat_dim == 0:
        return None
    shape = (part.config.dit.io_channels, part.config.latent_length)
    out = []
    for i, e in enumerate(examples):
        if e.source_latent is not None:
            if tuple(e.source_latent.shape) != shape:
                raise ValueError(f"examples[{i}].source_latent must be {shape}, got {tuple(e.source_latent.shape)}")
            out.append(e.source_latent.to(device=part.device, dtype=torch.float32))
        elif e.audio_window is None and e.source_mel is not None:
            raise ValueError(
                f"examples[{i}] has a source_mel but no audio_window or source_latent: this preset's DiT "
                "also needs the source's latent (input_concat_dim > 0)"
            )
        else:
            encoded = part.source_latents([e.audio_window])
            if encoded is None:  # input_concat_dim > 0 was checked above; the part agrees
                raise RuntimeError("the sampler part encoded no source latent for an input-concat DiT")
            out.append(encoded[0])
    return torch.stack(out)


@torch.no_grad()
def _source_log_mels(part: SamplerPart, examples: Sequence[TrainExample]) -> Tensor:
    """(B, n_mels, frames) log-mel of every example's source: cached, computed from its window, or silence."""
    device, window = part.device, part.config.mel.window_samples
    mels: list[Tensor | None] = [None if e.source_mel is None else e.source_mel.to(device) for e in examples]
    todo, wavs = [], []  # examples without a cached log-mel, and their windows (silence for None)
    for i, e in enumerate(examples):
        if mels[i] is not None:
            continue
        w = e.audio_window
        if w is not None and tuple(w.shape) != (window,):
            raise ValueError(f"examples[{i}].audio_window must be ({window},), got {tuple(w.shape)}")
        if w is not None and not bool(torch.isfinite(w).all()):
            raise ValueError(f"examples[{i}].audio_window contains NaN or Inf samples")
        todo.append(i)
        wavs.append(torch.zeros(window, device=device) if w is None else w.to(device=device, dtype=torch.float32))
    if todo:
        for i, m in zip(todo, part.mel.log_mel(torch.stack(wavs)), strict=True):
            mels[i] = m
    return torch.stack([m for m in mels if m is not None])  # every slot is filled by now


# --------------------------------------------------------------------------- optimisation


def trainable_parameters(part: SamplerPart) -> list[nn.Parameter]:
    """Parameters of the trainable children (DiT and conditioner heads); the VAE is frozen."""
    params: list[nn.Parameter] = []
    for name in TRAINABLE_CHILDREN:
        params += [p for p in getattr(part, name).parameters() if p.requires_grad]
    return params


def freeze_vae(part: SamplerPart) -> None:
    """Mark the VAE frozen (no grads, eval mode); it only encodes targets during training."""
    vae = part.get_submodule("vae")
    vae.requires_grad_(False)
    vae.eval()


def make_optimizer(
    params: Iterable[nn.Parameter],
    *,
    lr: float = 1e-4,
    weight_decay: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW with validated hyper-parameters."""
    if not 0.0 < lr <= 1.0:
        raise ValueError(f"lr must be in (0, 1], got {lr}")
    if not 0.0 <= weight_decay <= 1.0:
        raise ValueError(f"weight_decay must be in [0, 1], got {weight_decay}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be in [0, 1), got {betas}")
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, betas=betas)


def warmup_lr(step: int, *, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps`` steps (step counts from 0), then constant."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


class EMA:
    """Exponential moving average of a module's floating parameters (``shadow = d*shadow + (1-d)*p``).

    Keys are the module's parameter names, so `state_dict()` loads straight into a fresh module with
    `copy_to`. Buffers are not averaged (they do not train).
    """

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone().float() for name, p in module.named_parameters() if p.is_floating_point()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (same parameter names)."""
        params = dict(module.named_parameters())
        missing = sorted(set(self.shadow) - set(params))
        if missing:
            raise ValueError(f"module lacks EMA parameters {missing[:10]}")
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            diff = sorted(set(shadow) ^ set(self.shadow))
            raise ValueError(f"EMA state does not match the module; differing names {diff[:10]}")
        self.decay = float(state["decay"])
        for k, v in shadow.items():
            self.shadow[k].copy_(v)


@dataclass(frozen=True)
class TrainHyper:
    """Hyper-parameters of one run (defaults sized for the tiny preset)."""

    lr: float = 3e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 50
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.lr <= 1.0:
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


class FlowTrainer:
    """Owns the sampler part, AdamW, the EMA and the step generator; `step` runs one update.

    ``model`` is what the forward goes through: `FlowObjective(part)` by default, or a DDP wrapper of
    one (gradients are then all-reduced by DDP). Everything in `state_dict` is what a resume needs.
    """

    def __init__(
        self,
        part: SamplerPart,
        hyper: TrainHyper,
        *,
        model: nn.Module | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.part = part
        self.model = model if model is not None else FlowObjective(part)
        self.hyper = hyper
        self.autocast_dtype = autocast_dtype
        freeze_vae(part)
        self.params = trainable_parameters(part)
        self.optimizer = make_optimizer(self.params, lr=hyper.lr, weight_decay=hyper.weight_decay)
        self.ema = EMA(part, hyper.ema_decay)
        self.generator = torch.Generator().manual_seed(hyper.seed)
        self.step_index = 0

    def step(self, latents: Tensor, examples: Sequence[TrainExample], *, lr_scale: float = 1.0) -> dict[str, float]:
        """One AdamW update on a batch: latents (B, C, T) of the targets and their conditioning inputs.

        ``lr_scale`` (0, 1] multiplies this step's learning rate after warm-up: a caller's decay
        schedule (e.g. one that follows a wall-time budget, which the trainer cannot know)."""
        if latents.shape[0] != len(examples):
            raise ValueError(f"{latents.shape[0]} latents for {len(examples)} examples")
        if not 0.0 < lr_scale <= 1.0:
            raise ValueError(f"lr_scale must be in (0, 1], got {lr_scale}")
        for child in TRAINABLE_CHILDREN:
            getattr(self.part, child).train()
        lr = lr_scale * warmup_lr(self.step_index, base_lr=self.hyper.lr, warmup_steps=self.hyper.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if latents.ndim != 3:
            raise ValueError(f"latents must be (B, C, T), got {tuple(latents.shape)}")
        latent_shape = (int(latents.shape[1]), int(latents.shape[2]))
        draws = draw_step(self.generator, latents.shape[0], latent_shape, self.hyper.cond_dropout)
        loss = self.model(latents, examples, draws, self.autocast_dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.hyper.max_grad_norm)
        self.optimizer.step()
        self.ema.update(self.part)
        self.step_index += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        trainable = {n: p.detach().clone() for n, p in self.part.named_parameters() if _is_trainable_name(n)}
        return {
            "step": self.step_index,
            "model": trainable,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "ema": self.ema.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        params = dict(self.part.named_parameters())
        model = state["model"]
        unknown = sorted(set(model) - set(params))
        if unknown:
            raise ValueError(f"checkpoint has parameters the model lacks: {unknown[:10]}")
        with torch.no_grad():
            for name, value in model.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        self.step_index = int(state["step"])


def _is_trainable_name(name: str) -> bool:
    return name.split(".", 1)[0] in TRAINABLE_CHILDREN


class FlowObjective(nn.Module):
    """The sampler part wrapped as ``(latents, examples, draws, autocast) -> loss``, the one forward DDP
    sees (DDP all-reduces the gradients of whatever its wrapped module's forward touched)."""

    def __init__(self, part: SamplerPart) -> None:
        super().__init__()
        self.part = part

    def forward(
        self, latents: Tensor, examples: Sequence[TrainExample], draws: StepDraws, autocast_dtype: torch.dtype | None
    ) -> Tensor:
        cond = condition_batch(self.part, examples)
        weights = None
        if any(e.frame_weights is not None for e in examples):
            frames = latents.shape[-1]
            rows = []
            for i, e in enumerate(examples):
                w = torch.ones(frames) if e.frame_weights is None else e.frame_weights.cpu().float()
                if tuple(w.shape) != (frames,):
                    raise ValueError(f"examples[{i}].frame_weights must be ({frames},), got {tuple(w.shape)}")
                rows.append(w)
            weights = torch.stack(rows)
        return rectified_flow_loss(
            self.part.dit, latents, cond, draws, autocast_dtype=autocast_dtype, frame_weights=weights
        )
