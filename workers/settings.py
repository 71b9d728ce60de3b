"""Settings of the two worker pools: which model to load, resources, batching and autoscaling.

The same pydantic-settings system as the orchestrator's `Settings`: defaults live here and nowhere
else, each field reads `AUDIO_OMNI_<FIELD>` (e.g. `AUDIO_OMNI_PRESET=full`) and each pool's fields
`AUDIO_OMNI_ENCODER_<FIELD>` / `AUDIO_OMNI_SAMPLER_<FIELD>` (e.g. `AUDIO_OMNI_SAMPLER_MAX_REPLICAS=4`);
`none` unsets an optional field and an empty value counts as unset. Cross-field checks quote both numbers::

    settings = WorkerSettings.from_env()                     # defaults, then the process environment
    settings = WorkerSettings.from_env(env, preset="tiny")   # only `env`, then overrides (flags)
    settings = WorkerSettings(preset="tiny", sampler=PoolSettings(max_batch_size=4))

The object is frozen and picklable: Ray ships it to every replica as it is (no environment is read
there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

if TYPE_CHECKING:
    from model.config import AudioOmniConfig

__all__ = ["DEFAULT_PRESET", "ENV_PREFIX", "MAX_JOB_S", "PoolSettings", "Precision", "WorkerSettings", "backlog_key"]

ENV_PREFIX = "AUDIO_OMNI_"
# The model every command runs unless told otherwise: the packaged small model (docs/model.md).
DEFAULT_PRESET = "small"
# The longest a job may run end to end (WorkerSettings.max_job_s's default; pool calls wait this long).
MAX_JOB_S = 600.0

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def backlog_key(prefix: str) -> str:
    """The Redis hash the engines write pending work per pool into (read by `BacklogPolicy`).

    Spelled here because the Serve pods build it without the orchestrator; `orchestrator.keys`
    lists it with the other keys as `RedisKeys.autoscale_backlog`.
    """
    return f"{prefix}autoscale:backlog"


class PoolSettings(BaseModel):
    """Resources, batching and autoscaling of one Serve deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    num_cpus: float = 0.5
    num_gpus: float = 0.0  # a fraction of a GPU is fine for the encoder
    # Custom Ray resources each replica needs, e.g. {"gpu_node": 0.01} to place the pool on such nodes.
    resources: dict[str, float] = Field(default_factory=dict)
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

    @model_validator(mode="after")
    def _check(self) -> PoolSettings:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus/num_gpus must be >= 0, got {self.num_cpus}/{self.num_gpus}")
        if any(not amount >= 0 for amount in self.resources.values()):
            raise ValueError(f"resources must be >= 0 each, got {self.resources}")
        if not 1 <= self.max_batch_size <= 256:
            raise ValueError(f"max_batch_size must be in [1, 256], got {self.max_batch_size}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"batch_wait_timeout_s must be in [0, 10], got {self.batch_wait_timeout_s}")
        if self.max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1, got {self.max_replicas}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie in [min_replicas, max_replicas] = "
                f"[{self.min_replicas}, {self.max_replicas}]"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}) or batches can never fill"
            )
        return self

    def replace(self, **changes: Any) -> PoolSettings:
        """A copy with `changes` applied, checked like a new object (`model_copy` does not check)."""
        return PoolSettings.model_validate({**dict(self), **changes})


class WorkerSettings(BaseSettings):
    """What both pools load and how they are deployed."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        case_sensitive=False,
        env_prefix=ENV_PREFIX,
        # AUDIO_OMNI_ENCODER_MAX_BATCH_SIZE -> encoder.max_batch_size: split once after the pool name.
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_parse_none_str="none",
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    # the packaged small model (trained here on generated sounds; docs/model.md); "full" + weights for real use
    preset: str = DEFAULT_PRESET
    config_path: str | None = None  # a model_config.json; overrides `preset`
    # released model.ckpt / safetensors / converted folder; None = the preset's packaged weights
    # where the package ships them (model.config.PACKAGED_WEIGHTS), else random
    weights: str | None = None
    # Synchformer weights for the encoder pool's sync extractor: synchformer_state_dict.pth, a safetensors
    # file or a converted folder; None = the `sync.safetensors` of `weights` (convert-checkpoint --synchformer)
    sync_weights: str | None = None
    device: str = "cpu"  # "cuda" on GPU replicas
    # DiT precision: fp32 | bf16 | fp16 (autocast, the reference's style) | auto (bf16 on CUDA, else fp32).
    # The VAE decode and the mel front end always run in float32.
    precision: Precision = "auto"
    app_name: str = Field("audio-omni", min_length=1)
    understand_max_new_tokens: int = 512
    # The longest a job may run end to end; replicas drain longer than this before they stop.
    max_job_s: float = MAX_JOB_S
    encoder: PoolSettings = PoolSettings()
    sampler: PoolSettings = PoolSettings()
    # Pad every sampling loop to sampler.max_batch_size so a seed gives the same bytes alone or batched.
    batch_invariant: bool = True
    # Backlog-driven autoscaling: read these Redis streams' depth (None = Serve's default policy).
    backlog_redis_url: str | None = None
    backlog_prefix: str = "audio-omni:"
    backlog_jobs_per_replica: float = 4.0

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if not 1 <= self.understand_max_new_tokens <= 8192:
            raise ValueError(f"understand_max_new_tokens must be in [1, 8192], got {self.understand_max_new_tokens}")
        if self.backlog_jobs_per_replica <= 0:
            raise ValueError(f"backlog_jobs_per_replica must be > 0, got {self.backlog_jobs_per_replica}")
        if self.max_job_s <= 0:
            raise ValueError(f"max_job_s must be > 0, got {self.max_job_s}")
        for name, pool in (("encoder", self.encoder), ("sampler", self.sampler)):
            if pool.graceful_shutdown_timeout_s <= self.max_job_s:
                raise ValueError(
                    f"{name}.graceful_shutdown_timeout_s ({pool.graceful_shutdown_timeout_s}) must exceed "
                    f"max_job_s ({self.max_job_s}) so scale-down drains replicas instead of killing jobs"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment; no .env or secrets files (pods get a ConfigMap)."""
        return (init_settings, env_settings)

    # ----------------------------------------------------------------------- constructors / views

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Defaults, then `AUDIO_OMNI_*` variables of `environ` (default: the process environment),
        then `overrides` (e.g. CLI flags; None values are ignored, so unset flags fall back).

        With `environ` given, nothing else is read: the Serve application builder builds exactly the
        settings its config carries.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if environ is None:
            return cls(**given)
        return cls._from_sources(given, _MappingEnvSource(cls, environ))

    def replace(self, **changes: Any) -> WorkerSettings:
        """A copy with `changes` applied, checked like a new object; no environment is read."""
        return self._from_sources({**dict(self), **changes})

    @classmethod
    def _from_sources(cls, init: dict[str, Any], *env: PydanticBaseSettingsSource) -> WorkerSettings:
        """Built from `init`, then the given sources only (none: keyword values and defaults)."""
        # BaseSettings.__init__ takes `_build_sources`; the signature type checkers derive lists fields only.
        build: Callable[..., WorkerSettings] = cls
        return build(_build_sources=((InitSettingsSource(cls, init), *env), init))

    @property
    def backlog_key(self) -> str:
        """The Redis hash of the engines' backlog reports (under `backlog_prefix`)."""
        return backlog_key(self.backlog_prefix)

    @property
    def resolved_precision(self) -> Literal["fp32", "bf16", "fp16"]:
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
    def resolved_sync_weights(self) -> str | None:
        """Where the sync extractor's weights come from: `sync_weights`, else the resolved `weights`."""
        return self.sync_weights if self.sync_weights is not None else self.resolved_weights

    @property
    def uses_random_weights(self) -> bool:
        return self.resolved_weights is None

    @property
    def model_version(self) -> str:
        """A label for results: the weights file's name, or `<preset>-random`."""
        weights = self.resolved_weights
        return Path(weights).name if weights else f"{self.config_path or self.preset}-random"

    def load_config(self) -> AudioOmniConfig:
        """The model config (import deferred: model/ pulls in torch)."""
        from model.config import load_config

        return load_config(self.config_path or self.preset)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source over a given mapping instead of `os.environ` (same parsing rules)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, bool(self.case_sensitive), self.env_ignore_empty, self.env_parse_none_str)
