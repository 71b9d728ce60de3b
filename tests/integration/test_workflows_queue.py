"""Workflows on the Redis queue (real Redis, no engine): a step is claimable only once the steps it
uses have succeeded; a failed or dead step fails the workflow by name and the later steps end
`cancelled` without ever being claimed; cancelling leaves nothing queued; idempotency; batches
count steps; a small DAG; a step retried after a transient fault still releases its dependents.

Every key lives under the per-test `redis_prefix`, which the fixture deletes afterwards.
"""

from __future__ import annotations

import time

import pytest
import redis

from orchestrator.jobs import JobStatus
from orchestrator.queue import JobQueue, WorkflowNotFound
from orchestrator.workflows import WorkflowState

pytestmark = pytest.mark.integration

SOURCE = "s3://inputs/default/street.wav"


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture()
def q(client, redis_prefix) -> JobQueue:
    return JobQueue(client, prefix=redis_prefix, lease_s=5.0, backoff_base_s=0.05, backoff_max_s=0.2, retention_s=600)


def chain(**extra) -> dict:
    """describe (understand) -> score (text_to_audio from the answer) -> layer (edit of that audio)."""
    return {
        "steps": [
            {"id": "describe", "task": "understand", "prompt": "What is going on here?", "input_audio_uri": SOURCE},
            {"id": "score", "task": "text_to_audio", "prompt": "A soundtrack for: {{describe.text}}"},
            {"id": "layer", "task": "edit", "op": "add", "prompt": "light rain", "input_audio_uri": "{{score.audio}}"},
        ],
        **extra,
    }


def claim_ids(q: JobQueue, count: int = 10) -> list[str]:
    return sorted(c.job_id for c in q.claim("c1", count=count))


def stream_entries(client, q: JobQueue) -> int:
    return sum(client.xlen(s) for s in q.keys.streams())


def by_id(status) -> dict:
    return {s.id: s for s in status.steps}


def test_a_step_becomes_claimable_only_after_the_steps_it_uses_succeed(q, client):
    wf = q.submit_workflow(chain())
    ids = {s.id: s.job_id for s in wf.steps}
    assert [s.id for s in wf.steps] == ["describe", "score", "layer"]
    assert wf.status is WorkflowState.QUEUED and all(s.status is JobStatus.QUEUED for s in wf.steps)
    assert stream_entries(client, q) == 1  # only the first step has a stream entry
    assert q.queue_depths()["normal"] == 1

    (first,) = q.claim("c1", count=10)
    assert first.job_id == ids["describe"]
    assert q.claim("c1", count=10) == []  # score waits for describe
    q.ack_success(first, "s3://results/describe.json", {"text": "a busy street"})

    (second,) = q.claim("c1", count=10)
    assert second.job_id == ids["score"]
    assert second.spec.workflow is not None and second.spec.workflow.uses == {"describe": ids["describe"]}
    status = q.workflow_status(wf.workflow_id)
    assert status is not None and status.status is WorkflowState.RUNNING
    assert by_id(status)["describe"].text == "a busy street"
    assert q.claim("c1", count=10) == []  # layer waits for score
    q.ack_success(second, "s3://results/score.wav")

    (third,) = q.claim("c1", count=10)
    assert third.job_id == ids["layer"]
    q.ack_success(third, "s3://results/layer.wav")
    done = q.workflow_status(wf.workflow_id)
    assert done is not None and done.status is WorkflowState.SUCCEEDED
    assert all(s.status is JobStatus.SUCCEEDED and s.result_available for s in done.steps)
    assert done.failed_step is None and done.error is None
    # Finished: the workflow and its steps' records expire together after the retention.
    assert 0 < client.ttl(q.keys.workflow(wf.workflow_id)) <= 600
    assert all(0 < client.ttl(q.keys.job(j)) <= 600 for j in ids.values())


@pytest.mark.parametrize("outcome", ["failed", "dead"])
def test_a_failed_first_step_fails_the_workflow_and_later_steps_never_run(client, redis_prefix, outcome):
    q = JobQueue(client, prefix=redis_prefix, lease_s=5.0, max_attempts=1, retention_s=600)
    wf = q.submit_workflow(chain())
    (first,) = q.claim("c1")
    assert q.fail(first, "the input is silent", retryable=outcome == "dead") is JobStatus(outcome)

    status = q.workflow_status(wf.workflow_id)
    assert status is not None and status.status is WorkflowState.FAILED
    assert status.failed_step == "describe" and status.error == "the input is silent"
    steps = by_id(status)
    assert steps["describe"].status is JobStatus(outcome)
    for later in ("score", "layer"):
        assert steps[later].status is JobStatus.CANCELLED
        assert steps[later].error == f"not run: step 'describe' {outcome}"
    assert q.claim("c1", count=10) == []
    assert stream_entries(client, q) == 0 and q.queue_depths() == {"high": 0, "normal": 0, "low": 0}


def test_cancelling_a_running_workflow_leaves_no_step_queued(q, client):
    wf = q.submit_workflow(chain())
    (first,) = q.claim("c1")
    status = q.cancel_workflow(wf.workflow_id)
    assert status.status is WorkflowState.CANCELLED
    steps = by_id(status)
    assert steps["describe"].status is JobStatus.RUNNING and q.is_cancel_requested(first.job_id)
    assert steps["score"].status is steps["layer"].status is JobStatus.CANCELLED
    assert steps["score"].error == "not run: workflow cancelled"
    assert not any(s.status is JobStatus.QUEUED for s in status.steps)
    assert q.queue_depths() == {"high": 0, "normal": 0, "low": 0}

    q.ack_cancelled(first)  # the engine saw the cancel between stages
    final = q.workflow_status(wf.workflow_id)
    assert final is not None and final.status is WorkflowState.CANCELLED and final.failed_step is None
    assert all(s.status is JobStatus.CANCELLED for s in final.steps)
    assert q.claim("c1", count=10) == []
    with pytest.raises(WorkflowNotFound, match="workflow 'w-unknown' not found"):
        q.cancel_workflow("w-unknown")
    assert q.workflow_status("w-unknown") is None


def test_cancelling_one_step_cancels_its_workflow(q):
    wf = q.submit_workflow(chain())
    ids = {s.id: s.job_id for s in wf.steps}
    assert q.cancel(ids["describe"]) is JobStatus.CANCELLED
    status = q.workflow_status(wf.workflow_id)
    assert status is not None and status.status is WorkflowState.CANCELLED
    assert all(s.status is JobStatus.CANCELLED for s in status.steps)


def test_a_finished_workflow_is_not_cancelled_afterwards(q):
    wf = q.submit_workflow({"steps": [{"id": "only", "task": "text_to_audio", "prompt": "birdsong"}]})
    (claim,) = q.claim("c1")
    q.ack_success(claim, "s3://results/only.wav")
    assert q.cancel_workflow(wf.workflow_id).status is WorkflowState.SUCCEEDED


def test_an_idempotency_key_returns_the_same_workflow(q, client):
    first = q.submit_workflow(chain(idempotency_key="order-17"))
    again = q.submit_workflow(chain(idempotency_key="order-17"))
    assert again.workflow_id == first.workflow_id
    assert [s.job_id for s in again.steps] == [s.job_id for s in first.steps]
    assert stream_entries(client, q) == 1
    other_tenant = q.submit_workflow(chain(idempotency_key="order-17", tenant="acme"))
    assert other_tenant.workflow_id != first.workflow_id and other_tenant.tenant == "acme"
    # A job with the same key is a different thing: the namespaces are separate.
    job = q.submit({"task": "text_to_audio", "prompt": "birdsong", "idempotency_key": "order-17"})
    assert job.job_id not in {s.job_id for s in first.steps}


def test_batch_counters_count_steps(q):
    wf = q.submit_workflow(chain(batch_id="nightly"))
    assert wf.batch_id == "nightly"
    batch = q.batch_status("nightly")
    assert batch is not None and batch.total == 3 and batch.counts[JobStatus.QUEUED] == 3
    (first,) = q.claim("c1")
    q.ack_success(first, "s3://results/describe.json", {"text": "a street"})
    (second,) = q.claim("c1")
    q.fail(second, "sampler rejected the request", retryable=False)
    batch = q.batch_status("nightly")
    assert batch is not None
    counts = {k: v for k, v in batch.counts.items() if v}
    assert counts == {JobStatus.SUCCEEDED: 1, JobStatus.FAILED: 1, JobStatus.CANCELLED: 1}
    assert batch.done and [f.job_id for f in batch.failures] == [second.job_id]


def test_a_dag_joins_two_independent_first_steps(q):
    wf = q.submit_workflow(
        {
            "steps": [
                {"id": "left", "task": "understand", "prompt": "Describe it.", "input_audio_uri": SOURCE},
                {"id": "right", "task": "text_to_audio", "prompt": "distant thunder"},
                {
                    "id": "join",
                    "task": "edit",
                    "op": "add",
                    "prompt": "{{left.text}}",
                    "input_audio_uri": "{{right.audio}}",
                },
            ]
        }
    )
    ids = {s.id: s.job_id for s in wf.steps}
    claims = {c.job_id: c for c in q.claim("c1", count=10)}
    assert sorted(claims) == sorted([ids["left"], ids["right"]])
    q.ack_success(claims[ids["left"]], "s3://results/left.json", {"text": "a dog barks"})
    assert q.claim("c1", count=10) == []  # join still waits for right
    q.ack_success(claims[ids["right"]], "s3://results/right.wav")
    (join,) = q.claim("c1", count=10)
    assert join.job_id == ids["join"]
    assert join.spec.workflow is not None and join.spec.workflow.uses == {"left": ids["left"], "right": ids["right"]}


def test_in_a_dag_a_failure_cancels_the_running_sibling(q):
    wf = q.submit_workflow(
        {
            "steps": [
                {"id": "a", "task": "text_to_audio", "prompt": "wind"},
                {"id": "b", "task": "text_to_audio", "prompt": "waves"},
                {"id": "c", "task": "edit", "op": "add", "prompt": "gulls", "input_audio_uri": "{{a.audio}}"},
            ]
        }
    )
    ids = {s.id: s.job_id for s in wf.steps}
    claims = {c.job_id: c for c in q.claim("c1", count=10)}
    q.fail(claims[ids["b"]], "bad request", retryable=False)
    assert q.is_cancel_requested(ids["a"])  # the sibling still runs, with a cancel request
    # Even if the sibling finishes, its dependent never runs: the workflow already failed.
    q.ack_success(claims[ids["a"]], "s3://results/a.wav")
    status = q.workflow_status(wf.workflow_id)
    assert status is not None and status.status is WorkflowState.FAILED and status.failed_step == "b"
    assert by_id(status)["c"].status is JobStatus.CANCELLED
    assert q.claim("c1", count=10) == []


def test_a_retried_step_still_releases_its_dependents(q):
    wf = q.submit_workflow(chain())
    ids = {s.id: s.job_id for s in wf.steps}
    (first,) = q.claim("c1")
    assert q.fail(first, "encoder replica restarting", retryable=True, delay_s=0.05) is JobStatus.QUEUED
    time.sleep(0.1)
    (again,) = q.claim("c1", count=10, block_ms=1000)
    assert again.job_id == ids["describe"] and again.attempt == 2
    q.ack_success(again, "s3://results/describe.json", {"text": "a street"})
    (second,) = q.claim("c1", count=10)
    assert second.job_id == ids["score"]
    status = q.workflow_status(wf.workflow_id)
    assert status is not None and by_id(status)["describe"].error is None


def test_the_redis_source_hands_a_step_the_outputs_of_the_steps_it_uses(q):
    from orchestrator.sources import RedisSource
    from orchestrator.workflows import StepOutput

    source = RedisSource(q, "engine-1")
    q.submit_workflow(chain())
    (describe,) = source.claim(10, 0)
    assert source.step_outputs(describe) == {}  # uses nothing
    source.ack_success(describe, result_uri="s3://results/describe.json", timings={}, extra={"text": "a street"})
    (score,) = source.claim(10, 0)
    assert source.step_outputs(score) == {"describe": StepOutput(text="a street", audio_uri=None)}
    source.ack_success(score, result_uri="s3://results/score.wav", timings={}, extra={})
    (layer,) = source.claim(10, 0)
    assert source.step_outputs(layer) == {"score": StepOutput(text=None, audio_uri="s3://results/score.wav")}


def test_a_forged_link_to_another_tenants_step_resolves_to_nothing(q):
    """A workflow link is refused at the API; one forged past it (a raw queue submit naming another
    tenant's step job) gets no output from that job, so its text answer cannot leak."""
    from orchestrator.jobs import JobSpec, WorkflowLink
    from orchestrator.sources import RedisSource
    from orchestrator.workflows import StepOutput

    source = RedisSource(q, "engine-1")
    wf = q.submit_workflow(chain(tenant="victim"))
    (describe,) = source.claim(10, 0)
    source.ack_success(describe, result_uri="s3://results/describe.json", timings={}, extra={"text": "a secret"})
    (score,) = source.claim(10, 0)
    assert source.step_outputs(score) == {"describe": StepOutput(text="a secret", audio_uri=None)}

    link = WorkflowLink(workflow_id=wf.workflow_id, step="thief", uses={"describe": describe.job_id})
    forged = JobSpec(task="text_to_audio", prompt="{{describe.text}}", tenant="mallory", workflow=link)
    q.submit(forged, job_id="forged-1")
    (claimed,) = source.claim(10, 0)
    assert claimed.job_id == "forged-1"
    assert source.step_outputs(claimed) == {}


def test_refusals_queue_nothing(q, client):
    one_step = {"steps": [{"id": "a", "task": "text_to_audio", "prompt": "wind"}]}
    q.submit({"task": "text_to_audio", "prompt": "taken"}, job_id="wtaken-a")
    with pytest.raises(ValueError, match="job wtaken-a already exists"):
        q.submit_workflow(one_step, workflow_id="wtaken")
    q.submit({"task": "text_to_audio", "prompt": "x", "batch_id": "shared", "tenant": "acme"})
    with pytest.raises(ValueError, match="batch shared belongs to tenant acme"):
        q.submit_workflow({**one_step, "batch_id": "shared"})
    assert q.workflow_status("wtaken") is None
    assert stream_entries(client, q) == 2  # the two plain jobs only
    # The same explicit id again is the same workflow (nothing queued twice).
    first = q.submit_workflow(one_step, workflow_id="wsame")
    assert q.submit_workflow(one_step, workflow_id="wsame").workflow_id == first.workflow_id == "wsame"
    assert stream_entries(client, q) == 3
