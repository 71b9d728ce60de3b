"""Service mode end to end: `submit` a mixed JSONL batch to real Redis, run the service (Serve pools
on the session's local Ray + engine loops) until the queue drains, fetch the results from a real S3
endpoint with `results`, and read `/metrics`."""

from __future__ import annotations

import io
import json
import socket
import urllib.request
import uuid

import boto3
import numpy as np
import pytest
import soundfile as sf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE_HZ = 44_100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wav(seconds: float, rate: int = RATE_HZ) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture()
def env(monkeypatch, redis_url, redis_prefix, s3_endpoint, s3_bucket):
    """The CLI commands read their connections from the environment, as in production."""
    monkeypatch.setenv("AUDIO_OMNI_REDIS_URL", redis_url)
    monkeypatch.setenv("AUDIO_OMNI_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("AUDIO_OMNI_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("AUDIO_OMNI_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AUDIO_OMNI_S3_ADDRESSING_STYLE", "path")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    return client, s3_bucket


def _upload_inputs(client, bucket: str) -> dict[str, str]:
    """Inputs under the tenant's own prefix (the only place a tenant may read by default)."""
    rng = np.random.default_rng(0)
    objects = {
        "source.wav": _wav(1.5, rate=22_050),
        "voice.wav": _wav(1.0),
        "long.wav": _wav(7.0),
        "corrupt.wav": b"RIFF....WAVEfmt garbage" * 20,
        "frames.npy": _npy(rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)),
        "sync.npy": _npy((0.1 * rng.standard_normal((240, 768))).astype(np.float32)),
    }
    for name, data in objects.items():
        client.put_object(Bucket=bucket, Key=f"default/inputs/{name}", Body=data)
    return {name: f"s3://{bucket}/default/inputs/{name}" for name in objects}


def _service(redis_url, redis_prefix, s3_endpoint, s3_bucket, **options):
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
        max_attempts=2,
        backoff_base_s=0.2,
    )
    workers = WorkerSettings(
        preset="tiny",  # the system under test, not the model: the fastest preset
        app_name=f"t-svc-{uuid.uuid4().hex[:6]}",
        understand_max_new_tokens=4,
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.2),
    )
    return Service(settings, workers, ServiceOptions(**options))


def test_mixed_batch_through_service_mode(tmp_path, capsys, ray_cluster, env, redis_url, redis_prefix, s3_endpoint):
    from orchestrator.cli import main

    client, bucket = env
    uri = _upload_inputs(client, bucket)
    gen = {"duration_s": 1.0, "steps": 2}
    lines = [
        {"task": "understand", "prompt": "what is this?", "input_audio_uri": uri["source.wav"]},
        {"task": "text_to_audio", "prompt": "wind", "seed": 1, "output_format": "flac", **gen},
        {"task": "text_to_music", "prompt": "piano", "seed": 2, **gen},
        {"task": "tts", "transcript": "hi there", "voice_prompt_uri": uri["voice.wav"], **gen},
        {"task": "video_to_audio", "video_uri": uri["frames.npy"], "sync_feature_uri": uri["sync.npy"], **gen},
        {"task": "video_to_music", "video_uri": uri["frames.npy"], "prompt": "strings", **gen},
        {"task": "edit", "op": "add", "prompt": "a dog", "input_audio_uri": uri["source.wav"], **gen},
        {"task": "edit", "op": "remove", "prompt": "hum", "input_audio_uri": uri["source.wav"], **gen},
        {"task": "edit", "op": "extract", "prompt": "tone", "input_audio_uri": uri["source.wav"], **gen},
        {
            "task": "edit",
            "op": "style_transfer",
            "source_prompt": "a tone",
            "prompt": "an organ",
            "input_audio_uri": uri["source.wav"],
            **gen,
        },
        {"task": "voice_conversion", "transcript": "the fox", "voice_prompt_uri": uri["voice.wav"], **gen},
        # bad inputs: each fails alone with its reason
        {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": uri["corrupt.wav"], **gen},
        {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": uri["long.wav"], **gen},
        {
            "task": "edit",
            "op": "add",
            "prompt": "x",
            "input_audio_uri": f"s3://{bucket}/default/inputs/nope.wav",
            **gen,
        },
    ]
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    assert main(["submit", str(manifest)]) == 0
    batch_id = json.loads(capsys.readouterr().out)["batch_id"]

    port = _free_port()
    service = _service(
        redis_url,
        redis_prefix,
        s3_endpoint,
        bucket,
        drain=True,
        max_in_flight=8,
        metrics_port=port,
        max_input_audio_s=5.0,
    )
    service.start()
    try:
        assert service.wait(timeout_s=420), "the service did not drain the queue in time"
        service._stop.set()  # final housekeeping pass is not needed; read metrics now
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        hist = service.pools.sampler_stats()
    finally:
        service.stop()
        service.close()

    # status: counts and the three failures with their reasons
    assert main(["status", batch_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["total"] == len(lines) and status["finished"] == len(lines)
    assert status["counts"] == {"succeeded": 11, "failed": 3}, status
    errors = {f["job_id"].rsplit("-", 1)[-1]: f["error"] for f in status["failures"]}
    assert "not a readable audio file" in errors["11"]
    assert "lasts 7.0 s; the limit is 5 s" in errors["12"]
    assert "nope.wav" in errors["13"]

    # results: download everything
    out = tmp_path / "results"
    assert main(["results", batch_id, "--out", str(out)]) == 1  # 1: some jobs did not succeed
    capsys.readouterr()
    meta0 = json.loads((out / f"{batch_id}-0.json").read_text())
    assert meta0["task"] == "understand" and isinstance(meta0["text"], str) and meta0["result_object"] is None
    for i in range(1, 11):
        fmt = "flac" if i == 1 else "wav"
        audio_bytes = (out / f"{batch_id}-{i}.{fmt}").read_bytes()
        info = sf.info(io.BytesIO(audio_bytes))
        meta = json.loads((out / f"{batch_id}-{i}.json").read_text())
        assert info.samplerate == 44_100 and info.channels == 2, (i, info)
        if lines[i]["task"] not in ("tts", "voice_conversion"):  # speech is trimmed to the voice
            assert abs(info.duration - 1.0) < 1e-3, (i, info.duration)
        assert meta["sample_rate"] == 44_100 and abs(meta["duration_s"] - info.duration) < 1e-3
        assert meta["seed"] >= 0 and meta["model_version"] == "tiny-random"
        assert meta["timings_s"]["generate"] > 0 and meta["spec"]["task"] == lines[i]["task"]
        assert meta["result_object"]["size_bytes"] == len(audio_bytes)
    assert meta0["seed"] >= 0

    # one result object (plus its metadata) per succeeded job, nothing else under results
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"default/{batch_id}/").get("Contents", [])]
    assert len(keys) == 11 + 10  # 11 metadata JSON, 10 audio files (understanding has no audio)

    # metrics
    assert 'audio_omni_jobs_total{status="succeeded"} 11.0' in metrics
    assert 'audio_omni_jobs_total{status="failed"} 3.0' in metrics
    assert 'audio_omni_stage_seconds_count{stage="generate"}' in metrics
    assert 'audio_omni_queue_depth{priority="normal"} 0.0' in metrics
    assert "audio_omni_sampler_batch_size_count" in metrics
    assert sum(hist.values()) >= 1


def test_cancel_and_status_of_a_queued_job(env, capsys, redis_url, redis_prefix):
    from orchestrator.cli import main

    assert main(["submit", json.dumps({"task": "text_to_audio", "prompt": "rain", "steps": 2})]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    assert main(["status", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "queued"
    assert main(["cancel", job_id]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["submit", json.dumps({"task": "text_to_audio", "steps": 2})]) == 1  # no prompt
    assert "prompt" in capsys.readouterr().err
    assert main(["status", "no-such-job"]) == 1
