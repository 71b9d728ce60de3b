"""A pool's batching settings applied to its `@serve.batch` methods.

Serve's `batch` decorator adds `set_max_batch_size` / `set_batch_wait_timeout_s` to the method it
wraps, but its type hints return a plain callable; `BatchedMethod` names what is really there.
"""

from __future__ import annotations

from typing import Protocol, cast

from workers.settings import PoolSettings


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
