"""The client's own fields on a job, a batch or a workflow: `metadata`, `custom_id`, `webhook_url`.

The system never interprets them; it stores them with the job and echoes them in every view of it
(`JobView`, a batch's results lines, webhook payloads, reports). Each is checked by one rule here,
shared by `JobSpec`, `WorkflowSpec` and the batch request:

- `metadata`: a JSON object of at most 16 keys, each 1-64 characters, at most 4096 bytes as
  compact JSON (values: any JSON).
- `custom_id`: 1-64 characters without control characters (free text; not unique).
- `webhook_url`: an `http(s)://host/...` URL of at most 2048 characters. Only its syntax is checked
  here; whether its address may be called is the webhook target policy
  (`orchestrator.webhooks.targets.check_webhook_target`), applied by the submission routes.

`TASK_EXAMPLES` holds one example job per task for the schema (`/docs`).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field
from pydantic.config import JsonValue

__all__ = [
    "CUSTOM_ID_DESCRIPTION",
    "MAX_CUSTOM_ID_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_CHARS",
    "MAX_WEBHOOK_URL_CHARS",
    "METADATA_DESCRIPTION",
    "TASK_EXAMPLES",
    "WEBHOOK_URL_DESCRIPTION",
    "CustomId",
    "Metadata",
    "WebhookUrl",
    "check_custom_id",
    "check_metadata",
    "check_webhook_url",
]

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_BYTES = 4096
MAX_CUSTOM_ID_CHARS = 64
MAX_WEBHOOK_URL_CHARS = 2048

_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def _finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere inside a metadata value (they are not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a JSON number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Return `value` if it is a valid `metadata` object, else raise `ValueError`."""
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"has {len(value)} keys; at most {MAX_METADATA_KEYS} are allowed")
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY_CHARS:
            raise ValueError(f"key {key[:80]!r} must be 1-{MAX_METADATA_KEY_CHARS} characters long")
        if any(ch in _CONTROL for ch in key):
            raise ValueError(f"key {key!r} must not contain control characters")
        _finite(item, key)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed")
    return value


def check_custom_id(value: str) -> str:
    """Return `value` if it is a valid `custom_id`, else raise `ValueError`."""
    if any(ch in _CONTROL for ch in value):
        raise ValueError("must not contain control characters")
    return value


def check_webhook_url(value: str) -> str:
    """Return `value` if it is a syntactically valid webhook URL, else raise `ValueError`."""
    if any(ch.isspace() or ch in _CONTROL for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host (http(s)://host/path)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); sign requests with the webhook secret")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    if port == 0:
        raise ValueError("port 0 is not a valid port")
    return value


METADATA_DESCRIPTION = (
    f"your own JSON object, echoed in every view of the job (at most {MAX_METADATA_KEYS} keys of "
    f"1-{MAX_METADATA_KEY_CHARS} characters, {MAX_METADATA_BYTES} bytes as JSON)"
)
CUSTOM_ID_DESCRIPTION = "your own label for the job, echoed in every view of it (not required to be unique)"
WEBHOOK_URL_DESCRIPTION = (
    "http(s) URL that receives a signed POST when this ends (Standard Webhooks; see docs/webhooks.md). "
    "Private, loopback, link-local and metadata addresses are refused unless the deployment allows them"
)

Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
CustomId = Annotated[str, Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS), AfterValidator(check_custom_id)]
WebhookUrl = Annotated[str, Field(min_length=1, max_length=MAX_WEBHOOK_URL_CHARS), AfterValidator(check_webhook_url)]


# One example per task, shown in the OpenAPI schema (`/docs`) and checked by tests/unit/test_jobs.py.
TASK_EXAMPLES: list[JsonValue] = [
    {"task": "understand", "prompt": "What instruments are playing?", "input_audio_uri": "s3://my-bucket/clip.wav"},
    {
        "task": "text_to_audio",
        "prompt": "rain on a tin roof",
        "duration_s": 10.0,
        "metadata": {"project": "demo"},
        "custom_id": "row-1",
    },
    {"task": "text_to_music", "prompt": "calm lo-fi piano with vinyl crackle", "duration_s": 30.0},
    {"task": "tts", "transcript": "Hello and welcome.", "voice_prompt_uri": "s3://my-bucket/voice.wav"},
    {"task": "video_to_audio", "video_uri": "s3://my-bucket/clip.mp4", "output_format": "mp4"},
    {"task": "video_to_music", "video_uri": "s3://my-bucket/clip.mp4", "prompt": "tense orchestral score"},
    {"task": "edit", "op": "remove", "prompt": "the dog barking", "input_audio_uri": "s3://my-bucket/street.wav"},
    {
        "task": "edit",
        "op": "style_transfer",
        "source_prompt": "piano",
        "prompt": "electric guitar",
        "input_audio_uri": "s3://my-bucket/melody.wav",
    },
    {
        "task": "voice_conversion",
        "transcript": "Good morning.",
        "voice_prompt_uri": "s3://my-bucket/voice.wav",
        "webhook_url": "https://example.com/hooks/audio-omni",
    },
]
