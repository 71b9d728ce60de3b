"""`WebhookSettings`: how webhooks are delivered, read from `AUDIO_OMNI_WEBHOOK_*` or given as keywords.

    AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS=hooks.internal,10.20.0.0/16   # exceptions to the address policy
    AUDIO_OMNI_WEBHOOK_RETRY_SCHEDULE_S=5,30,120,600,1800,3600,7200,14400,28800,28800
    AUDIO_OMNI_WEBHOOK_TIMEOUT_S=10

Durations carry their unit in the name. Cross-field rules quote both numbers.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_RETRY_SCHEDULE_S", "WebhookSettings", "parse_allow_entry"]

_ENV = "AUDIO_OMNI_WEBHOOK_"

# Waits before retries 1, 2, ... (caps of the full-jitter draw): together about 24 hours.
DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
MAX_RETRIES = 50
MAX_ALLOW_ENTRIES = 200
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


def _env(name: str) -> AliasChoices:
    """Accept the field name (keywords, flags) and `AUDIO_OMNI_WEBHOOK_<NAME>`."""
    return AliasChoices(name, _ENV + name.upper())


def parse_allow_entry(entry: str) -> str | ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One `ALLOW_HOSTS` entry: an IP network (`10.0.0.0/8`, a bare address is a /32 or /128) or a
    host name (lower-cased, trailing dot dropped). Raises ValueError naming a malformed entry."""
    text = entry.strip()
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    if not name or len(name) > 253 or not set(name) <= _HOST_CHARS or "/" in text:
        raise ValueError(f"webhook allow entry {entry!r} is invalid: expected a host name, an IP address or a CIDR")
    return name


class WebhookSettings(BaseSettings):
    """Delivery of webhook events: address policy, timeouts, retry schedule and the dispatcher's leases."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False, hide_input_in_errors=True
    )

    # Host names, IP addresses or CIDRs a webhook may be sent to even though the address policy
    # refuses them (loopback, private, link-local, ...). A cloud metadata address is allowed only
    # when the entry names exactly that address.
    allow_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), max_length=MAX_ALLOW_ENTRIES, validation_alias=_env("allow_hosts")
    )
    # One attempt: connecting, then each read and write (httpx timeouts); the response body is not awaited.
    timeout_s: float = Field(10.0, gt=0, le=120, validation_alias=_env("timeout_s"))
    connect_timeout_s: float = Field(5.0, gt=0, le=60, validation_alias=_env("connect_timeout_s"))
    # CA certificates (PEM file) to trust instead of the default bundle, e.g. an internal CA.
    ca_bundle: str | None = Field(None, validation_alias=_env("ca_bundle"))
    # Retry n waits a uniform draw in [(1 - jitter) * cap, cap], cap = retry_schedule_s[n - 1]; the
    # delivery fails after the last one. jitter 1.0 is "full jitter".
    retry_schedule_s: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULT_RETRY_SCHEDULE_S, max_length=MAX_RETRIES, validation_alias=_env("retry_schedule_s")
    )
    jitter: float = Field(1.0, ge=0, le=1, validation_alias=_env("jitter"))
    # A dispatcher holds a delivery it is sending for this long; a dead dispatcher's delivery is
    # taken over when it lapses. Must outlast one attempt.
    delivery_lease_s: float = Field(60.0, gt=0, le=3600, validation_alias=_env("delivery_lease_s"))
    # An event read from the stream but not turned into a delivery for this long (its reader
    # died) is taken over by another dispatcher (XAUTOCLAIM).
    event_claim_idle_s: float = Field(30.0, gt=0, le=3600, validation_alias=_env("event_claim_idle_s"))
    # How long the loop waits for new events when nothing is due (below any Redis socket timeout).
    poll_interval_s: float = Field(1.0, gt=0, le=5, validation_alias=_env("poll_interval_s"))
    concurrency: int = Field(8, ge=1, le=256, validation_alias=_env("concurrency"))
    # Finished delivery records (and their listing entries) are kept this long.
    retention_s: int = Field(7 * 24 * 3600, ge=60, validation_alias=_env("retention_s"))
    # After `tenants webhook-secret --rotate`, deliveries are also signed with the previous
    # secret for this long, so receivers can switch without losing events.
    secret_overlap_s: int = Field(24 * 3600, ge=0, validation_alias=_env("secret_overlap_s"))
    consumer_group: str = Field("webhooks", min_length=1, max_length=64, validation_alias=_env("consumer_group"))
    user_agent: str = Field("audio-omni-webhooks/1", min_length=1, max_length=200, validation_alias=_env("user_agent"))

    @field_validator("allow_hosts", "retry_schedule_s", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _check_allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parse_allow_entry(entry)  # raises naming the entry
        return value

    @field_validator("retry_schedule_s")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for wait in value:
            if not 0 <= wait <= 7 * 24 * 3600:
                raise ValueError(f"retry wait {wait!r} is invalid: expected seconds in [0, 604800]")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> WebhookSettings:
        attempt_s = self.attempt_deadline_s
        if self.delivery_lease_s <= attempt_s:
            raise ValueError(
                f"delivery_lease_s ({self.delivery_lease_s}) must exceed connect_timeout_s + 2 * timeout_s "
                f"({attempt_s}), or a slow attempt is taken over while it still runs"
            )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> WebhookSettings:
        """Settings from the environment; keyword arguments that are not None take precedence."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def attempt_deadline_s(self) -> float:
        """The longest one attempt may take, whatever the receiver does: connect, send, then the answer."""
        return self.connect_timeout_s + 2 * self.timeout_s

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per retry wait."""
        return 1 + len(self.retry_schedule_s)
