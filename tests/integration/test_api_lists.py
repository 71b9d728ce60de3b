"""Lists and results over real HTTP (uvicorn on loopback), real Redis and the moto S3 endpoint:
GET /v1/jobs and GET /v1/batches with cursors and filters, GET /v1/batches/{id}/results as paged
JSON Lines, `metadata` / `custom_id` echoed everywhere, `error_code` beside every error, and
webhook URLs checked at submission. The test plays the engine with the real queue calls."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest

from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.queue import JobQueue
from orchestrator.storage import S3Storage, make_s3_client
from orchestrator.tenants import TenantStore

pytestmark = pytest.mark.integration

T2A = {"task": "text_to_audio", "prompt": "rain on a tin roof"}


@pytest.fixture()
def api(redis_url, redis_prefix, s3_endpoint, s3_bucket, monkeypatch):
    monkeypatch.delenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", raising=False)
    s3 = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = S3Storage(s3_bucket, client=s3)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    keys = {}
    for name in ("acme", "other"):
        tenants.create(name)
        keys[name] = tenants.issue_key(name)
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings())
    with (
        serve_in_thread(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['acme']}"}) as http,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['other']}"}) as other,
    ):
        yield SimpleNamespace(url=url, http=http, other=other, queue=queue, storage=storage)
    queue.close()


def finish(api, claim, data: bytes = b"RIFF....WAVEfmt ") -> str:
    """Play the engine for one claimed job: write a result object, acknowledge it."""
    location = api.storage.put_result(
        tenant=claim.tenant, job_id=claim.job_id, batch_id=claim.batch_id, metadata={"seed": claim.seed}, data=data
    )
    api.queue.ack_success(claim, location.result_uri, extra={"metadata_uri": location.metadata_uri})
    return location.result_uri


def all_pages(http: httpx.Client, path: str, **params) -> tuple[list[dict], int]:
    """Follow `next_cursor` to the end: every item and how many pages it took."""
    items, pages, cursor = [], 0, None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = http.get(path, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 1000, "the cursor never ended"


def test_paging_over_250_jobs_returns_each_once_newest_first_with_filters(api):
    batch = api.http.post(
        "/v1/batches", json={"jobs": [{**T2A, "custom_id": f"b{i}", "metadata": {"i": i}} for i in range(200)]}
    )
    assert batch.status_code == 201, batch.text
    batch_id = batch.json()["batch_id"]
    singles = []
    for i in range(50):
        body = {**T2A, "metadata": {"row": i, "tags": ["x", "y"], "nested": {"ok": True}}, "custom_id": f"row-{i}"}
        response = api.http.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        singles.append(response.json()["job_id"])
    theirs = api.other.post("/v1/jobs", json={**T2A, "custom_id": "not yours"}).json()["job_id"]

    items, pages = all_pages(api.http, "/v1/jobs", limit=7)
    ids = [item["job_id"] for item in items]
    assert len(ids) == 250 and len(set(ids)) == 250 and pages == 36  # 35 full pages, then the rest
    assert theirs not in ids
    assert ids[:50] == singles[::-1]  # newest first; the 200 batch jobs share one millisecond
    assert set(ids[50:]) == set(batch.json()["job_ids"])
    first = next(item for item in items if item["job_id"] == singles[3])
    assert first["metadata"] == {"row": 3, "tags": ["x", "y"], "nested": {"ok": True}}
    assert first["custom_id"] == "row-3" and first["error_code"] is None

    # Finish some: 3 succeeded, 2 failed (one permanently, one after its last retry).
    claims = api.queue.claim("engine", count=5, block_ms=2000)
    for claim in claims[:3]:
        finish(api, claim)
    api.queue.fail(claims[3], "input audio is too short", retryable=False, error_code="bad_audio")
    api.queue.fail(claims[4], "the GPU fell over", retryable=False)
    succeeded, _ = all_pages(api.http, "/v1/jobs", status="succeeded", limit=2)
    assert sorted(j["job_id"] for j in succeeded) == sorted(c.job_id for c in claims[:3])
    failed, _ = all_pages(api.http, "/v1/jobs", status="failed", limit=50)
    assert {j["job_id"]: j["error_code"] for j in failed} == {
        claims[3].job_id: "bad_audio",
        claims[4].job_id: "invalid_input",
    }

    in_batch, pages = all_pages(api.http, "/v1/jobs", batch_id=batch_id, limit=30)
    assert [j["job_id"] for j in in_batch] == batch.json()["job_ids"][::-1] and pages == 7
    assert all(j["batch_id"] == batch_id for j in in_batch)
    assert all_pages(api.other, "/v1/jobs", batch_id=batch_id)[0] == []  # another tenant's batch: nothing

    after = api.queue.get(singles[39]).submitted_at
    newer, _ = all_pages(api.http, "/v1/jobs", created_after=after, limit=4)
    assert [j["job_id"] for j in newer] == singles[40:][::-1]
    assert all_pages(api.http, "/v1/jobs", created_after=after, status="succeeded")[0] == []

    # The other tenant sees its own job only.
    assert [j["job_id"] for j in all_pages(api.other, "/v1/jobs")[0]] == [theirs]


def test_list_queries_are_checked(api):
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"batch_id": "../etc"}, "batch_id"),
        ({"created_after": -1}, "created_after"),
    ]:
        response = api.http.get("/v1/jobs", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["field"] == field, response.json()
    # A cursor of one listing is refused by another.
    for _ in range(3):
        api.http.post("/v1/jobs", json=T2A)
    cursor = api.http.get("/v1/jobs", params={"limit": 1}).json()["next_cursor"]
    assert cursor is not None
    response = api.http.get("/v1/batches", params={"cursor": cursor})
    assert response.status_code == 422 and response.json()["error"]["field"] == "cursor"
    assert api.http.get("/v1/jobs").status_code == 200
    assert httpx.get(f"{api.url}/v1/jobs").status_code == 401


def test_batches_are_listed_newest_first_and_results_are_paged_jsonl(api):
    made = []
    for n in (2, 3, 4):
        body = {"jobs": [{**T2A, "custom_id": f"{n}-{i}", "metadata": {"n": n, "i": i}} for i in range(n)]}
        response = api.http.post("/v1/batches", json=body)
        assert response.status_code == 201, response.text
        made.append(response.json())
    api.other.post("/v1/batches", json={"jobs": [T2A]})

    listed, pages = all_pages(api.http, "/v1/batches", limit=2)
    assert [b["batch_id"] for b in listed] == [b["batch_id"] for b in made[::-1]] and pages == 2
    assert [b["total"] for b in listed] == [4, 3, 2] and all(b["counts"]["queued"] == b["total"] for b in listed)
    created = listed[1]["created_at"]
    assert [b["batch_id"] for b in all_pages(api.http, "/v1/batches", created_after=created)[0]] == [
        made[2]["batch_id"]
    ]

    # The last batch: a workflow item too (its steps are jobs of the batch, after the plain items).
    body = {
        "jobs": [
            {**T2A, "custom_id": "first", "metadata": {"k": "v"}},
            {"steps": [{"id": "a", "task": "text_to_audio", "prompt": "wind"}]},
            {**T2A, "custom_id": "third"},
            {**T2A, "custom_id": "fourth"},
        ]
    }
    batch = api.http.post("/v1/batches", json=body).json()
    claims = {c.job_id: c for c in api.queue.claim("engine", count=20, block_ms=2000)}
    ids = batch["job_ids"]
    audio = b"RIFF\x00\x00\x00\x00WAVEfmt audio bytes"
    finish(api, claims[ids[0]], audio)
    api.queue.fail(claims[ids[1]], "input not found: s3://x/y.wav", retryable=False, error_code="input_not_found")

    lines, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = api.http.get(f"/v1/batches/{batch['batch_id']}/results", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines += [json.loads(line) for line in response.text.splitlines()]
        pages += 1
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
    assert pages == 2 and [line["job_id"] for line in lines] == ids
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    done, failed, running = lines[0], lines[1], lines[2]  # the plain items in order, then the step
    assert set(done) == {
        "job_id", "index", "status", "custom_id", "metadata", "result_uri", "result_url", "text", "error", "error_code"
    }  # fmt: skip
    assert (done["status"], done["custom_id"], done["metadata"]) == ("succeeded", "first", {"k": "v"})
    assert httpx.get(done["result_url"]).content == audio  # a presigned URL, no key needed
    assert (failed["status"], failed["error_code"], failed["result_url"]) == ("failed", "input_not_found", None)
    assert "input not found" in failed["error"]
    assert failed["custom_id"] == "third" and failed["metadata"] is None
    assert (running["status"], running["custom_id"], running["result_url"]) == ("running", "fourth", None)
    assert lines[3]["job_id"] == ids[3] and ids[3].endswith("-a")  # the workflow's step comes last

    view = api.http.get(f"/v1/batches/{batch['batch_id']}").json()
    assert view["failures"] == [
        {"job_id": ids[1], "status": "failed", "error": failed["error"], "error_code": "input_not_found"}
    ]
    assert api.other.get(f"/v1/batches/{batch['batch_id']}/results").status_code == 404
    bad = api.http.get(f"/v1/batches/{batch['batch_id']}/results", params={"cursor": "zz"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"


def test_webhook_urls_are_checked_at_submission(api, monkeypatch):
    refused = {
        "http://10.0.0.1/hook": "private",
        "http://169.254.169.254/latest/meta-data": "metadata",
        "http://127.0.0.1:9/hook": "loopback",
        "http://[::1]/hook": "loopback",
    }
    for url in refused:
        response = api.http.post("/v1/jobs", json={**T2A, "webhook_url": url})
        assert response.status_code == 422, (url, response.text)
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("webhook_url_refused", "webhook_url"), error
        assert error["message"].startswith("webhook_url")
    syntax = api.http.post("/v1/jobs", json={**T2A, "webhook_url": "ftp://example.com/hook"})
    assert syntax.status_code == 422 and syntax.json()["error"]["field"] == "webhook_url"

    batch = api.http.post("/v1/batches", json={"jobs": [T2A], "webhook_url": "http://10.1.2.3/b"})
    assert batch.status_code == 422 and batch.json()["error"]["code"] == "webhook_url_refused"
    item = api.http.post("/v1/batches", json={"jobs": [T2A, {**T2A, "webhook_url": "http://192.168.1.1/"}]})
    assert item.status_code == 422 and item.json()["error"]["field"] == "jobs[1].webhook_url"
    workflow = {"steps": [{"id": "a", **T2A}], "webhook_url": "http://172.16.0.1/w"}
    response = api.http.post("/v1/workflows", json=workflow)
    assert response.status_code == 422 and response.json()["error"]["field"] == "webhook_url"
    step = {"steps": [{"id": "a", **T2A, "webhook_url": "http://172.16.0.1/s"}]}
    response = api.http.post("/v1/workflows", json=step)
    assert response.status_code == 422 and response.json()["error"]["field"] == "steps[0].webhook_url"
    assert sum(api.queue.queue_depths().values()) == 0  # nothing refused was queued

    # A public address passes; a loopback receiver passes once the deployment allows it.
    public = api.http.post("/v1/jobs", json={**T2A, "webhook_url": "https://93.184.216.34/hook"})
    assert public.status_code == 201, public.text
    monkeypatch.setenv("AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    allowed = api.http.post("/v1/jobs", json={**T2A, "webhook_url": "http://127.0.0.1:9/hook"})
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["spec"]["webhook_url"] == "http://127.0.0.1:9/hook"
    batch = api.http.post("/v1/batches", json={"jobs": [T2A], "webhook_url": "http://127.0.0.1:9/b"})
    assert batch.status_code == 201, batch.text
    assert api.http.get(f"/v1/batches/{batch.json()['batch_id']}").json()["webhook_url"] == "http://127.0.0.1:9/b"


def test_results_of_an_embedded_storage_point_at_the_api(redis_url, redis_prefix, tmp_path):
    from orchestrator.storage import LocalStorage

    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = LocalStorage(tmp_path)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    tenants.create("acme")
    key = tenants.issue_key("acme")
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, api_settings=ApiSettings())
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        batch = http.post("/v1/batches", json={"jobs": [{**T2A, "custom_id": "only"}]}).json()
        (claim,) = queue.claim("engine", block_ms=2000)
        finish(SimpleNamespace(storage=storage, queue=queue), claim, b"embedded bytes")
        (line,) = [json.loads(x) for x in http.get(f"/v1/batches/{batch['batch_id']}/results").text.splitlines()]
        assert line["result_url"] == f"{url}/v1/jobs/{claim.job_id}/result" and line["custom_id"] == "only"
        assert http.get(line["result_url"]).content == b"embedded bytes"
    queue.close()
