"""`audio-omni submit | status | cancel | results | dead-letters` on both of their paths: through
the HTTP API (AUDIO_OMNI_API_URL and AUDIO_OMNI_API_KEY set; a real API on loopback over real Redis
and the moto S3 endpoint) and directly on Redis (the operator's path, neither variable set). The
engine is played with the real queue API."""

from __future__ import annotations

import io
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.cli import main
from orchestrator.queue import JobQueue
from orchestrator.storage import S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = pytest.mark.integration

T2A = {"task": "text_to_audio", "prompt": "rain on a tin roof", "duration_s": 1.0, "steps": 2}


def wav_bytes(seconds: float = 0.2, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture()
def api(redis_url, redis_prefix, s3_endpoint, s3_bucket, monkeypatch):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30, max_attempts=1)
    s3 = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=s3)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme", TenantLimits(max_in_flight=20))
    tenants.create("ops", admin=True)
    key, admin_key = tenants.issue_key("acme"), tenants.issue_key("ops")
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings())
    with serve_in_thread(app) as url:
        monkeypatch.setenv("AUDIO_OMNI_API_URL", url)
        monkeypatch.setenv("AUDIO_OMNI_API_KEY", key)
        yield SimpleNamespace(url=url, key=key, admin_key=admin_key, queue=queue, storage=storage)
    queue.close()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def finish(api, count: int = 1) -> list[str]:
    """Play the engine: claim `count` jobs and store a real result for each."""
    done = []
    for _ in range(count):
        (claim,) = api.queue.claim("test-engine", count=1, block_ms=2000)
        location = api.storage.put_result(
            tenant=claim.tenant, job_id=claim.job_id, batch_id=claim.batch_id, metadata={"seed": claim.seed},
            data=wav_bytes(),
        )  # fmt: skip
        api.queue.ack_success(claim, location.result_uri, extra={"metadata_uri": location.metadata_uri})
        done.append(claim.job_id)
    return done


def dead_job(api) -> str:
    """A job that ran out of attempts (the queue allows one)."""
    record = api.queue.submit(_spec("acme"))
    (claim,) = api.queue.claim("test-engine", count=1, block_ms=2000)
    assert claim.job_id == record.job_id
    api.queue.fail(claim, "worker crashed", retryable=True)
    return record.job_id


def _spec(tenant: str):
    from orchestrator.jobs import JobSpec

    return JobSpec.model_validate({**T2A, "tenant": tenant})


# --------------------------------------------------------------------------- through the API


def test_submit_status_cancel_results_through_the_api(api, capsys, tmp_path):
    code, out, _ = cli(capsys, "submit", json.dumps({**T2A, "custom_id": "one"}))
    assert code == 0
    job_id = json.loads(out)["job_id"]
    record = api.queue.get(job_id)
    assert record is not None and record.tenant == "acme"  # the key's tenant, through the API's admission

    code, out, _ = cli(capsys, "status", job_id)
    assert code == 0 and "queued" in out and "custom_id: one" in out
    code, out, _ = cli(capsys, "status", job_id, "--json")
    assert json.loads(out)["job_id"] == job_id

    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("\n".join(json.dumps({**T2A, "seed": i}) for i in range(3)))
    code, out, _ = cli(capsys, "submit", str(manifest), "--idempotency-key", "nightly-1")
    batch = json.loads(out)
    assert code == 0 and batch["jobs"] == 3
    code, out, _ = cli(capsys, "submit", str(manifest), "--idempotency-key", "nightly-1")
    assert json.loads(out)["batch_id"] == batch["batch_id"]  # the same batch, nothing queued twice
    assert sum(api.queue.queue_depths().values()) == 4

    code, out, _ = cli(capsys, "cancel", job_id)
    assert code == 0 and f"{job_id}: cancelled" in out
    finished = finish(api, 3)
    code, out, err = cli(capsys, "results", batch["batch_id"], "--out", str(tmp_path / "res"), "--urls")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == finished
    assert all("http" in line for line in out.splitlines())  # presigned links
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == sorted(
        [f"{j}.wav" for j in finished] + [f"{j}.json" for j in finished]
    )
    code, out, _ = cli(capsys, "status", batch["batch_id"])
    assert "3/3 finished" in out
    code, out, _ = cli(capsys, "results", job_id)
    assert code == 1 and "cancelled" in out  # a job without a result: listed, and the exit code says so

    code, out, _ = cli(capsys, "submit", json.dumps({"steps": [{"id": "a", **T2A}, {"id": "b", **T2A}]}))
    workflow = json.loads(out)
    assert set(workflow["job_ids"]) == {"a", "b"}
    code, out, _ = cli(capsys, "status", workflow["workflow_id"])
    assert f"workflow {workflow['workflow_id']}: queued" in out
    code, out, _ = cli(capsys, "cancel", workflow["workflow_id"])
    assert code == 0 and "workflow cancelled" in out


def test_api_path_refusals_say_what_to_do(api, capsys):
    code, _, err = cli(capsys, "submit", json.dumps(T2A), "--tenant", "other")
    assert code == 1 and "the API key decides the tenant" in err
    code, _, err = cli(capsys, "submit", json.dumps(T2A), "--batch-id", "b1")
    assert code == 1 and "--idempotency-key" in err
    code, _, err = cli(capsys, "submit", json.dumps({"task": "text_to_audio"}))
    assert code == 1 and "422 invalid_field" in err and "prompt" in err
    code, _, err = cli(capsys, "status", "no-such-id")
    assert code == 1 and "no job, workflow or batch 'no-such-id'" in err


def test_submit_with_out_runs_the_manifest_to_the_end(api, capsys, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({**T2A, "custom_id": f"c{i}"}) for i in range(5)))
    stop = threading.Event()

    def engine() -> None:
        while not stop.is_set():
            for claim in api.queue.claim("test-engine", count=5, block_ms=100):
                location = api.storage.put_result(
                    tenant=claim.tenant, job_id=claim.job_id, batch_id=claim.batch_id, metadata={}, data=wav_bytes()
                )
                api.queue.ack_success(claim, location.result_uri, extra={"metadata_uri": location.metadata_uri})

    worker = threading.Thread(target=engine)
    worker.start()
    try:
        code, out, err = cli(capsys, "submit", str(manifest), "--out", str(tmp_path / "run"))
    finally:
        stop.set()
        worker.join()
    assert code == 0, err
    assert json.loads(out)["counts"] == {"succeeded": 5}
    lines = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"c{i}" for i in range(5)]
    assert all((tmp_path / "run" / x["result_path"]).stat().st_size > 0 for x in lines)


def test_dead_letters_through_the_admin_api(api, capsys, monkeypatch):
    job_id = dead_job(api)
    code, _, err = cli(capsys, "dead-letters", "list")
    assert code == 1 and "403" in err and "admin role" in err  # acme is no operator
    monkeypatch.setenv("AUDIO_OMNI_API_KEY", api.admin_key)
    code, out, _ = cli(capsys, "dead-letters", "list", "--json")
    page = json.loads(out)
    assert code == 0 and [item["job_id"] for item in page["items"]] == [job_id]
    assert page["items"][0]["error_code"] == "retries_exhausted"
    code, out, _ = cli(capsys, "dead-letters", "list")
    assert job_id in out and "worker crashed" in out
    code, out, _ = cli(capsys, "dead-letters", "requeue", job_id)
    assert code == 0 and f"{job_id}: queued" in out
    assert api.queue.get(job_id).status.value == "queued"
    code, _, err = cli(capsys, "dead-letters", "requeue", "no-such-job")
    assert code == 1 and "404 not_found" in err


# --------------------------------------------------------------------------- directly on Redis


@pytest.fixture()
def direct(redis_url, redis_prefix, monkeypatch):
    monkeypatch.delenv("AUDIO_OMNI_API_URL", raising=False)
    monkeypatch.delenv("AUDIO_OMNI_API_KEY", raising=False)
    queue = JobQueue(redis_url, prefix=redis_prefix, max_attempts=1)
    yield SimpleNamespace(queue=queue, args=["--redis-url", redis_url, "--redis-prefix", redis_prefix])
    queue.close()


def test_the_direct_path_without_the_api(direct, capsys):
    code, out, _ = cli(capsys, "submit", json.dumps({**T2A, "tenant": "acme"}), "--idempotency-key", "k1", *direct.args)
    job_id = json.loads(out)["job_id"]
    code, out, _ = cli(capsys, "submit", json.dumps({**T2A, "tenant": "acme"}), "--idempotency-key", "k1", *direct.args)
    assert json.loads(out)["job_id"] == job_id  # the key made the second submit return the first job
    code, out, _ = cli(capsys, "status", job_id, *direct.args)
    assert code == 0 and "queued" in out and "acme" in out
    code, out, _ = cli(capsys, "cancel", job_id, *direct.args)
    assert code == 0 and "cancelled" in out
    code, _, err = cli(capsys, "submit", json.dumps(T2A), "--out", "x", *direct.args)
    assert code == 1 and "AUDIO_OMNI_API_URL" in err


def test_dead_letters_directly_on_the_queue(direct, capsys):
    api = SimpleNamespace(queue=direct.queue)
    job_id = dead_job(api)
    code, out, _ = cli(capsys, "dead-letters", *direct.args, "list", "--json")
    assert code == 0 and [item["job_id"] for item in json.loads(out)["items"]] == [job_id]
    code, out, _ = cli(capsys, "dead-letters", *direct.args, "requeue", job_id)
    assert code == 0 and f"{job_id}: queued" in out
    code, out, _ = cli(capsys, "dead-letters", *direct.args, "list")
    assert "no dead-lettered jobs" in out
    cancelled = direct.queue.submit(_spec("acme")).job_id
    direct.queue.cancel(cancelled)
    code, _, err = cli(capsys, "dead-letters", *direct.args, "requeue", cancelled)
    assert code == 1 and "is not dead-lettered (it is cancelled)" in err
