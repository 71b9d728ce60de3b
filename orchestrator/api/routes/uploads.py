"""`POST /v1/uploads`: store an input audio file under the tenant's prefix.

The file is checked by `orchestrator.audio_io.probe_audio` with the engine's own input limit, the
same checks the engine's `decode_audio` runs on an `s3://` input: a file refused here would be
refused there, with the same reason, and a file accepted here decodes there."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from orchestrator.api.deps import CurrentTenant, ServicesDep
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.views import UploadView
from orchestrator.api_errors import ApiError
from orchestrator.audio_io import BadAudio, probe_audio

router = APIRouter(tags=["uploads"])

UPLOAD_WHAT = "the uploaded file"  # how audio_io's messages name an upload


@router.post("/v1/uploads", status_code=201, responses=documented(*COMMON_ERRORS, 413))
def upload(
    file: Annotated[UploadFile, File(description="a WAV or FLAC file")],
    tenant: CurrentTenant,
    services: ServicesDep,
) -> UploadView:
    """Store an input audio file under the tenant's prefix; it is decoded in full first.
    Pass the returned `uri` as `input_audio_uri` or `voice_prompt_uri`."""
    limits = services.limits
    data = file.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        message = f"the file is over the limit of {limits.max_upload_bytes} bytes"
        raise ApiError(413, "too_large", message, "file")
    try:
        info = probe_audio(data, max_duration_s=limits.max_upload_duration_s, what=UPLOAD_WHAT)
    except BadAudio as exc:
        raise ApiError(422, "invalid_audio", str(exc), "file") from None
    upload_id = uuid.uuid4().hex
    storage = services.storage
    key = f"{storage.tenant_prefix(tenant.tenant_id)}uploads/{upload_id}.{info.format}"
    stored = storage.put(key, data)
    return UploadView.of(upload_id, storage.uri(key), stored.size_bytes, stored.sha256 or "", info)
