"""A pool's batching settings applied to its `@serve.batch` methods, and one batch's results handed
back one per caller (`own_result`).

Serve's `batch` decorator adds `set_max_batch_size` / `set_batch_wait_timeout_s` to the method it
wraps, but its type hints return a plain callable; `BatchedMethod` names what is really there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from workers.settings import PoolSettings

if TYPE_CHECKING:
    import torch


class BatchedMethod(Protocol):
    """A bound method decorated with `ray.serve.batch`, as seen by its owner."""

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


def configure_batching(pool: PoolSettings, *methods: object) -> None:
    """Give each `@serve.batch` method the pool's batch size and wait, not the decorator's defaults."""
    for method in methods:
        if not callable(getattr(method, "set_max_batch_size", None)):
            raise TypeError(f"{getattr(method, '__name__', 'method')} is not decorated with serve.batch")
        batched = cast(BatchedMethod, method)
        batched.set_max_batch_size(pool.max_batch_size)
        batched.set_batch_wait_timeout_s(pool.batch_wait_timeout_s)


def own_result(tensor: torch.Tensor, keep_samples: int | None = None) -> torch.Tensor:
    """One caller's result of a batch, on the CPU, holding only its own bytes.

    A row of a batch's output (`audio[i]`, `hidden[i]`) is a view of the whole batch's storage, and
    torch serialises a view with its entire storage: handed back as it is, each caller's result
    would carry every batch-mate's data too (four 10 s clips for one). Across nodes every one of
    those bytes crosses from the replica's object store to the caller's. `keep_samples` (when not
    None) cuts the last axis to the samples the caller will use (`tensor[..., :keep_samples]`).
    """
    if keep_samples is not None:
        if keep_samples < 1:
            raise ValueError(f"keep_samples must be >= 1 or None, got {keep_samples}")
        tensor = tensor[..., :keep_samples]
    return tensor.detach().to("cpu", copy=True).contiguous()
