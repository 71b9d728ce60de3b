"""Numeric precision of the sampler: which dtype the DiT runs in, and what always stays float32.

Three settings:

* ``fp32``: everything in float32 (the parity reference; TF32 matmuls are left as the process set them).
* ``bf16``: the DiT's weights are stored in bfloat16 and it runs without autocast, so no per-forward
  weight cast is paid; the Euler state is still accumulated in float32 by the sampler. This is the
  production setting on Ampere/Hopper GPUs.
* ``fp16``: the reference's style: float32 weights under ``torch.autocast(float16)``, so every
  forward casts the weights again. Kept to reproduce the reference and as the speed baseline.

Whatever the setting, the VAE decoder (its Snake activations and long transposed-conv stacks lose
audible precision in half) and the mel front end (log of small STFT magnitudes) stay float32.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class Precision(enum.StrEnum):
    """Sampler precision setting; the value is what configs and CLI flags spell."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        """``"bf16"`` (any case) or a ``Precision`` -> ``Precision``; anything else is a ``ValueError``."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise ValueError(f"unknown precision {value!r}; allowed: {[p.value for p in cls]}")


@dataclass(frozen=True)
class PrecisionPolicy:
    """What a ``Precision`` means for the modules.

    Attributes:
        dit_param_dtype: dtype the DiT's parameters are stored in.
        dit_autocast_dtype: autocast dtype around the DiT forward, or None for no autocast.
    """

    dit_param_dtype: torch.dtype
    dit_autocast_dtype: torch.dtype | None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the DiT's matmuls run in."""
        return self.dit_autocast_dtype or self.dit_param_dtype


POLICIES: dict[Precision, PrecisionPolicy] = {
    Precision.FP32: PrecisionPolicy(dit_param_dtype=torch.float32, dit_autocast_dtype=None),
    Precision.BF16: PrecisionPolicy(dit_param_dtype=torch.bfloat16, dit_autocast_dtype=None),
    Precision.FP16: PrecisionPolicy(dit_param_dtype=torch.float32, dit_autocast_dtype=torch.float16),
}

# Child modules of the sampler part that must stay float32 under every precision.
FLOAT32_PARTS: tuple[str, ...] = ("vae", "mel")


def policy(precision: str | Precision) -> PrecisionPolicy:
    """The ``PrecisionPolicy`` of a setting (validated)."""
    return POLICIES[Precision.parse(precision)]


def check_supported(precision: str | Precision, device: torch.device | str) -> Precision:
    """Raise ``ValueError`` when ``device`` cannot run ``precision``; return the parsed setting.

    bf16 on CUDA needs compute capability 8.0 or newer. CPU runs every setting (fp16 slowly: it is
    there for tests of the reference style, not for production).
    """
    p = Precision.parse(precision)
    dev = torch.device(device)
    if p is Precision.BF16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16 is not supported on {torch.cuda.get_device_name(dev)}; use fp16")
    return p


@contextlib.contextmanager
def dit_autocast(precision: str | Precision, device: torch.device | str) -> Iterator[None]:
    """Context for one DiT forward under ``precision`` (a no-op for fp32 and bf16 weights)."""
    dtype = policy(precision).dit_autocast_dtype
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def cast_dit(dit: nn.Module, precision: str | Precision) -> nn.Module:
    """Store ``dit``'s parameters in the setting's dtype, in place; returns ``dit``.

    Buffers (the rotary ``inv_freq``, LayerNorm ``beta``) are cast too; the DiT computes its
    rotary angles and Fourier features in float32 whatever its dtype.
    """
    return dit.to(dtype=policy(precision).dit_param_dtype)


class _SamplerLike(Protocol):
    # Read-only: a part holds a subclass of Module (a settable Protocol attribute would be invariant).
    # The FLOAT32_PARTS children are looked up by name.
    @property
    def dit(self) -> nn.Module: ...

    autocast_dtype: torch.dtype | None


def apply_precision(part: _SamplerLike, precision: str | Precision) -> Precision:
    """Set a ``model.parts.SamplerPart`` to ``precision`` in place.

    Casts the DiT's weights, sets the part's DiT autocast dtype and puts the VAE and the mel front
    end back in float32 (they must never run in half). The small conditioners are left as they are:
    their cost is negligible and their outputs are cast to the DiT's dtype at its input.
    """
    p = Precision.parse(precision)
    pol = POLICIES[p]
    cast_dit(part.dit, p)
    part.autocast_dtype = pol.dit_autocast_dtype
    for name in FLOAT32_PARTS:
        getattr(part, name).to(dtype=torch.float32)
    return p


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 for a module without any)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32
