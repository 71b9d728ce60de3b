"""Sampler fast paths: fixed-shape batches, optional ``torch.compile`` of the DiT, a no-host-sync check.

Batching. The DiT's latent length is fixed by the config (every request is one model window), so
requests are compatible when they share a step count; long audio arrives as one request per segment,
each a full window, keyed by step count like any other. A batch is padded up to a *bucket* size
(1, 2, 4, 8, 16, ...) by repeating its last real row, so a compiled or graph-captured forward sees a
few fixed shapes instead of one per batch size. The DiT has no operation that mixes batch rows, so
a padded row never changes a real row's result beyond kernel-choice rounding (tested).

Attention already goes through ``F.scaled_dot_product_attention``, which picks flash / memory-
efficient kernels on CUDA. The Euler loop in ``model.sampler`` indexes its time grid on the device
and copies per-item guidance scales from pinned memory, so it makes no host sync per step;
:func:`no_host_sync` turns any sync inside a region into an error on CUDA to keep it that way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DEFAULT_MAX_BATCH = 16
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def batch_buckets(max_batch: int = DEFAULT_MAX_BATCH) -> tuple[int, ...]:
    """Bucket sizes: the powers of two below ``max_batch``, then ``max_batch`` itself."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def bucket_for(batch: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``batch`` rows."""
    for size in sorted(buckets):
        if size >= batch:
            return size
    raise ValueError(f"batch {batch} exceeds the largest bucket {max(buckets)}; allowed: 1..{max(buckets)}")


def plan_batches(keys: Sequence[Hashable], max_batch: int = DEFAULT_MAX_BATCH) -> list[list[int]]:
    """Group request indices by compatibility key (e.g. the step count), at most ``max_batch`` each.

    Groups keep arrival order inside and are ordered by their first request, so the oldest request
    is in the first batch. Returns lists of indices into ``keys``.
    """
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    batches: list[list[int]] = []
    for members in groups.values():
        batches.extend(members[i : i + max_batch] for i in range(0, len(members), max_batch))
    return sorted(batches, key=lambda batch: batch[0])


@dataclass(frozen=True)
class PaddedBatch:
    """Sampler inputs padded to a bucket; rows ``num_real:`` are copies of the last real row."""

    cross: Tensor  # (P, S, D)
    cross_mask: Tensor  # (P, S) bool
    prefix: Tensor  # (P, G, D)
    noise: Tensor  # (P, C, T)
    cfg_scale: Tensor  # (P,) on the CPU (the guidance wrapper decides on the host)
    num_real: int


def _pad_rows(tensor: Tensor, size: int) -> Tensor:
    missing = size - tensor.shape[0]
    if missing == 0:
        return tensor
    filler = tensor[-1:].expand(missing, *tensor.shape[1:])  # repeat the last real row
    return torch.cat([tensor, filler], dim=0)


def pad_batch(
    cross: Tensor,
    cross_mask: Tensor,
    prefix: Tensor,
    noise: Tensor,
    cfg_scale: Tensor,
    buckets: Sequence[int] = batch_buckets(),
) -> PaddedBatch:
    """Pad a batch of B rows up to its bucket; slice results with ``[:num_real]``."""
    batch = noise.shape[0]
    for name, tensor in (
        ("cross", cross),
        ("cross_mask", cross_mask),
        ("prefix", prefix),
        ("cfg_scale", cfg_scale),
    ):
        if tensor.shape[0] != batch:
            raise ValueError(f"{name} has {tensor.shape[0]} rows but noise has {batch}; they must match")
    if cfg_scale.device.type != "cpu":
        raise ValueError(f"cfg_scale must be a CPU tensor (read on the host), got one on {cfg_scale.device}")
    size = bucket_for(batch, buckets)
    return PaddedBatch(
        cross=_pad_rows(cross, size),
        cross_mask=_pad_rows(cross_mask, size),
        prefix=_pad_rows(prefix, size),
        noise=_pad_rows(noise, size),
        cfg_scale=_pad_rows(cfg_scale, size),
        num_real=batch,
    )


def compile_dit(dit: nn.Module, mode: str = "default") -> nn.Module:
    """Compile the DiT's block stack in place with ``torch.compile`` (static shapes); returns ``dit``.

    Only ``dit.transformer`` (the 36 blocks, where the FLOPs are) is compiled, through
    ``nn.Module.compile``, so ``state_dict`` keys do not change and the Python-side input checks
    and guidance logic stay eager. Each new (batch, lengths) shape compiles once: pad batches to
    :func:`batch_buckets` to bound that. ``reduce-overhead`` adds CUDA graphs.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; allowed: {list(COMPILE_MODES)}")
    trunk = getattr(dit, "transformer", None)
    if not isinstance(trunk, nn.Module):
        raise ValueError(f"expected a DiffusionTransformer with a `transformer` trunk, got {type(dit).__name__}")
    trunk.compile(mode=mode, dynamic=False)
    return dit


@contextlib.contextmanager
def no_host_sync(device: torch.device | str) -> Iterator[None]:
    """Make any host-device synchronisation inside the block raise (CUDA only).

    Uses ``torch.cuda.set_sync_debug_mode("error")``, which flags ``.item()``, ``.cpu()`` of device
    tensors, pageable copies and the like. On other devices there is no asynchronous queue to
    stall, so the block runs unchecked.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)
