"""The DiT sampler pool: DiT, conditioners and VAE as a Ray Serve deployment.

`generate(GenerationRequest, keep_samples) -> Tensor (C, N)` takes one segment per call; `@serve.batch`
gathers requests from different jobs, and the replica samples each group of compatible requests
(same step count; the latent length is fixed by the config) in one loop, classifier-free guidance
included in the same forward pass (`model.parts.SamplerPart.generate`). Each item keeps its own
seed, so its audio does not depend on its batch-mates. Each caller gets back its own clip only, cut
to the `keep_samples` it asked for (`workers.batching.own_result`): the model always renders a
whole window (about 10 s), and a short job or the last segment of a long one uses only its start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from ray import serve

from workers.batching import configure_batching, own_result
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import torch

    from model.requests import GenerationRequest


class SamplerDeployment:
    """Holds one `SamplerPart`; weights load once, in the constructor."""

    def __init__(self, settings: WorkerSettings) -> None:
        import torch

        from model.build import build_sampler
        from model.precision import apply_precision

        self.settings = settings
        self.config = settings.load_config()
        torch.set_num_threads(max(1, int(settings.sampler.num_cpus) or 1))
        started = time.monotonic()
        self.sampler = build_sampler(self.config, weights=settings.resolved_weights, device=settings.device)
        self.precision = apply_precision(self.sampler, settings.resolved_precision)
        self.load_s = time.monotonic() - started
        self.batch_sizes: Counter[int] = Counter()
        configure_batching(settings.sampler, self.generate)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(
        self, requests: list[GenerationRequest], keep_samples: list[int | None] | None = None
    ) -> list[torch.Tensor]:
        """(C, N) float32 audio per request; compatible requests share one sampling loop.

        `keep_samples[i]`: how many samples of its clip caller i uses (None: all of them); every
        caller of one batch passes it or none does (`ServePools.generate` always does)."""
        keeps = list(keep_samples) if keep_samples is not None else [None] * len(requests)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[request.batch_key].append(i)
        out: dict[int, torch.Tensor] = {}
        for idx in groups.values():
            self.batch_sizes[len(idx)] += 1
            group = [requests[i] for i in idx]
            # Kernels round differently for different batch sizes (~1e-7, enough to flip a PCM LSB);
            # padding every loop to one fixed size makes an item's bytes independent of how many jobs
            # it was batched with (`SamplerPart.generate(pad_to=...)`: padding rows are not decoded).
            pad_to = self.settings.sampler.max_batch_size if self.settings.batch_invariant else None
            # In a thread, so the replica keeps gathering the next batch meanwhile.
            audio = await asyncio.to_thread(self.sampler.generate, group, pad_to=pad_to)  # (len(idx), C, N)
            for i, clip in zip(idx, audio, strict=True):
                out[i] = own_result(clip, keeps[i])  # not a view of the whole batch's audio
        return [out[i] for i in range(len(requests))]

    def stats(self) -> dict[str, object]:
        """This replica's id, batch-size histogram (sampling loops by size), load time, precision and,
        on CUDA, its GPU figures (`gpu_stats`); the engine exports them (orchestrator.metrics)."""
        return {
            "replica_id": _replica_id(),
            "batch_sizes": dict(self.batch_sizes),
            "load_s": self.load_s,
            "precision": str(self.precision),
            "gpu": gpu_stats(self.settings.device),
        }

    def check_health(self) -> None:
        if self.sampler is None:
            raise RuntimeError("sampler model is not loaded")


def _replica_id() -> str | None:
    """Serve's id of the replica this runs in (None outside a replica)."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a Serve replica (tests call the class directly)
        return None


def gpu_stats(device: str) -> dict[str, float] | None:
    """Memory of the replica's CUDA device as torch's allocator sees it, and its utilisation when
    `pynvml` is installed (not a dependency); None on CPU."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    stats: dict[str, float] = {
        "memory_allocated_bytes": float(torch.cuda.memory_allocated(index)),
        "memory_reserved_bytes": float(torch.cuda.memory_reserved(index)),
        "memory_total_bytes": float(torch.cuda.get_device_properties(index).total_memory),
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        # NVML counts physical devices; CUDA (under Ray) only the visible ones.
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        physical = visible[index] if index < len(visible) else str(index)
        handle = (
            pynvml.nvmlDeviceGetHandleByIndex(int(physical))
            if physical.isdigit()
            else pynvml.nvmlDeviceGetHandleByUUID(physical)
        )
        stats["utilization_ratio"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
    except Exception:  # pynvml missing, or no NVML: memory figures only
        pass
    return stats
