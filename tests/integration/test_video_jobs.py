"""Video in, video out through the whole system.

- `audio-omni batch` (embedded: Serve pools on the session's local Ray, local files) runs a 3 s
  25 fps MP4 as `video_to_audio` with `output_format: "mp4"`, and an understanding job on the same
  file: the result MP4 has one video and one audio stream, the audio as long as the video within
  0.1 s, and the video stream's packets byte-identical to the input's.
- Service mode (real Redis, the S3 endpoint, Serve pools, engine loops): the same good job as an
  `s3://` input beside one job per bad video file; the good one succeeds with the same checks, each
  bad one fails after a single attempt with the reason the upload route gives.
- `POST /v1/uploads` (real API over HTTP): every bad file is refused with a 422 naming the problem
  and nothing is stored; the good file is accepted, described, and readable by the engine.
"""

from __future__ import annotations

import io
import json
import uuid
from types import SimpleNamespace

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.video_files import BAD_VIDEOS, bad_video, make_video, video_packets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANT = "default"
GEN = {"steps": 2, "seed": 3}


def _check_soundtrack(result: bytes, source: bytes) -> None:
    """One video and one audio stream; the audio spans the video; the video packets are the input's."""
    with av.open(io.BytesIO(result)) as container:
        kinds = sorted(s.type for s in container.streams)
        video_s = float(container.streams.video[0].duration * container.streams.video[0].time_base)
        audio_s = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
        assert container.streams.audio[0].codec_context.name == "aac"
    assert kinds == ["audio", "video"]
    assert abs(video_s - 3.0) < 0.05 and abs(audio_s - video_s) < 0.1, (video_s, audio_s)
    assert video_packets(result) == video_packets(source)


@pytest.fixture()
def restore_logging():
    """`audio-omni batch` points the process's logger at the stderr of its moment (capsys's, closed
    after the test): put back the configuration later tests log through."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_video_jobs_in_audio_omni_batch(ray_cluster, tmp_path, capsys, restore_logging):
    from orchestrator.cli import main

    clip = make_video(audio=True)
    (tmp_path / "clip.mp4").write_bytes(clip)
    lines = [
        {"task": "video_to_audio", "video_uri": "clip.mp4", "prompt": "footsteps", "output_format": "mp4", **GEN},
        {"task": "understand", "prompt": "What happens in this video?", "video_uri": "clip.mp4"},
        {"task": "video_to_audio", "video_uri": "bad.mp4", "output_format": "mp4", **GEN},
    ]
    (tmp_path / "bad.mp4").write_bytes(bad_video("truncated_tail"))
    manifest = tmp_path / "video.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--out", str(out), "--preset", "tiny", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1, printed  # one job failed: its input is not a readable video
    assert "is not a readable video file" in printed

    (result,) = list(out.rglob("*.mp4"))
    _check_soundtrack(result.read_bytes(), clip)
    metas = {m["task"]: m for m in (json.loads(p.read_text()) for p in out.rglob("*.json") if p.stem[-1].isdigit())}
    meta = metas["video_to_audio"]
    assert meta["result_object"]["content_type"] == "video/mp4" and abs(meta["duration_s"] - 3.0) < 1e-6
    assert meta["video"]["codec"] == "h264" and meta["video"]["frames"] == 75
    assert meta["timings_s"]["sync"] > 0  # sync features computed from the video, not given
    assert isinstance(metas["understand"]["text"], str) and metas["understand"]["result_object"] is None


# --------------------------------------------------------------------------- service mode


def _service(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.commands.serve import Service, ServiceOptions
    from orchestrator.settings import Settings
    from workers.settings import PoolSettings, WorkerSettings

    settings = Settings(
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_endpoint,
        s3_addressing_style="path",
        lease_s=30.0,
        max_attempts=3,
        backoff_base_s=0.2,
    )
    workers = WorkerSettings(
        preset="tiny",
        app_name=f"t-vid-{uuid.uuid4().hex[:6]}",
        understand_max_new_tokens=4,
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
    )
    return Service(settings, workers, ServiceOptions(drain=True, max_in_flight=8))


def test_video_batch_through_service_mode(
    tmp_path, capsys, monkeypatch, ray_cluster, redis_url, redis_prefix, s3_endpoint, s3_bucket
):
    import boto3

    from orchestrator.cli import main
    from orchestrator.queue import JobQueue

    for name, value in {
        "AUDIO_OMNI_REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": redis_prefix,
        "AUDIO_OMNI_S3_BUCKET": s3_bucket,
        "AUDIO_OMNI_S3_ENDPOINT_URL": s3_endpoint,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    clip = make_video()
    files = {"clip.mp4": clip, **{f"{kind}.mp4": bad_video(kind) for kind in BAD_VIDEOS}}
    for name, data in files.items():
        s3.put_object(Bucket=s3_bucket, Key=f"{TENANT}/inputs/{name}", Body=data)
    uri = {name: f"s3://{s3_bucket}/{TENANT}/inputs/{name}" for name in files}
    lines = [{"task": "video_to_audio", "video_uri": uri["clip.mp4"], "output_format": "mp4", **GEN}]
    lines += [{"task": "video_to_audio", "video_uri": uri[f"{kind}.mp4"], **GEN} for kind in BAD_VIDEOS]
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    assert main(["submit", str(manifest)]) == 0
    batch_id = json.loads(capsys.readouterr().out)["batch_id"]

    service = _service(redis_url, redis_prefix, s3_endpoint, s3_bucket)
    service.start()
    try:
        assert service.wait(timeout_s=300), "the service did not drain the queue in time"
    finally:
        service.stop()
        service.close()

    queue = JobQueue(redis_url, prefix=redis_prefix)
    try:
        records = {
            int(r.job_id.rsplit("-", 1)[-1]): r for r in queue.get_many([f"{batch_id}-{i}" for i in range(len(lines))])
        }
    finally:
        queue.close()
    assert records[0].status.value == "succeeded", records[0]
    for i, kind in enumerate(BAD_VIDEOS, start=1):
        record = records[i]
        assert record.status.value == "failed" and record.attempts == 1, (kind, record)
        error = record.error or ""
        assert error.startswith("input video ") and BAD_VIDEOS[kind] in error, (kind, error)
    key = f"{TENANT}/{batch_id}/{batch_id}-0.mp4"
    head = s3.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentType"] == "video/mp4"
    _check_soundtrack(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read(), clip)


# --------------------------------------------------------------------------- the upload route


@pytest.fixture()
def api(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.api import create_app, serve_in_thread
    from orchestrator.queue import JobQueue
    from orchestrator.storage import S3Storage, input_resolver_from_settings, make_s3_client
    from orchestrator.tenants import TenantStore

    queue = JobQueue(redis_url, prefix=redis_prefix)
    client = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=client)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    inputs = input_resolver_from_settings(storage, tenant_rules=tenants.input_policy)
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, inputs=inputs)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        yield SimpleNamespace(http=http, storage=storage, inputs=inputs, url=url, key=key)
    queue.close()


@pytest.mark.parametrize("kind", sorted(BAD_VIDEOS))
def test_upload_refuses_bad_videos(api, kind):
    from orchestrator.video_io import BadVideo, VideoClip

    data = bad_video(kind)
    response = api.http.post("/v1/uploads", files={"file": (f"{kind}.mp4", data, "video/mp4")})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_video", "file")
    assert BAD_VIDEOS[kind] in error["message"] and error["message"].startswith("the uploaded file ")
    assert not api.storage.client.list_objects_v2(Bucket=api.storage.bucket).get("Contents")  # nothing stored
    with pytest.raises(BadVideo) as refused:  # the engine refuses the same bytes with the same reason
        VideoClip.open(data, what="the uploaded file")
    assert str(refused.value) == error["message"]


def test_upload_accepts_a_video_the_engine_then_reads(api):
    from orchestrator.video_io import VideoClip

    data = make_video(fmt="matroska", rotation=90)
    response = api.http.post("/v1/uploads", files={"file": ("clip.mkv", data, "video/x-matroska")})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["uri"].endswith(".mkv") and upload["size_bytes"] == len(data)
    assert (upload["format"], upload["codec"], upload["width"], upload["height"]) == ("mkv", "h264", 48, 64)
    assert upload["frames"] == 75 and abs(upload["duration_s"] - 3.0) < 1e-6 and upload["fps"] == 25.0
    read = api.inputs.read(upload["uri"], tenant="acme", max_bytes=1 << 20)
    assert read == data and VideoClip.open(read).info.frames == 75
    # the SDK's upload gives the video's view
    from orchestrator.sdk import Client
    from orchestrator.sdk.models import VideoUploadView

    with Client(api.url, api_key=api.key) as client:
        view = client.upload(make_video(), filename="clip.mp4")
    assert isinstance(view, VideoUploadView) and view.format == "mp4" and view.frames == 75
    # audio uploads still work beside it
    wav = io.BytesIO()
    sf.write(wav, np.zeros(4410, np.float32), 44_100, format="WAV")
    response = api.http.post("/v1/uploads", files={"file": ("a.wav", wav.getvalue(), "audio/wav")})
    assert response.status_code == 201 and response.json()["format"] == "wav"
