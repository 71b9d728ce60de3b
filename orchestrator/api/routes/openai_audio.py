"""OpenAI-compatible audio endpoints, so tools written against OpenAI's audio API (and the official
`openai` SDK with `base_url` pointed here) work unchanged.

POST /v1/audio/speech          text -> speech bytes (wav, flac, mp3, opus, aac, pcm): a `tts` job
POST /v1/audio/transcriptions  audio file -> {"text"} or text/plain: an `understand` job with the
                               thinker's transcription instruction

Each request is one ordinary job of the caller's tenant (same checks, quota, admission and
metrics as `POST /v1/jobs`), waited for here; on a timeout the 504 names the job, which goes on.
The settings (named voices, model names, the speech job's parameters) are `OpenAISettings`.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from model.limits import MAX_INPUT_AUDIO_S, MAX_PROMPT_CHARS, MAX_TRANSCRIPT_CHARS
from model.prompts import ASR_INSTRUCTION
from orchestrator.api.deps import CurrentTenant, Services, ServicesDep
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.openai_compat import (
    SPEECH_FIELDS,
    OpenAISettings,
    OpenAISettingsDep,
    build_spec,
    check_model,
    resolve_voice,
    submit_job,
    wait_for_job,
)
from orchestrator.api_errors import ApiError
from orchestrator.audio_codecs import DELIVERY_FORMATS, PCM_RATE_HZ, decode_media, encode_delivery
from orchestrator.audio_io import BadAudio, encode_audio, probe_audio
from orchestrator.jobs import JobRecord
from orchestrator.storage import content_type_for
from orchestrator.tenants import Tenant

router = APIRouter(tags=["openai"])

SpeechFormat = Literal["wav", "flac", "mp3", "opus", "aac", "pcm"]
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?")
_WAIT_ERRORS = documented(*COMMON_ERRORS, 403, 409, 413, 429, 502, 504)


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body."""

    # No schema example: a generated client or fuzzer sending it would queue a real job and wait for it.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=64, description="tts-1, tts-1-hd, gpt-4o-mini-tts or audio-omni")
    input: str = Field(min_length=1, max_length=MAX_TRANSCRIPT_CHARS, description="the text to speak")
    voice: str = Field(
        min_length=1,
        max_length=2048,
        description="`default`, a deployment's named voice, or a voice prompt from POST /v1/uploads (id or uri)",
    )
    response_format: SpeechFormat = Field("mp3", description=f"pcm is mono s16le at {PCM_RATE_HZ} Hz, no header")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="only 1.0 is supported")
    instructions: str | None = Field(None, max_length=4096, description="not supported: leave it out")
    stream_format: Literal["audio", "sse"] | None = Field(None, description="only `audio` is supported")


_SPEECH_CONTENT = {
    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
    "audio/flac": {"schema": {"type": "string", "format": "binary"}},
    **{f.content_type: {"schema": {"type": "string", "format": "binary"}} for f in DELIVERY_FORMATS.values()},
}


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={200: {"description": "the speech, in `response_format`", "content": _SPEECH_CONTENT}, **_WAIT_ERRORS},
)
async def create_speech(
    body: SpeechRequest, tenant: CurrentTenant, services: ServicesDep, settings: OpenAISettingsDep
) -> Response:
    """Speak `input` (a `tts` job) and return the audio bytes in `response_format`.

    `voice`: `default` (the model's own voice, no prompt), a name from the deployment's
    `AUDIO_OMNI_OPENAI_VOICES`, or a voice prompt this tenant uploaded (`upload_id` or `uri` of
    `POST /v1/uploads`). `speed` other than 1.0 and `instructions` are refused (the model takes
    neither). The request waits for the job; the `X-Job-ID` header names it."""
    check_model(body.model, settings.speech_models)
    if body.speed != 1.0:
        raise ApiError(400, "bad_request", "speed: only 1.0 is supported (the model cannot change its pace)", "speed")
    if body.instructions is not None and body.instructions.strip():
        message = "instructions: not supported; the model takes the text and a voice (a voice prompt sets the style)"
        raise ApiError(400, "bad_request", message, "instructions")
    if body.stream_format == "sse":
        raise ApiError(400, "bad_request", "stream_format: only 'audio' is supported", "stream_format")
    record = await run_in_threadpool(_submit_speech, body, services, tenant, settings)
    done = await wait_for_job(services, record.job_id, settings)
    data, media_type = await run_in_threadpool(_speech_bytes, services, done, body.response_format)
    headers = {"X-Job-ID": done.job_id}
    if body.response_format == "pcm":
        headers["X-Sample-Rate"] = str(PCM_RATE_HZ)
    return Response(data, media_type=media_type, headers=headers)


def _submit_speech(body: SpeechRequest, services: Services, tenant: Tenant, settings: OpenAISettings) -> JobRecord:
    uri, text = resolve_voice(body.voice, services, tenant, settings)
    data: dict[str, object] = {
        "task": "tts",
        "transcript": body.input,
        "output_format": "flac" if body.response_format == "flac" else "wav",
        "duration_s": settings.speech_duration_s,
        "steps": settings.speech_steps,
    }
    if uri is not None:
        data["voice_prompt_uri"] = uri
    if text is not None:
        data["voice_prompt_text"] = text
    spec = build_spec(data, SPEECH_FIELDS)
    return submit_job(services, tenant, spec, SPEECH_FIELDS)


def _speech_bytes(services: Services, record: JobRecord, fmt: str) -> tuple[bytes, str]:
    """The job's stored result in `fmt`: WAV and FLAC as stored, others transcoded."""
    data, key = _result(services, record)
    if fmt in ("wav", "flac"):
        return data, content_type_for(key)
    frames, rate = decode_media(data, max_duration_s=MAX_INPUT_AUDIO_S * 2, what="the speech result")
    return encode_delivery(frames.T, rate, fmt), DELIVERY_FORMATS[fmt].content_type


def _result(services: Services, record: JobRecord) -> tuple[bytes, str]:
    storage = services.storage
    key = storage.key_of(record.result_uri or "")
    if key is None:
        raise ApiError(500, "internal", f"job {record.job_id} has no result this API can read")
    return storage.get(key), key


# --------------------------------------------------------------------------- transcriptions


class Transcription(BaseModel):
    """OpenAI's transcription object (`response_format=json`)."""

    text: str


@router.post(
    "/v1/audio/transcriptions",
    response_model=None,
    responses={
        200: {
            "description": "the transcript: JSON `{text}` or, with response_format=text, text/plain",
            "content": {
                "application/json": {"schema": Transcription.model_json_schema()},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        **_WAIT_ERRORS,
    },
)
async def create_transcription(
    file: Annotated[UploadFile, File(description="the speech: WAV, FLAC, MP3, M4A, Ogg, WebM or a video's track")],
    tenant: CurrentTenant,
    services: ServicesDep,
    settings: OpenAISettingsDep,
    model: Annotated[str, Form(description="whisper-1, gpt-4o-transcribe, gpt-4o-mini-transcribe or audio-omni")],
    prompt: Annotated[str | None, Form(description="words or earlier text that may occur in the speech")] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code of the speech's language")] = None,
    response_format: Annotated[Literal["json", "text"], Form(description="json: {text}; text: text/plain")] = "json",
    temperature: Annotated[float | None, Form(description="only 0 is supported (greedy decoding)")] = None,
) -> Response:
    """Transcribe the uploaded speech with the thinker (an `understand` job given the model's
    transcription instruction); `prompt` and `language` are added to that instruction. The file is
    stored under the tenant's `uploads/` like `POST /v1/uploads`; any common audio format (or a
    video's audio track) is accepted and stored as WAV when it is not WAV or FLAC already."""
    check_model(model, settings.transcription_models)
    if temperature not in (None, 0.0):
        raise ApiError(400, "bad_request", "temperature: only 0 is supported (decoding is greedy)", "temperature")
    instruction = _instruction(prompt, language)
    limits = services.limits
    data = await file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, "too_large", f"file: over the limit of {limits.max_upload_bytes} bytes", "file")
    record = await run_in_threadpool(_submit_transcription, data, instruction, services, tenant)
    done = await wait_for_job(services, record.job_id, settings)
    text = done.extra.get("text")
    text = text if isinstance(text, str) else ""
    if response_format == "text":
        return PlainTextResponse(text, headers={"X-Job-ID": done.job_id})
    return JSONResponse(Transcription(text=text).model_dump(), headers={"X-Job-ID": done.job_id})


def _instruction(prompt: str | None, language: str | None) -> str:
    """The thinker's transcription instruction, with the request's language and prompt."""
    parts = [ASR_INSTRUCTION]
    if language is not None and language.strip():
        language = language.strip()
        if not _LANGUAGE_RE.fullmatch(language):
            raise ApiError(
                400, "bad_request", f"language {language!r} is not an ISO-639-1 code such as 'en'", "language"
            )
        parts.append(f"The speech is in the language with ISO-639-1 code '{language}'.")
    if prompt is not None and prompt.strip():
        parts.append(f"Words and earlier text that may occur in it: {prompt.strip()}")
    instruction = " ".join(parts)
    if len(instruction) > MAX_PROMPT_CHARS:
        room = MAX_PROMPT_CHARS - (len(instruction) - len(prompt or ""))
        raise ApiError(
            400, "bad_request", f"prompt: at most {max(room, 0)} characters fit beside the instruction", "prompt"
        )
    return instruction


def _submit_transcription(data: bytes, instruction: str, services: Services, tenant: Tenant) -> JobRecord:
    limits = services.limits
    what = "file"
    try:
        info = probe_audio(data, max_duration_s=limits.max_upload_duration_s, what=what)
        ext = info.format
    except BadAudio as exc:
        if data[:4] in (b"RIFF", b"fLaC"):  # WAV and FLAC pass the checks of POST /v1/uploads
            raise ApiError(422, "invalid_audio", str(exc), "file") from None
        try:  # any other container PyAV reads, stored as WAV
            frames, rate = decode_media(data, max_duration_s=limits.max_upload_duration_s, what=what)
        except BadAudio as media_exc:
            raise ApiError(422, "invalid_audio", str(media_exc), "file") from None
        data, ext = encode_audio(frames.T, rate, "wav"), "wav"
    storage = services.storage
    key = f"{storage.tenant_prefix(tenant.tenant_id)}uploads/{uuid.uuid4().hex}.{ext}"
    storage.put(key, data)
    spec = build_spec({"task": "understand", "prompt": instruction, "input_audio_uri": storage.uri(key)}, {})
    return submit_job(services, tenant, spec, {"input_audio_uri": "file"})
