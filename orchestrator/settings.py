"""One typed settings object for the orchestrator, read from the environment or given as flags.

Each field reads `AUDIO_OMNI_<NAME>` and, where a common name exists, that too (`REDIS_URL`,
`S3_ENDPOINT_URL`, `S3_BUCKET`, `AWS_ACCESS_KEY_ID`, ...). Keyword arguments (CLI flags) win over
the environment::

    settings = Settings.from_env()                          # environment only
    settings = Settings.from_env(redis_url=args.redis_url)  # flags override the environment
    queue = JobQueue.from_settings(settings)
    storage = storage_from_settings(**settings.storage_kwargs(embedded=False))

Durations carry their unit in the name (`lease_s`). Cross-field rules quote both numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.keys import DEFAULT_PREFIX, RedisKeys

__all__ = ["ObservabilitySettings", "ServeSettings", "Settings"]

_ENV = "AUDIO_OMNI_"


def _env(name: str, *also: str) -> AliasChoices:
    """Accept the field name (flags), `AUDIO_OMNI_<NAME>` and the given common variable names."""
    return AliasChoices(name, _ENV + name.upper(), *also)


class Settings(BaseSettings):
    """Everything the queue, the engine and storage need to connect and behave."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        hide_input_in_errors=True,  # an error names the field and the rule, never echoes a secret
    )

    # ----------------------------------------------------------------------- Redis / queue
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("redis_url", "REDIS_URL"))
    redis_prefix: str = Field(DEFAULT_PREFIX, validation_alias=_env("redis_prefix"))
    consumer_group: str = Field("engine", min_length=1, validation_alias=_env("consumer_group"))
    lease_s: float = Field(60.0, gt=0, le=3600, validation_alias=_env("lease_s"))
    renew_interval_s: float | None = Field(
        None, gt=0, validation_alias=_env("renew_interval_s"), description="default: lease_s / 3"
    )
    max_attempts: int = Field(5, ge=1, le=100, validation_alias=_env("max_attempts"))
    backoff_base_s: float = Field(2.0, gt=0, validation_alias=_env("backoff_base_s"))
    backoff_max_s: float = Field(600.0, gt=0, validation_alias=_env("backoff_max_s"))
    retention_s: int = Field(7 * 24 * 3600, ge=1, validation_alias=_env("retention_s"))
    # A Redis that refuses or hangs fails a call within these bounds (the API answers 503 meanwhile);
    # the socket timeout must exceed the engine's blocking claim (1 s).
    redis_connect_timeout_s: float = Field(5.0, gt=0, le=60, validation_alias=_env("redis_connect_timeout_s"))
    redis_socket_timeout_s: float = Field(10.0, ge=2, le=300, validation_alias=_env("redis_socket_timeout_s"))

    # ----------------------------------------------------------------------- S3 (service mode)
    s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("s3_endpoint_url", "S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    )
    s3_public_endpoint_url: str | None = Field(None, validation_alias=_env("s3_public_endpoint_url"))
    s3_bucket: str | None = Field(None, validation_alias=_env("s3_bucket", "S3_BUCKET"))
    s3_region: str = Field("us-east-1", validation_alias=_env("s3_region", "AWS_REGION", "AWS_DEFAULT_REGION"))
    s3_access_key_id: SecretStr | None = Field(None, validation_alias=_env("s3_access_key_id", "AWS_ACCESS_KEY_ID"))
    s3_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("s3_secret_access_key", "AWS_SECRET_ACCESS_KEY")
    )
    s3_session_token: SecretStr | None = Field(None, validation_alias=_env("s3_session_token", "AWS_SESSION_TOKEN"))
    s3_prefix: str = Field("", validation_alias=_env("s3_prefix"))
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", validation_alias=_env("s3_addressing_style")
    )
    # Extra S3 locations tenants may read inputs from: "bucket", "s3://bucket/prefix/", "{tenant}"
    # allowed. From the environment as a comma-separated list.
    allowed_input_s3: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias=_env("allowed_input_s3"))

    # ----------------------------------------------------------------------- local folders (embedded mode)
    output_root: Path | None = Field(None, validation_alias=_env("output_root"))
    input_root: Path | None = Field(None, validation_alias=_env("input_root"))

    # ----------------------------------------------------------------------- validation

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url {value!r} is invalid: expected redis://, rediss:// or unix://")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        RedisKeys(value)  # raises ValueError naming the rule
        return value

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {value!r} is invalid: expected an http:// or https:// URL")
        return value or None

    @field_validator("allowed_input_s3", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_base_s ({self.backoff_base_s}) must not exceed backoff_max_s ({self.backoff_max_s})"
            )
        if self.renew_interval_s is not None and self.renew_interval_s >= self.lease_s:
            raise ValueError(
                f"renew_interval_s ({self.renew_interval_s}) must be less than lease_s ({self.lease_s}), "
                "or every lease lapses before it is renewed"
            )
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("s3_access_key_id and s3_secret_access_key must be given together (or neither)")
        return self

    # ----------------------------------------------------------------------- constructors / views

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment; keyword arguments (e.g. CLI flags) take precedence.
        Overrides that are None are ignored, so unset flags fall back to the environment."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def effective_renew_interval_s(self) -> float:
        """How often a lease holder renews: the configured interval, else a third of the lease."""
        return self.renew_interval_s if self.renew_interval_s is not None else self.lease_s / 3

    def redis_client(self) -> redis.Redis:
        """A client of `redis_url` with this deployment's timeouts. It reconnects by itself: a call
        after Redis came back opens a new connection (the pool drops broken ones)."""
        return redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=self.redis_connect_timeout_s,
            socket_timeout=self.redis_socket_timeout_s,
            health_check_interval=30,
        )

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.redis_prefix)

    def queue_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `JobQueue` (all but the Redis client)."""
        return {
            "prefix": self.redis_prefix,
            "lease_s": self.lease_s,
            "max_attempts": self.max_attempts,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "retention_s": self.retention_s,
            "consumer_group": self.consumer_group,
        }

    def storage_kwargs(self, *, embedded: bool) -> dict[str, Any]:
        """Keyword arguments for `orchestrator.storage.storage_from_settings`: the S3 bucket in
        service mode, the local output folder in embedded mode."""
        if embedded:
            if self.output_root is None:
                raise ValueError("embedded mode needs output_root (AUDIO_OMNI_OUTPUT_ROOT or --out)")
            where: dict[str, Any] = {"local_root": self.output_root, "input_root": self.input_root}
        else:
            if self.s3_bucket is None:
                raise ValueError("service mode needs s3_bucket (S3_BUCKET or AUDIO_OMNI_S3_BUCKET)")
            where = {"bucket": self.s3_bucket}
        return {
            **where,
            "endpoint_url": self.s3_endpoint_url,
            "public_endpoint_url": self.s3_public_endpoint_url,
            "region": self.s3_region,
            "access_key_id": _secret(self.s3_access_key_id),
            "secret_access_key": _secret(self.s3_secret_access_key),
            "session_token": _secret(self.s3_session_token),
            "prefix": self.s3_prefix,
            "addressing_style": self.s3_addressing_style,
            "allowed_input_s3": list(self.allowed_input_s3),
        }


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


# --------------------------------------------------------------------------- process settings

LogFormat = Literal["json", "console"]


class ObservabilitySettings(BaseSettings):
    """How a process (`audio-omni serve`, `audio-omni api`) logs and exports shared metrics:
    `AUDIO_OMNI_LOG_LEVEL`, `AUDIO_OMNI_LOG_FORMAT` (json: one object per line, the default;
    console: for a terminal), `AUDIO_OMNI_METRICS_LEADER_TTL_S`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", validation_alias=_env("log_level"))
    log_format: LogFormat = Field("json", validation_alias=_env("log_format"))
    # The shared-state gauges (queue depth, running jobs, dead letters, engines) are exported by one
    # process at a time: the holder of a Redis lock with this TTL (orchestrator.metrics.LeaderLock).
    # Prometheus must scrape the API more often than this, or the exporter changes hands.
    metrics_leader_ttl_s: float = Field(30.0, ge=2, le=600, validation_alias=_env("metrics_leader_ttl_s"))

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, **overrides: Any) -> ObservabilitySettings:
        """From the environment; keyword arguments that are not None take precedence."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})


class ServeSettings(BaseSettings):
    """How `audio-omni serve` runs: where `/metrics` listens, whether it deploys the pools or uses the
    RayService's, which Ray cluster it joins, its engine loops, and the webhook dispatcher.

    The deployment sets these in `infra/k8s/config.env` (`tests/unit/test_deploy_config.py` checks
    that every key there is read by a settings class); flags of `audio-omni serve` win."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False)

    # None: no /metrics endpoint. In a pod: the container port Prometheus scrapes, on 0.0.0.0.
    metrics_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("metrics_port"))
    metrics_addr: str = Field("127.0.0.1", min_length=1, validation_alias=_env("metrics_addr"))
    # False: use the pools another process deployed (the RayService on Kubernetes), by app name.
    deploy_pools: bool = Field(True, validation_alias=_env("deploy_pools"))
    # Ray cluster to join (`ray://head:10001` through Ray Client, or a GCS address); None: a local one.
    ray_address: str | None = Field(None, validation_alias=_env("ray_address", "RAY_ADDRESS"))
    engines: int = Field(1, ge=1, le=64, validation_alias=_env("engines"))
    max_in_flight: int = Field(8, ge=1, le=1024, validation_alias=_env("max_in_flight"))
    # Run the webhook dispatcher beside the engine loops (any number of processes may run one).
    webhooks: bool = Field(True, validation_alias=_env("webhooks"))

    @field_validator("metrics_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        import ipaddress

        text = value.strip()
        try:
            ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            if not all(part and part.replace("-", "").isalnum() for part in text.split(".")):
                raise ValueError(
                    f"metrics_addr {value!r} is invalid: expected an IP address (0.0.0.0 for every interface) "
                    "or a host name"
                ) from None
        return text

    @field_validator("ray_address", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def from_env(cls, **overrides: Any) -> ServeSettings:
        """From the environment; keyword arguments (flags) that are not None take precedence."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})
