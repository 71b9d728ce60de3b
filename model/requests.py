"""Plain request types that cross the worker boundary: tensors and numbers, never job objects."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerationRequest:
    """One clip for the sampler part (DiT + its conditioners + VAE).

    Requests with the same `steps` can share one sampling loop; each keeps its own seed and
    guidance scale, so its result does not depend on its batch-mates.
    """

    mllm_features: torch.Tensor  # (L, D) thinker hidden states from the encoder, L <= pad_length
    seed: int
    steps: int = 100
    cfg_scale: float = 7.0
    transcript: str | None = None  # text for the speech conditioner (TTS / voice conversion)
    audio_window: torch.Tensor | None = None  # (window_samples,) mono at the model rate; None = silence
    sync_features: torch.Tensor | None = None  # (240, 768) Synchformer features of this clip's span; None = no video

    @property
    def batch_key(self) -> int:
        """Requests with equal keys may be sampled together."""
        return self.steps
