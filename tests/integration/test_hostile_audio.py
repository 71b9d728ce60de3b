"""The door and the engine agree on every hostile audio file.

Each bad file is sent twice: to `POST /v1/uploads` (real API over HTTP, real Redis, the moto S3
endpoint) and, as the same bytes stored in the bucket under the tenant's prefix, through the
engine's input path (the `InputResolver` read, then `audio_io.decode_audio` with the engine's own
input limit). Both must refuse it with the same reason, one that names the problem; good WAV and
FLAC files are accepted by both. `test_probe_and_decode_agree` checks the same set without services.
"""

from __future__ import annotations

import io
import struct
import uuid
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf

from model.limits import MAX_INPUT_AUDIO_S
from orchestrator.api import create_app, serve_in_thread
from orchestrator.audio_io import MAX_CHANNELS, BadAudio, decode_audio, probe_audio
from orchestrator.engine import EngineSettings
from orchestrator.queue import JobQueue
from orchestrator.storage import S3Storage, input_resolver_from_settings, make_s3_client
from orchestrator.tenants import TenantStore

MODEL_RATE_HZ = 44_100  # the rate the engine decodes model audio at (the released config's)
TENANT = "acme"


def _encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)  # samples: (N, C)
    return buf.getvalue()


def _tone(seconds: float, rate: int = 44_100, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.repeat((0.3 * np.sin(2 * np.pi * 440 * t))[:, None], channels, axis=1).astype(np.float32)  # (N, C)


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _hostile() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, a fragment the refusal's reason must contain)."""
    good = _encode(_tone(0.1), 44_100)
    data_at = good.find(b"data")
    flac = _encode(_tone(0.5), 44_100, "FLAC")
    u8 = _encode(_tone(0.1, channels=1), 44_100, subtype="PCM_U8")
    nan = _tone(0.1, channels=1)
    nan[100] = np.nan
    return {
        "7-bit WAV": (_patched(u8, 34, "<H", 7), "7-bit integer PCM samples"),
        "RIFF size longer than the file": (
            _patched(good, 4, "<I", len(good) * 3),
            f"the RIFF header says {len(good) * 3 + 8} bytes but the file has {len(good)}",
        ),
        "data chunk longer than the file": (
            _patched(good, data_at + 4, "<I", 10_000_000),
            "'data' chunk claims 10000000 bytes",
        ),
        "channels disagree with the frame size": (_patched(good, 22, "<H", 7), "7 channels of 16 bits"),
        "mu-law WAV": (_encode(_tone(0.1, channels=1), 8_000, subtype="ULAW"), "WAV encoding 0x0007"),
        "truncated WAV": (good[: len(good) // 2], "is not a readable audio file"),
        "truncated FLAC": (flac[: len(flac) * 2 // 3], "is not a readable audio file"),
        "empty": (b"", "is empty (0 bytes)"),
        "text": (b"this is not audio at all " * 50, "is not a readable audio file"),
        "PNG": (b"\x89PNG\r\n\x1a\n" + bytes(200), "is not a readable audio file"),
        "AIFF": (_encode(_tone(0.1), 44_100, "AIFF"), "is AIFF audio; only WAV and FLAC are accepted"),
        "zero frames": (_encode(np.zeros((0, 1), dtype=np.float32), 44_100), "holds no samples (0 frames)"),
        "NaN floats": (_encode(nan, 44_100, subtype="FLOAT"), "contains NaN or Inf samples"),
        "too many channels": (
            _encode(_tone(0.05, channels=MAX_CHANNELS + 1), 44_100),
            f"has {MAX_CHANNELS + 1} channels; 1 to {MAX_CHANNELS} are accepted",
        ),
        "sample rate too low": (_encode(_tone(0.1, 4_000), 4_000), "sample rate of 4000 Hz"),
        "too long": (
            _encode(np.zeros((int((MAX_INPUT_AUDIO_S + 1) * 8_000), 1), dtype=np.float32), 8_000, subtype="PCM_U8"),
            f"lasts {MAX_INPUT_AUDIO_S + 1:.1f} s; the limit is {MAX_INPUT_AUDIO_S:g} s",
        ),
    }


HOSTILE = _hostile()
GOOD = {
    "WAV": (_encode(_tone(0.5, 22_050, 1), 22_050), "wav"),
    "FLAC": (_encode(_tone(0.5), 44_100, "FLAC", "PCM_24"), "flac"),
}


def _engine_decode(data: bytes) -> np.ndarray:
    """What the engine does with input audio it has read: the same function, the same limit."""
    limit = EngineSettings().max_input_audio_s
    return decode_audio(data, sample_rate=MODEL_RATE_HZ, max_duration_s=limit, what="input audio")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_probe_and_decode_agree(case):
    data, fragment = HOSTILE[case]
    with pytest.raises(BadAudio) as probed:
        probe_audio(data, max_duration_s=MAX_INPUT_AUDIO_S, what="the uploaded file")
    with pytest.raises(BadAudio) as decoded:
        _engine_decode(data)
    assert probed.value.reason == decoded.value.reason
    assert fragment in probed.value.reason
    assert "<" not in str(decoded.value) and "0x7f" not in str(decoded.value)  # no object repr


@pytest.fixture()
def api(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    queue = JobQueue(redis_url, prefix=redis_prefix)
    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create(TENANT)
    key = tenants.issue_key(TENANT)
    inputs = input_resolver_from_settings(storage, tenant_rules=tenants.input_policy)  # the engine's too
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, inputs=inputs)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        yield SimpleNamespace(http=http, storage=storage, inputs=inputs)
    queue.close()


def _read_as_engine(api, uri: str) -> bytes:
    return api.inputs.read(uri, tenant=TENANT, max_bytes=EngineSettings().max_input_bytes)


@pytest.mark.integration
@pytest.mark.parametrize("case", list(HOSTILE))
def test_upload_and_s3_input_refuse_alike(api, case):
    data, fragment = HOSTILE[case]
    response = api.http.post("/v1/uploads", files={"file": ("input.wav", data, "audio/wav")})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_audio", "file")
    assert not api.storage.client.list_objects_v2(Bucket=api.storage.bucket).get("Contents")  # nothing stored

    key = f"{TENANT}/inputs/{uuid.uuid4().hex}.wav"
    api.storage.put(key, data)
    with pytest.raises(BadAudio) as refused:
        _engine_decode(_read_as_engine(api, api.storage.uri(key)))
    assert error["message"] == f"the uploaded file {refused.value.reason}"
    assert fragment in refused.value.reason


@pytest.mark.integration
@pytest.mark.parametrize("case", list(GOOD))
def test_good_wav_and_flac_are_accepted_by_both(api, case):
    data, fmt = GOOD[case]
    response = api.http.post("/v1/uploads", files={"file": (f"input.{fmt}", data, f"audio/{fmt}")})
    assert response.status_code == 201, response.text
    upload = response.json()
    info = sf.info(io.BytesIO(data))
    assert (upload["format"], upload["sample_rate"], upload["frames"]) == (fmt, info.samplerate, info.frames)
    audio = _engine_decode(_read_as_engine(api, upload["uri"]))  # the stored upload, read as an input
    assert audio.ndim == 1 and abs(audio.shape[0] - round(0.5 * MODEL_RATE_HZ)) <= 1
    assert 0.25 < float(np.abs(audio).max()) < 0.35
