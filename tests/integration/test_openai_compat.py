"""The OpenAI-compatible audio endpoints with the official `openai` package pointed at a real
uvicorn server, real Redis and the S3 endpoint, and an engine running the jobs on the tiny preset
(InProcessPools: real model calls, no Ray) in a thread beside it."""

from __future__ import annotations

import io
import threading
import uuid
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from model.prompts import ASR_INSTRUCTION
from orchestrator.api import create_app, serve_in_thread
from orchestrator.api.openai_compat import NamedVoice, OpenAISettings
from orchestrator.audio_codecs import PCM_RATE_HZ, decode_media, encode_delivery
from orchestrator.engine import Engine, EngineSettings
from orchestrator.queue import JobQueue
from orchestrator.sources import RedisSource
from orchestrator.storage import S3Storage, input_resolver_from_settings, make_s3_client
from orchestrator.tenants import TenantStore
from tests.video_files import make_video
from workers.app import InProcessPools
from workers.settings import WorkerSettings

pytestmark = pytest.mark.integration

WORKERS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)


def speech_wav(seconds: float = 0.8, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    sf.write(buf, voice.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pools() -> InProcessPools:
    return InProcessPools.build(WORKERS)


@pytest.fixture()
def service(redis_url, redis_prefix, s3_endpoint, s3_bucket, pools):
    """API + engine over one queue, storage and input resolver; tenants acme and other; the
    deployment's named voice `narrator` lives in its own `voices/` prefix, allowed to all."""
    s3 = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=s3)
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    keys = {}
    for tenant in ("acme", "other"):
        tenants.create(tenant)
        keys[tenant] = tenants.issue_key(tenant)
    s3.put_object(Bucket=s3_bucket, Key="voices/narrator.wav", Body=speech_wav(1.0, 44_100))
    narrator = NamedVoice(uri=f"s3://{s3_bucket}/voices/narrator.wav", transcript="good evening")
    inputs = input_resolver_from_settings(
        storage, tenant_rules=tenants.input_policy, allowed_input_s3=[f"s3://{s3_bucket}/voices/"]
    )
    settings = OpenAISettings(voices={"narrator": narrator}, speech_duration_s=1.0, speech_steps=2, wait_timeout_s=120)
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, inputs=inputs, openai=settings)
    engine = Engine(
        RedisSource(queue, f"engine-{uuid.uuid4().hex[:6]}"),
        storage,
        inputs,
        pools,
        WORKERS.load_config(),
        EngineSettings(max_in_flight=2, claim_block_s=0.1),
    )
    thread = threading.Thread(target=engine.run, name="engine", daemon=True)
    thread.start()
    try:
        with serve_in_thread(app) as url:
            clients = {t: openai.OpenAI(base_url=f"{url}/v1", api_key=k, max_retries=0) for t, k in keys.items()}
            yield SimpleNamespace(url=url, keys=keys, openai=clients, queue=queue, storage=storage, bucket=s3_bucket)
    finally:
        engine.stop()
        thread.join(timeout=60)
        queue.close()


def _job(service, job_id: str):
    record = service.queue.get(job_id)
    assert record is not None and record.tenant == "acme"
    return record


def test_speech_in_every_format_decodes(service):
    client = service.openai["acme"]
    for fmt in ("wav", "flac", "mp3", "opus", "aac", "pcm"):
        raw = client.audio.speech.with_raw_response.create(
            model="tts-1", voice="default", input="Hello there, this is a test.", response_format=fmt
        )
        data = raw.content
        job = _job(service, raw.headers["x-job-id"])
        assert job.status.value == "succeeded" and job.spec.task.value == "tts"
        assert job.spec.transcript == "Hello there, this is a test." and job.spec.voice_prompt_uri is None
        if fmt == "pcm":
            assert raw.headers["content-type"] == "audio/pcm" and raw.headers["x-sample-rate"] == str(PCM_RATE_HZ)
            samples = np.frombuffer(data, dtype="<i2")
            assert len(data) % 2 == 0 and samples.size > 0
            continue
        frames, rate = decode_media(data, max_duration_s=10, what=f"the {fmt} speech")
        assert frames.shape[0] > 0 and np.isfinite(frames).all(), fmt
        if fmt in ("wav", "flac"):
            info = sf.info(io.BytesIO(data))
            assert info.format == fmt.upper() and info.samplerate == 44_100 and info.channels == 2
        expected = {
            "wav": "audio/wav",
            "flac": "audio/flac",
            "mp3": "audio/mpeg",
            "opus": "audio/ogg",
            "aac": "audio/aac",
        }
        assert raw.headers["content-type"] == expected[fmt]
        assert rate == (48_000 if fmt == "opus" else 44_100)
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'audio_omni_api_jobs_submitted_total{kind="job"} 6.0' in metrics  # counted as POST /v1/jobs counts


def test_named_and_uploaded_voices(service):
    client = service.openai["acme"]
    raw = client.audio.speech.with_raw_response.create(
        model="audio-omni", voice="narrator", input="Hi.", response_format="wav"
    )
    job = _job(service, raw.headers["x-job-id"])
    assert job.spec.voice_prompt_uri == f"s3://{service.bucket}/voices/narrator.wav"
    assert job.spec.voice_prompt_text == "good evening"
    assert sf.info(io.BytesIO(raw.content)).frames > 0

    http = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.keys['acme']}"})
    upload = http.post("/v1/uploads", files={"file": ("me.wav", speech_wav(), "audio/wav")}).json()
    for voice in (upload["upload_id"], upload["uri"]):
        raw = client.audio.speech.with_raw_response.create(
            model="tts-1", voice=voice, input="Hi.", response_format="flac"
        )
        job = _job(service, raw.headers["x-job-id"])
        assert job.spec.voice_prompt_uri == upload["uri"] and job.spec.output_format.value == "flac"
        assert sf.info(io.BytesIO(raw.content)).format == "FLAC"
    http.close()

    # Another tenant can name neither the upload's id nor its URI.
    other = service.openai["other"]
    with pytest.raises(openai.BadRequestError, match="no upload with this id"):
        other.audio.speech.create(model="tts-1", voice=upload["upload_id"], input="Hi.")
    with pytest.raises(openai.PermissionDeniedError, match="voice"):
        other.audio.speech.create(model="tts-1", voice=upload["uri"], input="Hi.")


def test_speech_refusals_are_clear_and_queue_nothing(service):
    client = service.openai["acme"]
    with pytest.raises(openai.BadRequestError, match="valid voices: default, narrator"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    with pytest.raises(openai.BadRequestError, match=r"speed: only 1\.0"):
        client.audio.speech.create(model="tts-1", voice="default", input="Hi.", speed=1.5)
    with pytest.raises(openai.BadRequestError, match="instructions: not supported"):
        client.audio.speech.create(model="gpt-4o-mini-tts", voice="default", input="Hi.", instructions="whisper")
    with pytest.raises(openai.BadRequestError, match="model 'dall-e-3' is not served here"):
        client.audio.speech.create(model="dall-e-3", voice="default", input="Hi.")
    with pytest.raises(openai.UnprocessableEntityError, match="response_format"):
        client.audio.speech.create(model="tts-1", voice="default", input="Hi.", response_format="aiff")  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError, match=r"input: .*control characters"):
        client.audio.speech.create(model="tts-1", voice="default", input="Hi.\x00")
    assert sum(service.queue.queue_depths().values()) == 0 and service.queue.running_count() == 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="nope", max_retries=0).audio.speech.create(
            model="tts-1", voice="default", input="Hi."
        )


def test_transcriptions_return_the_thinkers_text(service):
    client = service.openai["acme"]
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("speech.wav", speech_wav(), "audio/wav"), language="en", prompt="Anna"
    )
    result = raw.parse()
    job = _job(service, raw.headers["x-job-id"])
    assert job.spec.task.value == "understand" and job.spec.prompt.startswith(ASR_INSTRUCTION)
    assert "'en'" in job.spec.prompt and job.spec.prompt.endswith("Anna")
    assert job.spec.input_audio_uri.startswith(f"s3://{service.bucket}/acme/uploads/")
    assert isinstance(result.text, str) and result.text == job.extra["text"]

    # An MP3 (not WAV/FLAC) is decoded with PyAV and stored as WAV; response_format=text is plain text.
    frames, rate = decode_media(speech_wav(), max_duration_s=5)
    mp3 = encode_delivery(frames.T, rate, "mp3")
    raw = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("speech.mp3", mp3, "audio/mpeg"), response_format="text"
    )
    assert raw.headers["content-type"].startswith("text/plain")
    job = _job(service, raw.headers["x-job-id"])
    assert job.spec.input_audio_uri.endswith(".wav") and raw.text == job.extra["text"]

    # A video: its audio track is transcribed (stored as WAV); a video without sound is a clear 422.
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("clip.mp4", make_video(audio=True), "video/mp4")
    )
    job = _job(service, raw.headers["x-job-id"])
    assert job.spec.input_audio_uri.endswith(".wav") and raw.parse().text == job.extra["text"]
    with pytest.raises(openai.UnprocessableEntityError, match="file has no audio stream"):
        client.audio.transcriptions.create(model="whisper-1", file=("silent.mp4", make_video(), "video/mp4"))
    with pytest.raises(openai.UnprocessableEntityError, match="file is not a readable audio or video file"):
        client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"not audio at all" * 20, "audio/mpeg"))
    with pytest.raises(openai.BadRequestError, match="model 'tts-1' is not served here"):
        client.audio.transcriptions.create(model="tts-1", file=("s.wav", speech_wav(), "audio/wav"))
    with pytest.raises(openai.BadRequestError, match="language"):
        client.audio.transcriptions.create(
            model="whisper-1", file=("s.wav", speech_wav(), "audio/wav"), language="english!"
        )


def test_a_job_that_outlasts_the_wait_is_a_504_naming_it(redis_url, redis_prefix, tmp_path):
    """No engine runs: the request gives up after its timeout, and the job stays queued."""
    from orchestrator.storage import LocalStorage

    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    settings = OpenAISettings(wait_timeout_s=0.5, speech_steps=2, speech_duration_s=1.0)
    app = create_app(None, queue=queue, storage=LocalStorage(tmp_path / "out"), tenants=tenants, openai=settings)
    with serve_in_thread(app) as url:
        response = httpx.post(
            f"{url}/v1/audio/speech",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "tts-1", "input": "Hi.", "voice": "default"},
        )
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    job_id = response.headers["x-job-id"]
    assert error["code"] == "timeout" and job_id in error["message"] and f"GET /v1/jobs/{job_id}" in error["message"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert queue.get(job_id).status.value == "queued"
    queue.close()
