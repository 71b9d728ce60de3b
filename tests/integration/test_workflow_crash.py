"""An engine process (`audio-omni serve`, a real subprocess) is SIGKILLed while a workflow's second
step runs, and restarted: every workflow succeeds, the second step reads the first step's stored
result, and each step has exactly one result object and one metadata object on S3."""

from __future__ import annotations

import json
import signal
import time
import uuid

import boto3
import pytest

from tests.process_logs import log_excerpt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_WORKFLOWS = 3


def _workflow(i: int, batch_id: str) -> dict:
    """text_to_audio, then an edit of its result (many sampler steps: a long second step)."""
    return {
        "batch_id": batch_id,
        "steps": [
            {"id": "first", "task": "text_to_audio", "prompt": f"wind {i}", "duration_s": 1.0, "steps": 2, "seed": i},
            {
                "id": "second",
                "task": "edit",
                "op": "add",
                "prompt": "light rain",
                "input_audio_uri": "{{first.audio}}",
                "steps": 48,
                "seed": i,
            },
        ],
    }


def test_sigkill_during_a_second_step_then_restart(
    tmp_path, start_engine, redis_url, redis_prefix, s3_endpoint, s3_bucket
):
    from orchestrator.queue import JobQueue
    from orchestrator.workflows import WorkflowState

    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=3.0)
    batch_id = f"wfcrash{uuid.uuid4().hex[:8]}"
    workflows = [queue.submit_workflow(_workflow(i, batch_id)) for i in range(N_WORKFLOWS)]
    second_ids = [wf.steps[1].job_id for wf in workflows]
    log = tmp_path / "engine.log"

    first = start_engine("wfcrash-a", log)
    deadline = time.monotonic() + 240
    try:
        # Kill while a second step runs. The engine is frozen (SIGSTOP) while that is read, so no
        # step can finish between the read and the kill; if the moment passed, it runs on.
        killed: set[str] = set()
        while time.monotonic() < deadline:
            running = [r for r in queue.get_many(second_ids) if r is not None and r.status.value == "running"]
            if running:
                first.send_signal(signal.SIGSTOP)
                killed = {r.job_id for r in queue.get_many(second_ids) if r is not None and r.status.value == "running"}
                if killed:
                    break
                first.send_signal(signal.SIGCONT)
            assert first.poll() is None, f"engine exited early:\n{log_excerpt(log)}"
            time.sleep(0.05)
        else:
            pytest.fail(f"no second step was seen running:\n{log_excerpt(log)}")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()

    second = start_engine("wfcrash-b", log)
    try:
        assert second.wait(timeout=300) == 0, log_excerpt(log)
    finally:
        if second.poll() is None:
            second.kill()

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    for wf in workflows:
        status = queue.workflow_status(wf.workflow_id)
        assert status is not None and status.status is WorkflowState.SUCCEEDED, (status, log_excerpt(log))
        records = {r.job_id: r for r in queue.get_many([s.job_id for s in status.steps]) if r is not None}
        for step in status.steps:
            mine = sorted(k for k in keys if k.rsplit("/", 1)[-1].rsplit(".", 1)[0] == step.job_id)
            assert mine == [f"default/{batch_id}/{step.job_id}.json", f"default/{batch_id}/{step.job_id}.wav"], mine
            meta = json.loads(client.get_object(Bucket=s3_bucket, Key=mine[0])["Body"].read())
            assert meta["attempt"] == records[step.job_id].attempts  # the final attempt's metadata
            assert (meta["workflow_id"], meta["step"]) == (wf.workflow_id, step.id)
        first_step, second_step = status.steps
        meta = json.loads(
            client.get_object(Bucket=s3_bucket, Key=f"default/{batch_id}/{second_step.job_id}.json")["Body"].read()
        )
        assert meta["resolved"] == {"input_audio_uri": first_step.result_uri}
    # The second steps running at the kill were taken over after their lease lapsed.
    assert killed and all(queue.get(j).attempts >= 2 for j in killed)
    batch = queue.batch_status(batch_id)
    assert batch is not None and batch.counts["succeeded"] == 2 * N_WORKFLOWS
    queue.close()
