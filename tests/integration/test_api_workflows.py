"""Workflows over the HTTP API (uvicorn on a loopback port), real Redis and the moto S3 endpoint.

No engine runs here: where a step must finish, the test plays the engine with the real queue API
(claim, `put_result` into the real storage, `ack_success`), so what is checked is the API and the
queue's dependency rules: a later step is claimable only after the steps it uses succeeded."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf

from model.prompts import ASR_INSTRUCTION
from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.client import ApiError, Client, WorkflowFailed
from orchestrator.queue import JobQueue
from orchestrator.storage import S3Storage, make_s3_client
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = pytest.mark.integration

GEN = {"duration_s": 1.0, "steps": 2}


def wav_bytes(seconds: float = 0.2, rate: int = 44100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3_client(s3_endpoint):
    return make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")


@pytest.fixture()
def api(redis_url, redis_prefix, s3_client, s3_bucket):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = S3Storage(s3_bucket, client=s3_client)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    keys = {}
    for tenant in ("acme", "other"):
        tenants.create(tenant)
        keys[tenant] = tenants.issue_key(tenant)
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings())
    with (
        serve_in_thread(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['acme']}"}) as http,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['other']}"}) as other,
    ):
        yield SimpleNamespace(
            url=url, key=keys["acme"], http=http, other=other, queue=queue, storage=storage, tenants=tenants
        )
    queue.close()


def own_uri(api, name: str = "clip.wav", tenant: str = "acme") -> str:
    return f"s3://{api.storage.bucket}/{tenant}/inputs/{name}"


def describe_then_generate(api) -> list[dict]:
    return [
        {"id": "describe", "task": "understand", "prompt": "Describe this clip.", "input_audio_uri": own_uri(api)},
        {"id": "generate", "task": "text_to_audio", "prompt": "{{describe.text}}, at night", **GEN},
    ]


def claim_one(api, block_ms: int = 2000):
    claims = api.queue.claim("test-engine", count=1, block_ms=block_ms)
    return claims[0] if claims else None


def finish(api, claim, *, text: str | None = None, data: bytes | None = None) -> None:
    """Play the engine for one claimed step: write its result (metadata only for a text answer)
    into the real storage and acknowledge it."""
    location = api.storage.put_result(
        tenant=claim.tenant, job_id=claim.job_id, batch_id=claim.batch_id, metadata={"seed": claim.seed}, data=data
    )
    extra = {"metadata_uri": location.metadata_uri}
    if text is not None:
        extra["text"] = text
    api.queue.ack_success(claim, location.result_uri or location.metadata_uri, extra=extra)


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    return error


def stored_keys(api) -> list[str]:
    """The Redis keys of this test's jobs and workflows (records, idempotency keys)."""
    prefix = api.queue.keys.prefix
    keys = [k.decode() for k in api.queue.redis.scan_iter(match=prefix + "*", count=1000)]
    return [k for k in keys if k[len(prefix) :].startswith(("job:", "wf:", "wf-idem:", "idem:", "batch"))]


def nothing_queued(api) -> bool:
    return sum(api.queue.queue_depths().values()) == 0 and not stored_keys(api)


# --------------------------------------------------------------------------- happy path


def test_workflow_runs_step_by_step_and_reports_each_step(api, tmp_path):
    response = api.http.post("/v1/workflows", json={"steps": describe_then_generate(api)})
    assert response.status_code == 201, response.text
    wf = response.json()
    wid = wf["workflow_id"]
    assert response.headers["location"] == f"/v1/workflows/{wid}"
    assert wf["status"] == "queued"
    assert [(s["id"], s["job_id"], s["status"]) for s in wf["steps"]] == [
        ("describe", f"{wid}-describe", "queued"),
        ("generate", f"{wid}-generate", "queued"),
    ]
    assert sum(api.queue.queue_depths().values()) == 1  # only the first step has a stream entry

    first = claim_one(api)
    assert first.job_id == f"{wid}-describe" and first.tenant == "acme"
    assert claim_one(api, block_ms=200) is None  # the second step waits for the first
    running = api.http.get(f"/v1/workflows/{wid}").json()
    assert running["status"] == "running" and running["steps"][0]["status"] == "running"

    finish(api, first, text="a siren in the rain")
    after_first = api.http.get(f"/v1/workflows/{wid}").json()
    step0, step1 = after_first["steps"]
    assert after_first["status"] == "running"
    assert step0["status"] == "succeeded" and step0["text"] == "a siren in the rain" and step0["task"] == "understand"
    assert step1["status"] == "queued" and step1["text"] is None and not step1["result_available"]

    second = claim_one(api)
    assert second.job_id == f"{wid}-generate"
    link = second.spec.workflow
    assert link.workflow_id == wid and link.step == "generate" and link.uses == {"describe": f"{wid}-describe"}
    audio = wav_bytes()
    finish(api, second, data=audio)

    with Client(api.url, api.key) as client:
        done = client.wait_workflow(wid, timeout_s=5, poll_s=0.05, raise_on_failure=True)
        assert done.status == "succeeded" and done.failed_step is None
        assert done.steps[1].result_available and done.steps[1].task == "text_to_audio"
        assert client.download(f"{wid}-generate", tmp_path / "gen.wav") == len(audio)  # a step's job id
        assert client.workflow(wid) == done
    assert (tmp_path / "gen.wav").read_bytes() == audio
    assert api.http.get(f"/v1/jobs/{wid}-generate").json()["spec"]["prompt"] == "{{describe.text}}, at night"


def test_sdk_submits_a_list_of_steps_and_raises_on_a_failed_workflow(api):
    with Client(api.url, api.key) as client:
        wf = client.submit_workflow(describe_then_generate(api), idempotency_key="sdk-1")
        assert client.submit_workflow(describe_then_generate(api), idempotency_key="sdk-1") == wf

        failing = threading.Thread(
            target=lambda: api.queue.fail(claim_one(api), "input not found: clip.wav", retryable=False)
        )
        failing.start()
        with pytest.raises(WorkflowFailed, match="ended failed at step 'describe'"):
            client.wait_workflow(wf.workflow_id, timeout_s=10, poll_s=0.05, raise_on_failure=True)
        failing.join()
        ended = client.workflow(wf.workflow_id)
        assert ended.status == "failed" and ended.failed_step == "describe"
        assert ended.error is not None and "input not found" in ended.error
        assert [s.status for s in ended.steps] == ["failed", "cancelled"]
        assert [s.error_code for s in ended.steps] == ["invalid_input", "dependency_failed"]
        assert ended.steps[1].error is not None and "describe" in ended.steps[1].error
        assert claim_one(api, block_ms=200) is None  # the later step never runs

        with pytest.raises(ApiError) as refused:
            client.submit_workflow({"steps": [{"id": "x", "task": "text_to_audio", "prompt": "{{y.text}}"}]})
        assert refused.value.status == 422 and refused.value.field == "steps[0].prompt"


def test_idempotent_replay_returns_the_same_workflow_and_queues_nothing_twice(api):
    body = {"steps": describe_then_generate(api), "idempotency_key": "nightly-42"}
    first = api.http.post("/v1/workflows", json=body)
    assert first.status_code == 201, first.text
    depth = api.queue.queue_depths()
    again = api.http.post("/v1/workflows", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["workflow_id"] == first.json()["workflow_id"]
    assert [s["job_id"] for s in again.json()["steps"]] == [s["job_id"] for s in first.json()["steps"]]
    assert api.queue.queue_depths() == depth
    other_steps = {"steps": [describe_then_generate(api)[0]], "idempotency_key": "nightly-42"}
    assert_error(api.http.post("/v1/workflows", json=other_steps), 409, "conflict", "idempotency_key")
    # Another tenant's same key is its own workflow.
    theirs = api.other.post("/v1/workflows", json={**body, "steps": [UND]})
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["workflow_id"] != first.json()["workflow_id"]


# --------------------------------------------------------------------------- refusals


def _wf(*steps: dict) -> dict:
    return {"steps": list(steps)}


UND = {"id": "describe", "task": "understand", "prompt": "What is this?"}
T2A = {"id": "make", "task": "text_to_audio", "prompt": "rain", **GEN}
EDIT = {"id": "cut", "task": "edit", "op": "remove", "prompt": "dog", **GEN}

REFUSED = [
    ("unknown step", _wf(UND, {**T2A, "prompt": "{{nope.text}}"}), "steps[1].prompt", "nope"),
    ("later step", _wf({**T2A, "prompt": "{{describe.text}}"}, UND), "steps[0].prompt", "comes later"),
    ("itself", _wf({**UND, "prompt": "again: {{describe.text}}"}), "steps[0].prompt", "own output"),
    (
        "cycle",
        _wf(
            {**EDIT, "id": "a", "input_audio_uri": "{{b.audio}}"}, {**EDIT, "id": "b", "input_audio_uri": "{{a.audio}}"}
        ),
        "steps[0].input_audio_uri",
        "comes later",
    ),
    (
        "audio of understand",
        _wf(UND, {**EDIT, "input_audio_uri": "{{describe.audio}}"}),
        "steps[1].input_audio_uri",
        "text",
    ),
    ("text of generation", _wf(T2A, {**UND, "prompt": "{{make.text}}"}), "steps[1].prompt", "audio"),
    ("text as a uri", _wf(UND, {**EDIT, "input_audio_uri": "{{describe.text}}"}), "steps[1].input_audio_uri", "text"),
    ("audio in a text", _wf(T2A, {**UND, "id": "u", "prompt": "{{make.audio}}"}), "steps[1].prompt", "audio"),
    ("malformed", _wf(UND, {**T2A, "prompt": "{{describe}}"}), "steps[1].prompt", "not a reference"),
    ("unclosed", _wf(UND, {**T2A, "prompt": "{{describe.text"}), "steps[1].prompt", "{{"),
    ("over-long", _wf(UND, {**T2A, "prompt": "x" * 1500 + " {{describe.text}}"}), "steps[1].prompt", "limit"),
    ("duplicate id", _wf(UND, {**UND}), "steps[1].id", "already used"),
    ("bad id", _wf({**UND, "id": "Describe!"}), "steps[0].id", "[a-z0-9_-]"),
    ("tenant on a step", _wf({**UND, "tenant": "acme"}), "steps[0].tenant", "workflow"),
    ("reasoning on a step", _wf({**T2A, "reasoning": True}), "steps[0].reasoning", "understand step"),
    ("bad task input", _wf(UND, {**T2A, "steps": 0}), "steps[1].steps", None),
]


@pytest.mark.parametrize(("case", "body", "field", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_each_refusal_is_422_naming_the_step_and_field_and_queues_nothing(api, case, body, field, words):
    error = assert_error(api.http.post("/v1/workflows", json=body), 422, "invalid_field", field)
    index = int(field.split("[", 1)[1].split("]", 1)[0])
    step_id = body["steps"][index]["id"]
    if case != "bad id":  # a malformed id cannot name its step
        assert f"'{step_id}'" in error["message"], error
    if words is not None:
        assert words in error["message"], error
    assert nothing_queued(api), stored_keys(api)


def test_too_many_steps_tenant_limits_and_inputs_are_refused_with_nothing_queued(api):
    many = {"steps": [{**T2A, "id": f"s{i}"} for i in range(17)]}
    assert_error(api.http.post("/v1/workflows", json=many), 422, "invalid_field", "steps")
    api.tenants.update("acme", limits=TenantLimits(max_duration_s=30.0))
    long_step = _wf(UND, {**T2A, "prompt": "{{describe.text}}", "duration_s": 60.0})
    error = assert_error(api.http.post("/v1/workflows", json=long_step), 422, "limit_exceeded", "steps[1].duration_s")
    assert "'make'" in error["message"]
    theirs = _wf({**UND, "input_audio_uri": own_uri(api, tenant="other")})
    assert_error(api.http.post("/v1/workflows", json=theirs), 403, "input_not_allowed", "steps[0].input_audio_uri")
    assert_error(api.http.post("/v1/workflows", json={**_wf(UND), "tenant": "other"}), 403, "forbidden", "tenant")
    assert_error(api.http.post("/v1/workflows", json={**_wf(UND), "batch_id": "b1"}), 422, "invalid_field", "batch_id")
    job = {k: v for k, v in T2A.items() if k != "id"}
    forged = {**job, "workflow": {"workflow_id": "wforged", "step": "make", "uses": {}}}
    error = assert_error(api.http.post("/v1/jobs", json=forged), 422, "invalid_field")
    assert error["field"].startswith("workflow"), error  # only the queue writes a step's link
    assert nothing_queued(api), stored_keys(api)


def test_in_flight_quota_counts_every_step(api):
    api.tenants.update("acme", limits=TenantLimits(max_in_flight=3))
    three = _wf(UND, {**T2A, "prompt": "{{describe.text}}"}, {**T2A, "id": "more", "prompt": "{{describe.text}}"})
    assert api.http.post("/v1/workflows", json=three).status_code == 201
    refused = api.http.post("/v1/workflows", json=_wf(UND))
    assert_error(refused, 429, "quota_exceeded")
    assert "Retry-After" in refused.headers
    api.tenants.update("acme", limits=TenantLimits(max_in_flight=2))  # never room for three steps
    assert_error(api.http.post("/v1/workflows", json=three), 413, "too_large", "steps")


# --------------------------------------------------------------------------- isolation and cancel


def test_another_tenants_workflow_is_404(api):
    wid = api.http.post("/v1/workflows", json={"steps": describe_then_generate(api)}).json()["workflow_id"]
    for method in ("GET", "DELETE"):
        assert_error(api.other.request(method, f"/v1/workflows/{wid}"), 404, "not_found", "workflow_id")
        assert_error(api.http.request(method, "/v1/workflows/wdoesnotexist"), 404, "not_found")
        assert_error(api.http.request(method, "/v1/workflows/a..b"), 404)
    assert_error(api.other.get(f"/v1/jobs/{wid}-describe"), 404)  # its steps are the tenant's jobs
    assert api.http.get(f"/v1/workflows/{wid}").json()["status"] == "queued"  # untouched


def test_delete_cancels_what_has_not_finished(api):
    wid = api.http.post("/v1/workflows", json={"steps": describe_then_generate(api)}).json()["workflow_id"]
    first = claim_one(api)
    cancelled = api.http.delete(f"/v1/workflows/{wid}")
    assert cancelled.status_code == 202, cancelled.text  # the first step is running: it stops at its next stage
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert [s["status"] for s in body["steps"]] == ["running", "cancelled"]
    assert sum(api.queue.queue_depths().values()) == 0  # no step left queued
    assert api.queue.is_cancel_requested(first.job_id)
    api.queue.ack_cancelled(first)
    assert api.http.delete(f"/v1/workflows/{wid}").status_code == 200  # cancelling again is harmless
    assert [s["status"] for s in api.http.get(f"/v1/workflows/{wid}").json()["steps"]] == ["cancelled"] * 2
    assert claim_one(api, block_ms=200) is None

    done = api.http.post("/v1/workflows", json={"steps": [{**T2A}]}).json()["workflow_id"]
    finish(api, claim_one(api), data=wav_bytes())
    assert_error(api.http.delete(f"/v1/workflows/{done}"), 409, "conflict", "workflow_id")

    with Client(api.url, api.key) as client:  # the SDK: a queued workflow cancelled at once
        queued = client.submit_workflow([{**T2A}])
        ended = client.cancel_workflow(queued.workflow_id)
        assert ended.status == "cancelled" and [s.status for s in ended.steps] == ["cancelled"]
        assert client.wait_workflow(queued.workflow_id, timeout_s=2).status == "cancelled"
        with pytest.raises(ApiError) as again:
            client.cancel_workflow(done)
        assert again.value.status == 409
    assert sum(api.queue.queue_depths().values()) == 0


# --------------------------------------------------------------------------- built-in chains and batches


def test_reasoning_and_voice_conversion_from_speech_jobs_expand_into_visible_steps(api):
    reasoning = api.http.post(
        "/v1/jobs", json={"task": "text_to_audio", "prompt": "a busy port", "reasoning": True, **GEN}
    )
    assert reasoning.status_code == 201, reasoning.text
    wf = reasoning.json()
    assert reasoning.headers["location"] == f"/v1/workflows/{wf['workflow_id']}"
    assert [(s["id"], s["task"]) for s in wf["steps"]] == [("reason", "understand"), ("generate", "text_to_audio")]
    reason = api.http.get(f"/v1/jobs/{wf['steps'][0]['job_id']}").json()["spec"]
    generate = api.http.get(f"/v1/jobs/{wf['steps'][1]['job_id']}").json()["spec"]
    assert "a busy port" in reason["prompt"] and reason["prompt"] != "a busy port"
    assert generate["prompt"] == "{{reason.text}}" and not generate.get("reasoning")

    vc = {"task": "voice_conversion", "input_audio_uri": own_uri(api, "speech.wav"), "voice_prompt_uri": own_uri(api)}
    response = api.http.post("/v1/jobs", json={**vc, **GEN})
    assert response.status_code == 201, response.text
    steps = response.json()["steps"]
    assert [(s["id"], s["task"]) for s in steps] == [("transcribe", "understand"), ("convert", "voice_conversion")]
    transcribe = api.http.get(f"/v1/jobs/{steps[0]['job_id']}").json()["spec"]
    convert = api.http.get(f"/v1/jobs/{steps[1]['job_id']}").json()["spec"]
    assert transcribe["prompt"] == ASR_INSTRUCTION and transcribe["input_audio_uri"] == vc["input_audio_uri"]
    assert convert["transcript"] == "{{transcribe.text}}" and convert["voice_prompt_uri"] == vc["voice_prompt_uri"]
    assert "input_audio_uri" not in convert

    depth = api.queue.queue_depths()
    theirs = {**vc, "input_audio_uri": own_uri(api, "speech.wav", tenant="other")}
    assert_error(api.http.post("/v1/jobs", json=theirs), 403, "input_not_allowed", "input_audio_uri")
    tts = api.http.post("/v1/jobs", json={"task": "tts", "transcript": "hi", "reasoning": True})
    assert "reasoning" in {d["field"] for d in assert_error(tts, 422, "invalid_field")["details"]}
    assert api.queue.queue_depths() == depth

    keyed = {"task": "text_to_music", "prompt": "a lullaby", "reasoning": True, "idempotency_key": "k1", **GEN}
    first = api.http.post("/v1/jobs", json=keyed)
    again = api.http.post("/v1/jobs", json=keyed)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["workflow_id"] == first.json()["workflow_id"]


def test_batches_hold_workflows_and_count_their_steps(api):
    plain = {"task": "text_to_audio", "prompt": "wind", **GEN}
    items = [plain, {"steps": describe_then_generate(api)}, {**plain, "prompt": "surf", "reasoning": True}, plain]
    response = api.http.post("/v1/batches", json={"jobs": items}, headers={"Idempotency-Key": "mixed-1"})
    assert response.status_code == 201, response.text
    batch = response.json()
    bid = batch["batch_id"]
    assert batch["total"] == 6 and len(batch["job_ids"]) == 6
    assert batch["job_ids"][:2] == [f"{bid}-0", f"{bid}-1"]
    assert [w["index"] for w in batch["workflows"]] == [1, 2]
    for item in batch["workflows"]:
        wf = api.http.get(f"/v1/workflows/{item['workflow_id']}").json()
        assert wf["batch_id"] == bid and [s["job_id"] for s in wf["steps"]] == item["job_ids"]
    status = api.http.get(f"/v1/batches/{bid}").json()
    assert status["total"] == 6 and status["counts"].get("queued") == 6
    assert sum(api.queue.queue_depths().values()) == 4  # 2 plain + each workflow's first step

    again = api.http.post("/v1/batches", json={"jobs": items}, headers={"Idempotency-Key": "mixed-1"})
    assert again.status_code == 200 and again.json() == batch
    assert sum(api.queue.queue_depths().values()) == 4

    bad = [plain, {"steps": [UND, {**T2A, "prompt": "{{nope.text}}"}]}, {"task": "tts"}]
    error = assert_error(
        api.http.post("/v1/batches", json={"jobs": bad}), 422, "invalid_field", "jobs[1].steps[1].prompt"
    )
    assert {d["field"] for d in error["details"]} == {"jobs[1].steps[1].prompt", "jobs[2].transcript"}
    assert sum(api.queue.queue_depths().values()) == 4
