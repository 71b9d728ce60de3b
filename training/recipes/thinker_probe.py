"""A training-only probe on the thinker's audio tower (`training.recipes.thinker`).

The answer loss reaches the audio tower only through attention of the text layers over a scene's
~250 audio tokens, most of them background, and on its own it taught the tower nothing about the
event (held-out class accuracy stayed at chance). The probe gives the tower a direct signal: two
learned attention pools over each scene's tower outputs, then a linear read-out of the event class
(or "no event") and of the background kind. It trains alone first (`probe_steps`), so the tower
already tells the classes apart when the text layers start to read it, and then keeps training
beside the answer loss (`probe_weight`). The probe's own tensors are never exported: the shipped
thinker is the transformers class and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.recipes.small import CLASSES
from training.recipes.thinker_data import BACKGROUND_PHRASE, Scene

BACKGROUNDS = tuple(BACKGROUND_PHRASE)
NO_EVENT = len(CLASSES)  # the class index of a background-only scene


class EventProbe(nn.Module):
    """Per scene: `pools` attention pools over its audio-tower tokens -> class and background logits."""

    def __init__(self, dim: int, pools: int = 2) -> None:
        super().__init__()
        self.score = nn.Linear(dim, pools)
        self.event = nn.Linear(pools * dim, len(CLASSES) + 1)
        self.background = nn.Linear(pools * dim, len(BACKGROUNDS))

    def forward(self, tokens: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`tokens` (sum(lengths), dim): the tower's output, scenes one after the other."""
        pooled = []
        for x in tokens.split(list(lengths)):
            weights = self.score(x).softmax(dim=0)  # (T, pools)
            pooled.append((weights.T @ x).reshape(-1))
        z = torch.stack(pooled)
        return self.event(z), self.background(z)


def probe_targets(scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class indices (`NO_EVENT` for a background-only scene) and background indices."""
    event = [CLASSES.index(s.label) if s.label is not None else NO_EVENT for s in scenes]
    background = [BACKGROUNDS.index(s.background) for s in scenes]
    return torch.tensor(event), torch.tensor(background)


def tower_lengths(thinker: Any, feature_attention_mask: torch.Tensor) -> list[int]:
    """Audio tokens per scene, as the tower emits them."""
    _, out = thinker.audio_tower._get_feat_extract_output_lengths(feature_attention_mask.sum(dim=1))
    return [int(n) for n in out.tolist()]


def tower_tokens(thinker: Any, audio: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tower's token outputs for `audio` (input_features, feature_attention_mask), through the
    same call the thinker's forward makes."""
    out = thinker.get_audio_features(audio["input_features"], feature_attention_mask=audio["feature_attention_mask"])
    tokens: torch.Tensor = out.last_hidden_state
    return tokens


class TowerTap:
    """Keeps the tower's output of the thinker's forward, so the probe reads the tokens the text
    layers saw without running the tower twice (`with TowerTap(thinker) as tap: ...; tap.tokens`)."""

    def __init__(self, thinker: Any) -> None:
        self.thinker = thinker
        self.tokens: torch.Tensor | None = None
        self._handle: Any = None

    def _hook(self, _module: Any, _args: Any, output: Any) -> None:
        self.tokens = output.last_hidden_state

    def __enter__(self) -> TowerTap:
        self._handle = self.thinker.audio_tower.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def probe_loss(
    probe: EventProbe,
    tokens: torch.Tensor,
    lengths: Sequence[int],
    targets: tuple[torch.Tensor, torch.Tensor],
    rows: Sequence[int],
) -> torch.Tensor:
    """Cross-entropy of the event class plus half that of the background, for scenes `rows`."""
    event, background = probe(tokens, lengths)
    index = torch.as_tensor(list(rows))
    return F.cross_entropy(event, targets[0][index]) + 0.5 * F.cross_entropy(background, targets[1][index])


@torch.no_grad()
def probe_accuracy(
    thinker: Any,
    probe: EventProbe,
    data: dict[str, np.ndarray],
    scenes: Sequence[Scene],
    audio_inputs: Any,
    batch: int = 16,
) -> dict[str, float]:
    """Held-out accuracy of the probe: the event class over scenes with one, "no event" or a class
    over all scenes, and the background. `audio_inputs(data, rows)` builds the tower's inputs."""
    events, backgrounds = [], []
    for start in range(0, len(scenes), batch):
        rows = list(range(start, min(start + batch, len(scenes))))
        audio = audio_inputs(data, rows)
        event, background = probe(tower_tokens(thinker, audio), tower_lengths(thinker, audio["feature_attention_mask"]))
        events.append(event.argmax(dim=1))
        backgrounds.append(background.argmax(dim=1))
    event_pred, background_pred = torch.cat(events), torch.cat(backgrounds)
    event_true, background_true = probe_targets(scenes)
    has_event = event_true != NO_EVENT
    return {
        "event_class": round(float((event_pred[has_event] == event_true[has_event]).float().mean()), 3),
        "class_or_none": round(float((event_pred == event_true).float().mean()), 3),
        "background": round(float((background_pred == background_true).float().mean()), 3),
    }
