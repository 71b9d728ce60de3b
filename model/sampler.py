"""Rectified-flow Euler sampling and seeded starting noise (spec §7).

The sampler knows nothing of the network: it takes a velocity function ``v(x, t)``; classifier-free
guidance lives in that function (see ``DiffusionTransformer.guided_velocity``).

Convention: ``x_t = (1 - t) * x_data + t * noise``, so ``v ~ noise - x_data`` and integrating from
t = 1 (pure noise) to t = 0 gives the clean latent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]

MAX_SEED = 2**63 - 1


def timesteps(steps: int) -> Tensor:
    """The uniform grid ``linspace(1, 0, steps + 1)`` in float32 (no shift, no sigma scaling)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return torch.linspace(1, 0, steps + 1, dtype=torch.float32)


def euler_sample(
    velocity_fn: VelocityFn,
    noise: Tensor,
    steps: int,
    *,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Integrate ``dx/dt = v(x, t)`` from t = 1 to t = 0 with ``steps`` Euler steps.

    Args:
        velocity_fn: ``(x (B, ...) float32, t (B,) float32) -> v`` of x's shape (any float dtype).
        noise: starting state at t = 1, (B, ...).
        steps: number of velocity evaluations (>= 1).
        on_step: optional ``on_step(k, t_k, x_k, v_k)`` after evaluation k, with ``t_k`` (B,), the
            state ``x_k`` that was fed to ``velocity_fn`` and its velocity ``v_k``. For progress and
            debugging; it must not modify its arguments.

    Returns:
        the state at t = 0, float32, on noise's device.
    """
    grid = _to_device(timesteps(steps), noise.device)  # (steps + 1,)
    if noise.dim() < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise must have shape (B, ...) with B >= 1, got {tuple(noise.shape)}")
    batch = noise.shape[0]
    x = noise.to(torch.float32)  # accumulate in float32 even when the network runs in half precision
    for k in range(steps):
        t_k = grid[k].expand(batch)  # (B,); indexing a device tensor, no host sync
        v = velocity_fn(x, t_k)
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn must return shape {tuple(x.shape)}, got {tuple(v.shape)}")
        if on_step is not None:
            on_step(k, t_k, x, v)
        x = x + (grid[k + 1] - grid[k]) * v.to(torch.float32)
    return x


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Copy a small CPU tensor to ``device`` without blocking the host (pinned, non-blocking)."""
    if device.type == "cuda":
        # A plain copy from pageable memory synchronises the stream; pinned + non_blocking does not.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}], got {seed!r}")
    return seed


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in shape):
        raise ValueError(f"shape must be (channels, frames) with both ints >= 1, got {shape!r}")
    return shape[0], shape[1]


def per_sample_noise(
    seeds: Sequence[int],
    shape: tuple[int, int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Starting noise (B, C, T) where item i comes from its own CPU generator seeded with ``seeds[i]``.

    A job's noise therefore depends on its seed only, not on which other jobs share its batch, and
    it is the same on every device (drawn on the CPU, then moved).
    """
    if len(seeds) < 1:
        raise ValueError("seeds must hold at least one seed, got an empty sequence")
    channels, frames = _check_shape(shape)
    items = []
    for seed in seeds:
        generator = torch.Generator(device="cpu").manual_seed(_check_seed(seed))
        items.append(torch.randn((channels, frames), generator=generator, dtype=torch.float32))
    return torch.stack(items).to(device=device, dtype=dtype)  # (B, C, T)


def reference_noise(seed: int, batch: int, shape: tuple[int, int]) -> Tensor:
    """What the reference draws on CPU: ``torch.manual_seed(seed); torch.randn(batch, C, T)``.

    One generator for the whole batch, so item i depends on the batch size and position; use it to
    reproduce reference runs, and :func:`per_sample_noise` for jobs. The global RNG is not touched.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    channels, frames = _check_shape(shape)
    generator = torch.Generator(device="cpu").manual_seed(_check_seed(seed))
    return torch.randn((batch, channels, frames), generator=generator, dtype=torch.float32)
