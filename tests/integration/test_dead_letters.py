"""Dead letters against a real Redis, through the queue and over real HTTP: the dead-letter stream
paged newest first, a dead job requeued (attempts reset, error cleared, its entry gone, its batch
counting it again, no second webhook event for the requeue itself), operators only."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.api import ApiSettings, create_app, serve_in_thread
from orchestrator.jobs import JobStatus
from orchestrator.queue import JobQueue, NotDeadLettered, RequeueRefused
from orchestrator.storage import LocalStorage
from orchestrator.tenants import TenantStore

pytestmark = pytest.mark.integration

HOOK = "https://hooks.example.com/dead"


def t2a(prompt: str, **kw) -> dict:
    return {"task": "text_to_audio", "prompt": prompt, **kw}


@pytest.fixture()
def q(redis_url, redis_prefix):
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=5.0, max_attempts=1, retention_s=600)
    yield queue
    queue.close()


def kill(q: JobQueue, n: int = 1) -> list[str]:
    """Claim `n` jobs and fail each transiently: with max_attempts=1 they are dead at once."""
    claims = q.claim("engine", count=n, block_ms=2000)
    assert len(claims) == n
    for claim in claims:
        assert q.fail(claim, f"GPU fell over on {claim.job_id}", retryable=True) is JobStatus.DEAD
    return [c.job_id for c in claims]


def events(q: JobQueue) -> list[tuple[str, str, str]]:
    return [
        (f[b"object"].decode(), f[b"id"].decode(), f[b"event"].decode())
        for _, f in q.redis.xrange(q.keys.webhook_events)
    ]


def test_dead_letters_are_paged_newest_first(q):
    for i in range(5):
        q.submit(t2a(f"job {i}", tenant="acme" if i % 2 else "other"))
    dead = [kill(q)[0] for _ in range(5)]
    q.redis.xadd(q.keys.stream("normal"), {"not-a-job": "x"})  # a malformed entry is dead-lettered too
    assert q.claim("engine", block_ms=100) == []

    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = q.dead_letters_page(limit=2, cursor=cursor)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 6
    malformed, *jobs = seen
    assert malformed.job_id is None and "malformed stream entry" in malformed.error
    assert [d.job_id for d in jobs] == dead[::-1]
    newest = jobs[0]
    assert (newest.tenant, newest.attempts, newest.error_code) == ("other", 1, "retries_exhausted")
    assert newest.error == f"GPU fell over on {dead[-1]}" and newest.dead_at is not None
    for bad in ({"limit": 0}, {"limit": 501}, {"cursor": "nope"}):
        with pytest.raises(ValueError):
            q.dead_letters_page(**bad)


def test_a_requeued_dead_job_runs_again_from_scratch(q):
    bid, (job_id, other_id) = q.submit_batch([t2a("a", webhook_url=HOOK), t2a("b")], webhook_url=HOOK)
    claims = {c.job_id: c for c in q.claim("engine", count=2, block_ms=2000)}
    q.fail(claims[job_id], "GPU fell over", retryable=True)
    q.ack_success(claims[other_id], "s3://results/b.wav")
    assert events(q) == [("job", job_id, "failed"), ("batch", bid, "completed")]
    assert q.redis.ttl(q.keys.batch(bid)) > 0  # a complete batch expires with its records

    record = q.requeue_dead(job_id)
    assert (record.status, record.attempts, record.error, record.error_code) == (JobStatus.QUEUED, 0, None, None)
    assert [d.job_id for d in q.dead_letters_page()[0]] == []
    status = q.batch_status(bid)
    assert (status.counts[JobStatus.DEAD], status.counts[JobStatus.QUEUED], status.failures_total) == (0, 1, 0)
    assert q.redis.ttl(q.keys.batch(bid)) == -1 and q.redis.ttl(q.keys.job(job_id)) == -1
    assert len(events(q)) == 2  # requeueing announces nothing

    (again,) = q.claim("engine", block_ms=2000)
    assert (again.job_id, again.attempt) == (job_id, 1)
    q.ack_success(again, "s3://results/a.wav")
    assert q.get(job_id).status is JobStatus.SUCCEEDED
    assert events(q)[2:] == [("job", job_id, "succeeded"), ("batch", bid, "completed")]

    with pytest.raises(NotDeadLettered, match="is not dead-lettered \\(it is succeeded\\)"):
        q.requeue_dead(job_id)
    with pytest.raises(NotDeadLettered, match="not found"):
        q.requeue_dead("no-such-job")


def test_a_dead_workflow_step_is_not_requeued_alone(q):
    wf = q.submit_workflow({"steps": [{"id": "only", **t2a("wind")}]})
    (step,) = kill(q)
    with pytest.raises(RequeueRefused, match=f"step of workflow '{wf.workflow_id}'"):
        q.requeue_dead(step)
    assert q.get(step).status is JobStatus.DEAD


def test_dead_letter_routes_are_for_operators_only(redis_prefix, tmp_path, q):
    tenants = TenantStore(q.redis, prefix=redis_prefix)
    tenants.create("ops", admin=True)
    tenants.create("acme")
    keys = {name: tenants.issue_key(name) for name in ("ops", "acme")}
    app = create_app(None, queue=q, storage=LocalStorage(tmp_path), tenants=tenants, api_settings=ApiSettings())
    with serve_in_thread(app) as url:
        ops = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['ops']}"})
        acme = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['acme']}"})
        job = acme.post("/v1/jobs", json=t2a("rain")).json()["job_id"]
        (dead,) = kill(q)
        assert dead == job

        for response in (
            acme.get("/v1/admin/dead-letters"),
            acme.post(f"/v1/admin/dead-letters/{job}/requeue"),
        ):
            assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
        assert httpx.get(f"{url}/v1/admin/dead-letters").status_code == 401

        page = ops.get("/v1/admin/dead-letters", params={"limit": 10}).json()
        assert page["next_cursor"] is None
        (item,) = page["items"]
        assert set(item) == {"entry_id", "job_id", "tenant", "error", "error_code", "attempts", "dead_at"}
        assert (item["job_id"], item["tenant"], item["error_code"], item["attempts"]) == (
            job,
            "acme",
            "retries_exhausted",
            1,
        )
        bad = ops.get("/v1/admin/dead-letters", params={"cursor": "x"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"

        requeued = ops.post(f"/v1/admin/dead-letters/{job}/requeue")
        assert requeued.status_code == 200, requeued.text
        assert (requeued.json()["status"], requeued.json()["attempts"], requeued.json()["error_code"]) == (
            "queued",
            0,
            None,
        )
        assert acme.get(f"/v1/jobs/{job}").json()["status"] == "queued"  # its tenant sees it queued
        assert ops.get("/v1/admin/dead-letters").json()["items"] == []
        again = ops.post(f"/v1/admin/dead-letters/{job}/requeue")
        assert again.status_code == 404 and "not dead-lettered" in again.json()["error"]["message"]

        wf = acme.post("/v1/workflows", json={"steps": [{"id": "s", **t2a("wind")}]}).json()
        step_id = wf["steps"][0]["job_id"]
        assert sorted(kill(q, 2)) == sorted([job, step_id])  # the requeued job and the step die
        step = ops.post(f"/v1/admin/dead-letters/{step_id}/requeue")
        assert step.status_code == 409 and step.json()["error"]["code"] == "conflict"
        ops.close()
        acme.close()
