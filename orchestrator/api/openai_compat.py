"""What the OpenAI-compatible audio routes (`routes/openai_audio.py`) need beside the job system:
their deployment settings (named voices, accepted model names, the speech job's parameters, how
long a request waits), the voice rule, the job submission through the same door as
`POST /v1/jobs`, and the wait for a job to end.

A request there is one ordinary job: it is checked with the tenant's rules (`deps.check_spec`),
admitted against its quota (`deps.admit`), queued, counted in the same metrics, and the route
waits for it by polling its record in Redis. Errors name the OpenAI request's fields (`input`,
`voice`), not the job spec's (`transcript`, `voice_prompt_uri`).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from model.limits import DEFAULT_DURATION_S, DEFAULT_STEPS, MAX_DURATION_S, MAX_STEPS, MAX_VOICE_PROMPT_TEXT_CHARS
from orchestrator.api.deps import Services, check_spec, queue_job
from orchestrator.api.errors import problems_error, validation_problems
from orchestrator.api_errors import ApiError
from orchestrator.jobs import MAX_URI_CHARS, JobRecord, JobSpec, JobStatus
from orchestrator.tenants import Tenant

__all__ = [
    "DEFAULT_VOICE",
    "SPEECH_FIELDS",
    "NamedVoice",
    "OpenAISettings",
    "OpenAISettingsDep",
    "build_spec",
    "check_model",
    "resolve_voice",
    "submit_job",
    "wait_for_job",
]

DEFAULT_VOICE = "default"  # no voice prompt: the model's own voice
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")  # `POST /v1/uploads` ids (uuid4 hex)
_UPLOAD_EXTS = ("wav", "flac")
# A job-spec field -> the OpenAI request field it came from, for error messages.
SPEECH_FIELDS = {"transcript": "input", "voice_prompt_uri": "voice", "voice_prompt_text": "voice"}


class NamedVoice(BaseModel):
    """A voice the deployment names: a voice prompt (a URI the engine may read) and what it says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(min_length=1, max_length=MAX_URI_CHARS, description="the voice prompt's audio")
    transcript: str | None = Field(None, max_length=MAX_VOICE_PROMPT_TEXT_CHARS, description="what it says")


class OpenAISettings(BaseSettings):
    """Settings of the OpenAI-compatible endpoints (environment `AUDIO_OMNI_OPENAI_*`).

    `voices` is a JSON object `{"name": {"uri": "s3://bucket/voices/anna.wav", "transcript":
    "..."}}`; each URI must be readable under the deployment's input rules (e.g. its bucket in
    `AUDIO_OMNI_ALLOWED_INPUT_S3`), as any job input. `speech_duration_s` and `speech_steps` are
    the TTS job's length budget (speech is trimmed to what is said) and sampling steps."""

    model_config = SettingsConfigDict(env_prefix="AUDIO_OMNI_OPENAI_", extra="ignore", frozen=True)

    voices: dict[str, NamedVoice] = Field(default_factory=dict)
    speech_models: tuple[str, ...] = ("audio-omni", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
    transcription_models: tuple[str, ...] = ("audio-omni", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
    speech_duration_s: float = Field(default=DEFAULT_DURATION_S, gt=0, le=MAX_DURATION_S)
    speech_steps: int = Field(default=DEFAULT_STEPS, ge=1, le=MAX_STEPS)
    wait_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    poll_max_s: float = Field(default=1.0, gt=0, le=30)

    @field_validator("voices")
    @classmethod
    def _check_names(cls, value: dict[str, NamedVoice]) -> dict[str, NamedVoice]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name == DEFAULT_VOICE:
                raise ValueError(f"voice name {name!r} is invalid: 1-64 of [A-Za-z0-9_.-], not {DEFAULT_VOICE!r}")
        return value


def get_openai_settings(request: Request) -> OpenAISettings:
    settings: OpenAISettings = request.app.state.openai
    return settings


OpenAISettingsDep = Annotated[OpenAISettings, Depends(get_openai_settings)]


def check_model(model: str, accepted: tuple[str, ...]) -> None:
    """400 naming the accepted model names when `model` is not one of them."""
    if model not in accepted:
        raise ApiError(
            400, "bad_request", f"model {model!r} is not served here; use one of: {', '.join(accepted)}", "model"
        )


def resolve_voice(
    voice: str, services: Services, tenant: Tenant, settings: OpenAISettings
) -> tuple[str | None, str | None]:
    """`(voice_prompt_uri, voice_prompt_text)` for a speech request's `voice`: `default` (no
    prompt), a deployment's named voice, an upload id of this tenant, or a URI (checked with the
    job's input rules when the job is). Anything else is a 400 listing what is valid."""
    if voice == DEFAULT_VOICE:
        return None, None
    named = settings.voices.get(voice)
    if named is not None:
        return named.uri, named.transcript
    if "://" in voice:
        return voice, None
    if _UPLOAD_ID_RE.fullmatch(voice):
        storage = services.storage
        for ext in _UPLOAD_EXTS:
            key = f"{storage.tenant_prefix(tenant.tenant_id)}uploads/{voice}.{ext}"
            if storage.head(key) is not None:
                return storage.uri(key), None
        raise ApiError(400, "bad_request", f"voice {voice!r}: no upload with this id (POST /v1/uploads)", "voice")
    names = ", ".join([DEFAULT_VOICE, *sorted(settings.voices)])
    message = (
        f"voice {voice!r} is not known; valid voices: {names}, or a voice prompt uploaded with "
        "POST /v1/uploads (its upload_id or uri)"
    )
    raise ApiError(400, "bad_request", message, "voice")


def build_spec(data: dict[str, object], fields: dict[str, str]) -> JobSpec:
    """The job spec of a request; a 422 naming the request's own fields when it is invalid."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = [(fields.get(f or "", f), m) for f, m in validation_problems(exc)]
        raise problems_error(problems) from None


def submit_job(services: Services, tenant: Tenant, spec: JobSpec, fields: dict[str, str] | None = None) -> JobRecord:
    """Queue one plain job as `POST /v1/jobs` does (tenant checks, admission, metrics). `fields`
    renames job-spec fields in errors to the request's own names."""
    try:
        spec = check_spec(services, tenant, spec)
    except ApiError as exc:
        raise _renamed(exc, fields or {}) from None
    record, _ = queue_job(services, tenant, spec)
    return record


def _renamed(exc: ApiError, fields: dict[str, str]) -> ApiError:
    field, message = exc.field, exc.message
    for old, new in fields.items():
        if field == old:
            field = new
        message = message.replace(f"{old}:", f"{new}:")
    return ApiError(exc.status, exc.code, message, field, headers=exc.headers)


async def wait_for_job(services: Services, job_id: str, settings: OpenAISettings) -> JobRecord:
    """Poll the job's record until it ends (quick first polls, then every `poll_max_s`). A
    success is returned; a failure, death or cancel is an error naming the job and its reason;
    no end within `wait_timeout_s` is a 504 naming the job, which goes on and can be fetched
    later with `GET /v1/jobs/{id}`."""
    deadline = time.monotonic() + settings.wait_timeout_s
    delay = 0.05
    while True:
        record = await run_in_threadpool(services.queue.get, job_id)
        if record is None:
            raise ApiError(500, "internal", f"job {job_id!r} disappeared from the queue while waiting for it")
        if record.is_final:
            return _succeeded(record)
        left = deadline - time.monotonic()
        if left <= 0:
            message = (
                f"job {job_id} did not finish within {settings.wait_timeout_s:g} s; it goes on: follow it with "
                f"GET /v1/jobs/{job_id} and fetch GET /v1/jobs/{job_id}/result when it succeeds"
            )
            raise ApiError(504, "timeout", message, headers={"Location": f"/v1/jobs/{job_id}", "X-Job-ID": job_id})
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, settings.poll_max_s)


def _succeeded(record: JobRecord) -> JobRecord:
    if record.status is JobStatus.SUCCEEDED:
        return record
    headers = {"X-Job-ID": record.job_id}
    reason = f": {record.error}" if record.error else ""
    code = record.error_code
    if record.status is JobStatus.CANCELLED:
        raise ApiError(409, "cancelled", f"job {record.job_id} was cancelled", headers=headers)
    if record.status is JobStatus.FAILED:
        raise ApiError(422, code or "job_failed", f"job {record.job_id} failed{reason}", headers=headers)
    message = f"job {record.job_id} ended {record.status.value} after {record.attempts} attempts{reason}"
    raise ApiError(502, code or "retries_exhausted", message, headers=headers)
