"""The MLLM encoder pool: the frozen thinker as a Ray Serve deployment.

Two batched entry points, both fed one item per call so that Serve's `@serve.batch` can gather
items from different jobs into one forward pass:

* `encode(MLLMPrompt) -> Tensor (L, D)`: penultimate-layer hidden states that condition the DiT;
* `understand(UnderstandRequest) -> str`: a text answer (understanding jobs, transcription).

Only the thinker is loaded here (`model.build.build_encoder`); the DiT lives in the sampler pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ray import serve

from workers.batching import configure_batching
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import torch

    from model.mllm import MLLMPrompt, UnderstandRequest

P = ParamSpec("P")
R = TypeVar("R")


class EncoderDeployment:
    """Holds one `MLLMEncoder`; weights load once, in the constructor (Serve's lifecycle hook)."""

    def __init__(self, settings: WorkerSettings) -> None:
        import torch

        from model.build import build_encoder

        self.settings = settings
        self.config = settings.load_config()
        torch.set_num_threads(max(1, int(settings.encoder.num_cpus) or 1))
        started = time.monotonic()
        self.encoder = build_encoder(self.config, weights=settings.resolved_weights, device=settings.device)
        self.load_s = time.monotonic() - started
        self.batch_sizes: Counter[int] = Counter()
        # The thinker keeps per-call state on the module (rope deltas, caches): one call at a time.
        self._model_lock = threading.Lock()
        # Batching knobs come from settings, not from the decorator's defaults.
        configure_batching(settings.encoder, self.encode, self.understand)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def encode(self, prompts: list[MLLMPrompt]) -> list[torch.Tensor]:
        """Hidden states (L_i, D) in bfloat16, one per prompt, computed in one thinker pass."""
        self.batch_sizes[len(prompts)] += 1
        # In a thread, so the replica keeps gathering the next batch meanwhile.
        hidden = await asyncio.to_thread(self._locked, self.encoder.encode, prompts)
        return [h.cpu() for h in hidden]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def understand(self, requests: list[UnderstandRequest]) -> list[str]:
        """One text answer per request, generated in one batch."""
        self.batch_sizes[len(requests)] += 1
        return await asyncio.to_thread(
            self._locked,
            self.encoder.understand,
            requests,
            max_new_tokens=self.settings.understand_max_new_tokens,
        )

    def _locked(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a model call under the model lock (encode and understand batches share the thinker)."""
        with self._model_lock:
            return fn(*args, **kwargs)

    def stats(self) -> dict[str, object]:
        """Batch-size histogram of this replica and its load time."""
        return {"batch_sizes": dict(self.batch_sizes), "load_s": self.load_s}

    def check_health(self) -> None:
        """Serve calls this periodically; a replica whose model is gone is restarted."""
        if self.encoder is None:
            raise RuntimeError("encoder model is not loaded")
