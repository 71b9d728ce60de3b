"""Filters that reject unusable foreground events before a pair is built.

* `EnergyFilter` (always on): an event whose loudest 2048-sample frame is below `min_dbfs` is silent
  and dropped.
* `VoiceActivityFilter` (for speech classes only): silero-vad, whose model ships in its wheel, finds
  the speech in an event; one with less than `min_speech_ratio` of its length in speech is dropped.
  It scores *speech*, so it runs only on the classes named as speech (`SynthSettings.speech_labels`):
  on tones, noise, clicks or effects it would reject every event.
* `SemanticFilter` (pluggable): scores an event against its label; `ClapFilter` does it with a local
  CLAP checkpoint (transformers `ClapModel`). Without weights the filter is skipped and the reason is
  logged once; `make_semantic_filter(None)` returns None.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FRAME = 2048
_skip_logged = False  # the skip reason is logged once per process, not once per shard


def peak_frame_dbfs(x: np.ndarray) -> float:
    """dBFS of the loudest non-overlapping 2048-sample frame's RMS (a partial last frame counts)."""
    if x.size == 0:
        return float("-inf")
    pad = (-x.size) % FRAME
    frames = np.pad(x.astype(np.float64), (0, pad)).reshape(-1, FRAME)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(20 * np.log10(max(rms.max(), 1e-12)))


@dataclass(frozen=True)
class EnergyFilter:
    """Keep events whose loudest frame reaches `min_dbfs`."""

    min_dbfs: float = -45.0

    def __post_init__(self) -> None:
        if not -120.0 <= self.min_dbfs <= 0.0:
            raise ValueError(f"min_dbfs must be in [-120, 0], got {self.min_dbfs}")

    def keep(self, event: np.ndarray) -> bool:
        return peak_frame_dbfs(event) >= self.min_dbfs


class VoiceActivityFilter:
    """Keep speech events in which silero-vad finds at least `min_speech_ratio` of speech.

    The model (silero-vad's TorchScript file, from the installed package) loads on first use and is
    shared by every filter in the process; it is stateful, so call it from one thread at a time (a
    Ray Data actor builds its shards one after another).
    """

    name = "voice activity"
    VAD_RATE = 16000

    def __init__(self, min_speech_ratio: float = 0.2) -> None:
        if not 0.0 < min_speech_ratio <= 1.0:
            raise ValueError(f"min_speech_ratio must be in (0, 1], got {min_speech_ratio}")
        self.min_speech_ratio = min_speech_ratio

    def speech_ratio(self, event: np.ndarray, sample_rate: int) -> float:
        """The share of the event's length that silero-vad marks as speech (0 for an empty event)."""
        import soxr
        import torch
        from silero_vad import get_speech_timestamps

        if event.size == 0:
            return 0.0
        audio = soxr.resample(event.astype(np.float32), sample_rate, self.VAD_RATE)
        with torch.no_grad():
            spans = get_speech_timestamps(torch.from_numpy(audio), _vad_model(), sampling_rate=self.VAD_RATE)
        return sum(s["end"] - s["start"] for s in spans) / audio.size

    def keep(self, event: np.ndarray, sample_rate: int) -> tuple[bool, float]:
        """(kept, speech ratio)."""
        ratio = self.speech_ratio(event, sample_rate)
        return ratio >= self.min_speech_ratio, ratio


@functools.cache
def _vad_model() -> torch.jit.ScriptModule:
    """silero-vad's TorchScript model (loaded once per process, from its wheel)."""
    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # silero-vad ships TorchScript; torch flags jit.load as deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
        return load_silero_vad()


class SemanticFilter(Protocol):
    """Scores how well an event matches its text label; events under `min_score` are dropped."""

    name: str
    min_score: float

    def score(self, event: np.ndarray, sample_rate: int, label: str) -> float: ...


class ClapFilter:
    """CLAP audio-text similarity from a local checkpoint folder (never downloads)."""

    name = "clap"

    def __init__(self, weights_dir: str, *, min_score: float = 0.1) -> None:
        from transformers import ClapModel, ClapProcessor

        if not -1.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be a cosine similarity in [-1, 1], got {min_score}")
        self.min_score = min_score
        self.model = ClapModel.from_pretrained(weights_dir, local_files_only=True).eval()
        self.processor = ClapProcessor.from_pretrained(weights_dir, local_files_only=True)
        # ProcessorMixin sets its parts (feature_extractor, tokenizer) at run time
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)  # type: ignore[attr-defined]

    def score(self, event: np.ndarray, sample_rate: int, label: str) -> float:
        import soxr
        import torch

        audio = soxr.resample(event.astype(np.float32), sample_rate, self.sample_rate)
        inputs = self.processor(
            text=[label], audios=[audio], sampling_rate=self.sample_rate, return_tensors="pt", padding=True
        )
        with torch.no_grad():
            out = self.model(**inputs)
        a = torch.nn.functional.normalize(out.audio_embeds, dim=-1)
        t = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return float((a * t).sum())


def make_semantic_filter(weights_dir: str | None, *, min_score: float = 0.1) -> SemanticFilter | None:
    """A CLAP filter when `weights_dir` is given; otherwise None, with the reason logged."""
    if not weights_dir:
        global _skip_logged
        if _skip_logged:
            return None
        _skip_logged = True
        log.warning("semantic (CLAP) filter skipped: no CLAP weights given (--clap-weights DIR)")
        return None
    return ClapFilter(weights_dir, min_score=min_score)
