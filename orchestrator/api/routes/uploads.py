"""`POST /v1/uploads`: store an input audio or video file under the tenant's prefix.

An audio file (WAV, FLAC) is checked by `orchestrator.audio_io.probe_audio`, a video file (MP4, MOV,
MKV, WebM: told apart by its name or its first bytes) by `orchestrator.video_io.probe_video`, each
with the engine's own input limits: the same checks the engine runs on an `s3://` input, so a file
refused here would be refused there with the same reason, and a file accepted here is read there."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from model.limits import MAX_INPUT_VIDEO_S
from orchestrator.api.deps import CurrentTenant, ServicesDep
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.views import UploadView, VideoUploadView
from orchestrator.api_errors import ApiError
from orchestrator.audio_io import BadAudio, probe_audio
from orchestrator.video_io import BadVideo, VideoInfo, is_video_name, probe_video

router = APIRouter(tags=["uploads"])

UPLOAD_WHAT = "the uploaded file"  # how audio_io's and video_io's messages name an upload
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # MP4 / MOV top-level boxes


def video_view(upload_id: str, uri: str, size_bytes: int, sha256: str, info: VideoInfo) -> VideoUploadView:
    width, height = info.display_size
    return VideoUploadView(
        upload_id=upload_id,
        uri=uri,
        size_bytes=size_bytes,
        sha256=sha256,
        format=info.container,
        codec=info.codec,
        width=width,
        height=height,
        fps=round(info.fps, 3),
        frames=info.frames,
        duration_s=round(info.duration_s, 6),
        has_audio=info.has_audio,
    )


def looks_like_video(filename: str | None, head: bytes) -> bool:
    """A video upload: named like one, or starting like an MP4/MOV or Matroska/WebM file."""
    return bool(filename and is_video_name(filename)) or head[:4] == _EBML_MAGIC or head[4:8] in _ISO_BOXES


@router.post("/v1/uploads", status_code=201, responses=documented(*COMMON_ERRORS, 413))
def upload(
    file: Annotated[UploadFile, File(description="a WAV or FLAC file, or an MP4, MOV, MKV or WebM video")],
    tenant: CurrentTenant,
    services: ServicesDep,
) -> UploadView | VideoUploadView:
    """Store an input audio or video file under the tenant's prefix; it is checked first (audio is
    decoded in full; video is probed and its first frame decoded). Pass the returned `uri` as
    `input_audio_uri` or `voice_prompt_uri` (audio), or `video_uri` (video)."""
    limits = services.limits
    data = file.file.read(max(limits.max_upload_bytes, limits.max_upload_video_bytes) + 1)
    video = looks_like_video(file.filename, data[:16])
    limit = limits.max_upload_video_bytes if video else limits.max_upload_bytes
    if len(data) > limit:
        message = f"the {'video' if video else 'audio'} file is over the limit of {limit} bytes"
        raise ApiError(413, "too_large", message, "file")
    storage = services.storage
    upload_id = uuid.uuid4().hex
    if video:
        try:
            info = probe_video(data, max_duration_s=MAX_INPUT_VIDEO_S, what=UPLOAD_WHAT)
        except BadVideo as exc:
            raise ApiError(422, "invalid_video", str(exc), "file") from None
        key = f"{storage.tenant_prefix(tenant.tenant_id)}uploads/{upload_id}.{info.ext}"
        stored = storage.put(key, data)
        return video_view(upload_id, storage.uri(key), stored.size_bytes, stored.sha256 or "", info)
    try:
        audio = probe_audio(data, max_duration_s=limits.max_upload_duration_s, what=UPLOAD_WHAT)
    except BadAudio as exc:
        raise ApiError(422, "invalid_audio", str(exc), "file") from None
    key = f"{storage.tenant_prefix(tenant.tenant_id)}uploads/{upload_id}.{audio.format}"
    stored = storage.put(key, data)
    return UploadView.of(upload_id, storage.uri(key), stored.size_bytes, stored.sha256 or "", audio)
