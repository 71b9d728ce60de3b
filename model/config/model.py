"""`AudioOmniConfig`: the whole model, its cross-section rules and derived sizes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import schema
from model.config.checks import positive
from model.config.codec import MelCodecConfig, VAEConfig
from model.config.conditioners import CONDITIONER_TYPES, MelConfig, SpeechConfig, SyncConfig
from model.config.dit import COND_DIM, DiTConfig
from model.config.mllm import MLLMConfig
from model.config.sync_extractor import SYNC_WINDOW_S, SyncExtractorConfig, sync_frame_count


@dataclass(frozen=True)
class AudioOmniConfig:
    """The whole model. `sample_size` is the requested length in samples; the network produces
    `output_samples = (sample_size // downsampling_ratio) * downsampling_ratio`.

    Every config the released schema allows is accepted here (so `audio-omni verify` can load any
    vector set); `require_job_support` says whether the job pipeline can run it.
    """

    sample_size: int
    sample_rate: int
    video_fps: int
    cond_dim: int
    high_level_cond_ids: tuple[str, ...]
    low_level_cond_ids: tuple[str, ...]
    vae: VAEConfig | MelCodecConfig
    mllm: MLLMConfig
    sync: SyncConfig
    speech: SpeechConfig
    mel: MelConfig
    dit: DiTConfig
    # The Synchformer visual extractor (its own weights file; released layout by default).
    sync_extractor: SyncExtractorConfig = field(default_factory=SyncExtractorConfig)

    def __post_init__(self) -> None:
        positive("sample_size", self.sample_size)
        positive("sample_rate", self.sample_rate)
        positive("video_fps", self.video_fps)
        if self.cond_dim != COND_DIM:
            raise ValueError(f"cond_dim = {self.cond_dim} is not supported; the released width is {COND_DIM}")
        if self.latent_length < 1:
            raise ValueError(
                f"sample_size = {self.sample_size} is shorter than one latent frame "
                f"(downsampling_ratio {self.vae.downsampling_ratio})"
            )
        if self.dit.io_channels != self.vae.latent_dim:
            raise ValueError(
                f"dit.io_channels = {self.dit.io_channels} must equal vae.latent_dim = {self.vae.latent_dim}"
            )
        for name in ("cond_token_dim", "global_cond_dim"):
            if getattr(self.dit, name) != self.cond_dim:
                raise ValueError(f"dit.{name} = {getattr(self.dit, name)} must equal cond_dim = {self.cond_dim}")
        if self.sync_extractor.embed_dim != self.cond_dim:
            raise ValueError(
                f"sync extractor embed_dim = {self.sync_extractor.embed_dim} must equal cond_dim = {self.cond_dim} "
                "(the sync conditioner's input width)"
            )
        ids = [*self.high_level_cond_ids, *self.low_level_cond_ids]
        for cid in ids:
            if cid not in CONDITIONER_TYPES:
                raise ValueError(f"unknown conditioner id {cid!r}; known ids: {sorted(CONDITIONER_TYPES)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"conditioner ids may appear once across high and low level, got {ids}")

    def require_job_support(self) -> None:
        """Raise `ValueError` when the job pipeline cannot run this config (the schema allows it).

        Jobs hand the mel conditioner reference audio at the model's `sample_rate` (an edit's
        source, a TTS voice prompt, the previous long-form segment), so its rate must be the same.
        """
        if self.mel.sample_rate != self.sample_rate:
            raise ValueError(
                f"the mel conditioner's target_sample_rate = {self.mel.sample_rate} differs from the model's "
                f"sample_rate = {self.sample_rate}: jobs feed it reference audio at the model's rate, so this "
                "config can be inspected and verified but not used for jobs"
            )
        tokens = self.sync_window_tokens
        if tokens != self.sync.seq_in:
            raise ValueError(
                f"the sync extractor gives {tokens} tokens for a {SYNC_WINDOW_S:g} s window but the sync conditioner's "
                f"sync_seq_dim is {self.sync.seq_in}: video jobs could not condition on it, so this config can be "
                "inspected and verified but not used for jobs"
            )

    # ----------------------------------------------------------------- derived

    @property
    def latent_length(self) -> int:
        """Latent frames the DiT works on (floor of sample_size / downsampling_ratio)."""
        return self.sample_size // self.vae.downsampling_ratio

    @property
    def output_samples(self) -> int:
        """Samples per channel of one decoded generation."""
        return self.latent_length * self.vae.downsampling_ratio

    @property
    def output_band_hz(self) -> float | None:
        """Highest frequency the decoder can produce, where it is below Nyquist (the mel codec)."""
        return self.vae.f_max if isinstance(self.vae, MelCodecConfig) else None

    @property
    def sync_window_tokens(self) -> int:
        """Sync feature tokens the extractor gives for one generation's video window (240 released)."""
        return self.sync_extractor.token_count(sync_frame_count(SYNC_WINDOW_S))

    @property
    def window_s(self) -> float:
        """Duration of one generated clip in seconds (10.96 s for the released model)."""
        return self.output_samples / self.sample_rate

    # ----------------------------------------------------------------- I/O

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> AudioOmniConfig:
        """Read a released-schema JSON file; relative paths inside resolve against its folder."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {p} is not valid JSON: {exc}") from exc
        return cls.from_dict(d, base_dir=p.resolve().parent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> AudioOmniConfig:
        """Parse the released schema (see `Audio-Omni.json`). `base_dir` anchors relative paths."""
        return cls(**schema.parse(d, Path(base_dir) if base_dir is not None else None))

    def to_dict(self, relative_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The released schema. Paths under `relative_to` are written relative to it; the packaged
        vocabulary is written as the released cwd-relative path."""
        return schema.write(self, relative_to)
