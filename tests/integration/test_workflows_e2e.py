"""Workflows end to end (issue 18), on real Redis, the S3 endpoint and the session's local Ray, with
the `tiny` preset (the system under test, not the model):

- service mode: the HTTP API and the SDK submit workflows; `Service` (the code behind
  `audio-omni serve`: Serve pools + engine loops) runs them; understand -> text_to_audio through
  `{{describe.text}}`; edit(remove) -> edit(add) on `{{first.audio}}` -> understand on
  `{{second.audio}}`; the two built-in chains (`reasoning: true`, voice conversion from speech);
  every step's metadata records what it resolved, and reads the previous step's stored result;
- embedded mode: `audio-omni batch` runs a manifest with a workflow line beside a plain job.

One module starts Ray work: both tests share the session's cluster."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GEN = {"duration_s": 1.0, "steps": 2}
TIMEOUT_S = 480


def _wav(seconds: float, rate: int = 22_050, freq: float = 330.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def words(text: str) -> list[str]:
    """A text as a reference brings it into a field: control characters and runs of space aside."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).split()


def _service(redis_url: str, redis_prefix: str, s3_endpoint: str, s3_bucket: str):
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
        preset="tiny",
        app_name=f"t-wf-{uuid.uuid4().hex[:6]}",
        understand_max_new_tokens=4,
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.05),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
    )
    return Service(settings, workers, ServiceOptions(max_in_flight=6))


def test_workflows_in_service_mode(ray_cluster, redis_url, redis_prefix, s3_endpoint, s3_bucket):
    from orchestrator.api import ApiSettings, create_app, serve_in_thread
    from orchestrator.client import Client
    from orchestrator.queue import JobQueue
    from orchestrator.storage import S3Storage, make_s3_client
    from orchestrator.tenants import TenantStore

    queue = JobQueue(redis_url, prefix=redis_prefix)
    storage = S3Storage(
        s3_bucket, client=make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    )
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings())
    service = _service(redis_url, redis_prefix, s3_endpoint, s3_bucket)
    with serve_in_thread(app) as url, Client(url, key) as client:
        clip = client.upload(_wav(1.5), filename="clip.wav").uri
        speech = client.upload(_wav(1.0, freq=180.0), filename="speech.wav").uri
        voice = client.upload(_wav(1.0, rate=44_100), filename="voice.wav").uri
        describe = client.submit_workflow(
            [
                {"id": "describe", "task": "understand", "prompt": "Describe this clip.", "input_audio_uri": clip},
                {"id": "generate", "task": "text_to_audio", "prompt": "the sound of {{describe.text}}", **GEN},
            ]
        )
        chain = client.submit_workflow(
            [
                {"id": "first", "task": "edit", "op": "remove", "prompt": "hum", "input_audio_uri": clip, **GEN},
                {"id": "second", "task": "edit", "op": "add", "prompt": "a bell", "input_audio_uri": "{{first.audio}}"}
                | GEN,
                {
                    "id": "check",
                    "task": "understand",
                    "prompt": "What do you hear?",
                    "input_audio_uri": "{{second.audio}}",
                },
            ]
        )
        reasoning = client.submit({"task": "text_to_audio", "prompt": "a harbour at dawn", "reasoning": True, **GEN})
        vc = client.submit({"task": "voice_conversion", "input_audio_uri": speech, "voice_prompt_uri": voice, **GEN})
        service.start()
        try:
            done = {
                name: client.wait_workflow(wf.workflow_id, timeout_s=TIMEOUT_S, poll_s=0.5).model_dump(mode="json")
                for name, wf in (("describe", describe), ("chain", chain), ("reasoning", reasoning), ("vc", vc))
            }
        finally:
            service.stop()
            service.wait(timeout_s=120)
            service.close()
    for name, wf in done.items():
        assert wf["status"] == "succeeded", (name, wf)

    def record(step: dict):
        rec = queue.get(step["job_id"])
        assert rec is not None and rec.status.value == "succeeded"
        return rec

    def metadata(step: dict) -> dict:
        rec = record(step)
        return json.loads(storage.get(storage.key_of(rec.extra["metadata_uri"])))

    # understand -> text_to_audio: the second step's metadata shows the substituted prompt
    answer, generated = done["describe"]["steps"]
    meta = metadata(generated)
    assert answer["text"] is not None
    assert words(meta["resolved"]["prompt"]) == words(f"the sound of {answer['text']}")
    assert meta["workflow_id"] == describe.workflow_id and meta["step"] == "generate"
    assert meta["result_object"]["size_bytes"] > 0

    # edit(remove) -> edit(add) -> understand: each step read the previous step's stored result
    first, second, check = done["chain"]["steps"]
    assert metadata(second)["resolved"]["input_audio_uri"] == record(first).result_uri
    assert metadata(check)["resolved"]["input_audio_uri"] == record(second).result_uri
    assert record(first).result_uri.startswith(f"s3://{s3_bucket}/acme/")
    assert check["text"] is not None

    # built-in chains, visible as steps
    reason, generate = done["reasoning"]["steps"]
    assert (reason["id"], generate["id"]) == ("reason", "generate")
    gen_meta = metadata(generate)
    assert words(gen_meta["resolved"]["prompt"]) == words(reason["text"])
    assert gen_meta["original_prompt"] == "a harbour at dawn"
    transcribe, convert = done["vc"]["steps"]
    assert words(metadata(convert)["resolved"]["transcript"]) == words(transcribe["text"])

    # every step has exactly one result object (plus its metadata JSON) and nothing was run twice
    keys = [o["Key"] for o in storage.client.list_objects_v2(Bucket=s3_bucket, Prefix="acme/")["Contents"]]
    for wf in done.values():
        for step in wf["steps"]:
            mine = [k for k in keys if Path(k).stem == step["job_id"]]
            want = 1 if step["task"] == "understand" else 2
            assert len(mine) == want, (step, mine)
            assert record(step).attempts == 1
    queue.close()


@pytest.fixture()
def restore_logging():
    """`audio-omni batch` points the process's logger at the stderr of its moment (here capsys's,
    closed after the test): put back the configuration the later tests log through."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_workflow_lines_in_audio_omni_batch(ray_cluster, tmp_path, capsys, restore_logging):
    from orchestrator.cli import main

    (tmp_path / "clip.wav").write_bytes(_wav(1.5))
    lines = [
        {"task": "text_to_audio", "prompt": "wind", "seed": 1, **GEN},
        {
            "steps": [
                {
                    "id": "describe",
                    "task": "understand",
                    "prompt": "Describe this clip.",
                    "input_audio_uri": "clip.wav",
                },
                {"id": "generate", "task": "text_to_audio", "prompt": "the sound of {{describe.text}}", **GEN},
            ]
        },
    ]
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "out"
    code = main(
        ["batch", str(manifest), "--out", str(out), "--preset", "tiny", "--no-progress", "--max-batch-size", "2"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "/describe" in printed and "/generate" in printed  # the summary names the steps
    metas = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert len(metas) == 3
    (describe,) = [m for m in metas if m.get("step") == "describe"]
    (generate,) = [m for m in metas if m.get("step") == "generate"]
    assert words(generate["resolved"]["prompt"]) == words(f"the sound of {describe['text']}")
    assert generate["workflow_id"] == describe["workflow_id"]
    assert len(list(out.rglob("*.wav"))) == 2  # the plain job's audio and the generate step's


def test_cli_submits_status_cancels_and_lists_workflows(tmp_path, capsys, monkeypatch, redis_url, redis_prefix):
    """`audio-omni submit | status | cancel | results` on workflows (Redis only: nothing runs)."""
    from orchestrator.cli import main
    from orchestrator.queue import JobQueue

    monkeypatch.setenv("AUDIO_OMNI_REDIS_URL", redis_url)
    monkeypatch.setenv("AUDIO_OMNI_REDIS_PREFIX", redis_prefix)
    steps = [
        {"id": "describe", "task": "understand", "prompt": "What is it?", "input_audio_uri": "s3://b/default/in/a.wav"},
        {"id": "generate", "task": "text_to_audio", "prompt": "the sound of {{describe.text}}", **GEN},
    ]
    wf_file = tmp_path / "wf.json"
    wf_file.write_text(json.dumps({"steps": steps}))
    assert main(["submit", str(wf_file)]) == 0
    created = json.loads(capsys.readouterr().out)
    wid = created["workflow_id"]
    assert created["status"] == "queued"
    assert created["job_ids"] == {"describe": f"{wid}-describe", "generate": f"{wid}-generate"}

    assert main(["status", wid, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "queued" and [s["id"] for s in status["steps"]] == ["describe", "generate"]
    assert main(["status", wid]) == 0
    assert f"workflow {wid}: queued" in capsys.readouterr().out

    # a JSONL batch: a plain job, a workflow line and a job that is a built-in chain
    batch = tmp_path / "mixed.jsonl"
    plain = {"task": "text_to_audio", "prompt": "wind", **GEN}
    batch.write_text(
        "\n".join(json.dumps(x) for x in (plain, {"steps": steps}, {**plain, "prompt": "surf", "reasoning": True}))
    )
    assert main(["submit", str(batch), "--batch-id", "bmixed"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    assert submitted["batch_id"] == "bmixed" and submitted["jobs"] == 5
    assert [w["line"] for w in submitted["workflows"]] == [2, 3]
    assert main(["submit", str(batch), "--batch-id", "bmixed"]) == 0  # idempotent: nothing twice
    assert json.loads(capsys.readouterr().out) == submitted
    with JobQueue(redis_url, prefix=redis_prefix) as queue:
        assert queue.batch_status("bmixed").total == 5
        assert sum(queue.queue_depths().values()) == 1 + 3  # wf + plain + each workflow's first step
    assert main(["results", "bmixed"]) == 1  # nothing has run: every job of the batch listed as queued
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 5 and all("  queued" in line for line in listed), listed

    # a refused workflow names the step and field; nothing is queued
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"steps": [steps[1]]}))
    assert main(["submit", str(bad)]) == 1
    assert "specs[0].steps.0.prompt" in capsys.readouterr().err

    assert main(["cancel", wid]) == 0
    assert f"{wid}: workflow cancelled" in capsys.readouterr().out
    assert main(["results", wid]) == 1  # no step succeeded
    listed = capsys.readouterr().out
    assert f"{wid}-describe  cancelled" in listed and f"{wid}-generate  cancelled" in listed
