"""The encoder pool: the frozen thinker and the Synchformer visual extractor as a Ray Serve deployment.

Three batched entry points, each fed one item per call so that Serve's `@serve.batch` can gather
items from different jobs into one forward pass:

* `encode(MLLMPrompt) -> Tensor (L, D)`: penultimate-layer hidden states that condition the DiT;
* `understand(UnderstandRequest) -> str`: a text answer (understanding jobs, transcription);
* `sync_features(Tensor (T, 3, 224, 224) uint8) -> Tensor (tokens, D)`: a video window's sync
  features; the segments of every clip in a batch go through the extractor together.

Only the thinker and the extractor are loaded here (`model.build.build_encoder`,
`build_sync_extractor`); the DiT lives in the sampler pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ray import serve

from workers.batching import configure_batching, own_result
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import torch

    from model.mllm import MLLMPrompt, UnderstandRequest
    from model.sync import SyncExtractor

P = ParamSpec("P")
R = TypeVar("R")

NO_SYNC_WEIGHTS = (
    "this deployment has no Synchformer weights, so it cannot compute sync features from video: convert "
    "synchformer_state_dict.pth with `audio-omni convert-checkpoint ... --synchformer PATH` into the weights "
    "folder, or set AUDIO_OMNI_SYNC_WEIGHTS"
)


class EncoderDeployment:
    """Holds one `MLLMEncoder` and the sync extractor; weights load once, in the constructor (Serve's
    lifecycle hook)."""

    def __init__(self, settings: WorkerSettings) -> None:
        import torch

        from model.build import build_encoder, build_sync_extractor

        self.settings = settings
        self.config = settings.load_config()
        torch.set_num_threads(max(1, int(settings.encoder.num_cpus) or 1))
        started = time.monotonic()
        self.encoder = build_encoder(self.config, weights=settings.resolved_weights, device=settings.device)
        self.sync_extractor = build_sync_extractor(
            self.config, weights=settings.resolved_sync_weights, device=settings.device
        )
        self.load_s = time.monotonic() - started
        self.batch_sizes: Counter[int] = Counter()
        self.sync_batch_sizes: Counter[int] = Counter()
        # The thinker keeps per-call state on the module (rope deltas, caches): one call at a time.
        self._model_lock = threading.Lock()
        # Batching knobs come from settings, not from the decorator's defaults.
        configure_batching(settings.encoder, self.encode, self.understand, self.sync_features)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def encode(self, prompts: list[MLLMPrompt]) -> list[torch.Tensor]:
        """Hidden states (L_i, D) in bfloat16, one per prompt, computed in one thinker pass."""
        self.batch_sizes[len(prompts)] += 1
        # In a thread, so the replica keeps gathering the next batch meanwhile.
        hidden = await asyncio.to_thread(self._locked, self.encoder.encode, prompts)
        return [own_result(h) for h in hidden]  # each caller's rows only, not the batch's storage

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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def sync_features(self, clips: list[torch.Tensor]) -> list[torch.Tensor | ValueError]:
        """(tokens, D) float32 features per clip, all clips' segments in shared extractor passes.

        A clip the extractor refuses (wrong dtype or shape, too few frames) gets its `ValueError` as
        its result, which `ServePools.sync_features` raises to that caller alone: one job's bad
        input does not fail its batch-mates.
        """
        self.sync_batch_sizes[len(clips)] += 1
        errors: list[ValueError | None] = []
        valid: list[torch.Tensor] = []
        for clip in clips:
            try:
                self._require_sync_extractor().check_frames(clip)
            except ValueError as exc:
                errors.append(exc)
                continue
            errors.append(None)
            valid.append(clip)
        computed = iter(await asyncio.to_thread(self._sync_features, valid) if valid else [])
        return [error if error is not None else next(computed) for error in errors]

    def _sync_features(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        from model.sync import SEGMENTS_PER_PASS

        extractor = self._require_sync_extractor()
        return [own_result(f) for f in extractor.clip_features(clips, max_segments_per_pass=SEGMENTS_PER_PASS)]

    def _require_sync_extractor(self) -> SyncExtractor:
        if self.sync_extractor is None:
            raise ValueError(NO_SYNC_WEIGHTS)
        return self.sync_extractor

    def _locked(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a model call under the model lock (encode and understand batches share the thinker)."""
        with self._model_lock:
            return fn(*args, **kwargs)

    def stats(self) -> dict[str, object]:
        """Batch-size histograms of this replica (thinker batches; sync-feature batches) and its load time."""
        return {
            "batch_sizes": dict(self.batch_sizes),
            "sync_batch_sizes": dict(self.sync_batch_sizes),
            "load_s": self.load_s,
        }

    def check_health(self) -> None:
        """Serve calls this periodically; a replica whose model is gone is restarted."""
        if self.encoder is None:
            raise RuntimeError("encoder model is not loaded")
