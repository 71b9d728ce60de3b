"""Settings of the two worker pools: which model to load, resources, batching and autoscaling.

Defaults live here and nowhere else; `from_env()` reads `AUDIO_OMNI_<FIELD>` variables (e.g.
`AUDIO_OMNI_SAMPLER_MAX_REPLICAS=4`). Cross-field checks quote both numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "AUDIO_OMNI_"


@dataclass(frozen=True)
class PoolSettings:
    """Resources, batching and autoscaling of one Serve deployment."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0  # a fraction of a GPU is fine for the encoder
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 32
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 10.0
    # Window Serve averages ongoing requests over; must exceed Serve's 10 s metrics interval.
    look_back_period_s: float = 15.0
    # Scale-down waits this long for a replica's requests to finish: longer than the longest job.
    graceful_shutdown_timeout_s: float = 900.0
    health_check_period_s: float = 10.0

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus/num_gpus must be >= 0, got {self.num_cpus}/{self.num_gpus}")
        if not 1 <= self.max_batch_size <= 256:
            raise ValueError(f"max_batch_size must be in [1, 256], got {self.max_batch_size}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"batch_wait_timeout_s must be in [0, 10], got {self.batch_wait_timeout_s}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        if self.max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1, got {self.max_replicas}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}) or batches can never fill"
            )


@dataclass(frozen=True)
class WorkerSettings:
    """What both pools load and how they are deployed."""

    # the packaged small model (trained here on generated sounds; docs/model.md); "full" + weights for real use
    preset: str = "small"
    config_path: str | None = None  # a model_config.json; overrides `preset`
    # released model.ckpt / safetensors / converted folder; None = the preset's packaged weights
    # where the package ships them (model.config.PACKAGED_WEIGHTS), else random
    weights: str | None = None
    device: str = "cpu"  # "cuda" on GPU replicas
    # DiT precision: fp32 | bf16 | fp16 (autocast, the reference's style) | auto (bf16 on CUDA, else fp32).
    # The VAE decode and the mel front end always run in float32.
    precision: str = "auto"
    app_name: str = "audio-omni"
    understand_max_new_tokens: int = 512
    # The longest a job may run end to end; replicas drain longer than this before they stop.
    max_job_s: float = 600.0
    encoder: PoolSettings = PoolSettings()
    sampler: PoolSettings = PoolSettings(max_batch_size=8)
    # Pad every sampling loop to sampler.max_batch_size so a seed gives the same bytes alone or batched.
    batch_invariant: bool = True
    # Backlog-driven autoscaling: read these Redis streams' depth (None = Serve's default policy).
    backlog_redis_url: str | None = None
    backlog_prefix: str = "audio-omni:"
    backlog_jobs_per_replica: float = 4.0

    def __post_init__(self) -> None:
        if not 1 <= self.understand_max_new_tokens <= 8192:
            raise ValueError(
                f"understand_max_new_tokens must be in [1, 8192], got {self.understand_max_new_tokens}"
            )
        if self.backlog_jobs_per_replica <= 0:
            raise ValueError(f"backlog_jobs_per_replica must be > 0, got {self.backlog_jobs_per_replica}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be one of auto, fp32, bf16, fp16, got {self.precision!r}")
        if self.max_job_s <= 0:
            raise ValueError(f"max_job_s must be > 0, got {self.max_job_s}")
        for name, pool in (("encoder", self.encoder), ("sampler", self.sampler)):
            if pool.graceful_shutdown_timeout_s <= self.max_job_s:
                raise ValueError(
                    f"{name}.graceful_shutdown_timeout_s ({pool.graceful_shutdown_timeout_s}) must exceed "
                    f"max_job_s ({self.max_job_s}) so scale-down drains replicas instead of killing jobs"
                )

    @property
    def resolved_precision(self) -> str:
        if self.precision == "auto":
            return "bf16" if self.device.startswith("cuda") else "fp32"
        return self.precision

    @property
    def resolved_weights(self) -> str | None:
        """`weights`, else the preset's packaged weights (none for a config file), else None (random)."""
        if self.weights is not None or self.config_path is not None:
            return self.weights
        from model.config import packaged_weights  # deferred like load_config

        path = packaged_weights(self.preset)
        return None if path is None else str(path)

    @property
    def uses_random_weights(self) -> bool:
        return self.resolved_weights is None

    @property
    def model_version(self) -> str:
        """A label for results: the weights file's name, or `<preset>-random`."""
        weights = self.resolved_weights
        return Path(weights).name if weights else f"{self.config_path or self.preset}-random"

    def load_config(self):
        """The model config (import deferred: model/ pulls in torch)."""
        from model.config import load_config

        return load_config(self.config_path or self.preset)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Defaults, then `AUDIO_OMNI_*` variables, then `overrides` (None values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("encoder", "sampler"):
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.type, raw, ENV_PREFIX + f.name.upper())
        for pool in ("encoder", "sampler"):
            base = _POOL_DEFAULTS[pool]
            pool_values: dict[str, Any] = {}
            for f in fields(PoolSettings):
                name = f"{ENV_PREFIX}{pool.upper()}_{f.name.upper()}"
                if name in env:
                    pool_values[f.name] = _coerce(f.type, env[name], name)
            values[pool] = replace(base, **pool_values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_POOL_DEFAULTS = {"encoder": WorkerSettings.encoder, "sampler": WorkerSettings.sampler}


def _coerce(type_name: Any, raw: str, name: str) -> Any:
    text = str(type_name)
    try:
        if raw.lower() in ("", "none") and "None" in text:
            return None
        if text.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {text}") from None
