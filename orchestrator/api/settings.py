"""`ApiSettings`: the limits of the HTTP layer (tenant quotas live on the tenant record; the limits
of the audio itself are the model's, in `model.limits`)."""

from __future__ import annotations

from dataclasses import dataclass

from model.limits import MAX_INPUT_AUDIO_S

__all__ = ["MAX_BATCH_JOBS", "ApiSettings"]

KiB = 1024
MiB = 1024 * KiB
MAX_BATCH_JOBS = 10_000  # hard ceiling of one batch request (the schema's maxItems)


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the HTTP layer.

    `max_upload_duration_s` defaults to the engine's own input limit (`MAX_INPUT_AUDIO_S`) and may
    only be lowered: an upload the engine would refuse is refused at the door."""

    max_json_body_bytes: int = 1 * MiB  # POST /v1/jobs and anything not listed below
    max_batch_body_bytes: int = 32 * MiB
    max_batch_jobs: int = MAX_BATCH_JOBS
    batch_chunk_size: int = 500  # jobs per atomic queue write
    max_upload_bytes: int = 100 * MiB
    max_upload_video_bytes: int = 256 * MiB  # a video upload; the engine reads inputs up to 256 MiB
    max_upload_duration_s: float = MAX_INPUT_AUDIO_S
    result_url_expires_s: int = 3600

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_json_body_bytes", 1 * KiB, 64 * MiB),
            ("max_batch_body_bytes", 1 * KiB, 1024 * MiB),
            ("max_batch_jobs", 1, MAX_BATCH_JOBS),
            ("batch_chunk_size", 1, 5000),
            ("max_upload_bytes", 1 * KiB, 5 * 1024 * MiB),
            ("max_upload_video_bytes", 1 * KiB, 4 * 1024 * MiB),
            ("result_url_expires_s", 1, 7 * 24 * 3600),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} {value!r} is invalid: expected an integer in [{low}, {high}]")
        duration = self.max_upload_duration_s
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not 0 < duration <= MAX_INPUT_AUDIO_S:
            raise ValueError(
                f"max_upload_duration_s {duration!r} is invalid: expected seconds in (0, {MAX_INPUT_AUDIO_S:g}]"
            )
