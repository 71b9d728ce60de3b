"""Workflows on the queue: submit one (all its steps in one atomic script), read its status, cancel it.

Each step is an ordinary job of the queue (leases, retries, dead-letter, priorities, batches); what
makes it a step is on its hash (`workflow`, `deps`, `dependents`) and in the scripts: a step whose
dependencies have not all succeeded is `queued` with no stream entry, and the success of its last
dependency queues it (`orchestrator.lua.scripts`, `finish`). A step that fails or dies fails the
workflow (the first one is named) and ends the steps that have not finished; so does a cancel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from orchestrator.errors import JobNotFound
from orchestrator.jobs import JobRecord, JobStatus, TaskName, validate_id
from orchestrator.queue.core import _s
from orchestrator.queue.views import ReadViews
from orchestrator.workflows import (
    PlannedStep,
    StepStatus,
    WorkflowSpec,
    WorkflowStatus,
    new_workflow_id,
    parse_workflow,
    plan_workflow,
    workflow_id_for_key,
    workflow_state,
)

__all__ = ["WorkflowNotFound", "WorkflowOps"]


class WorkflowNotFound(JobNotFound):
    """No workflow with this id (never submitted, or expired after its retention)."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id

    def __str__(self) -> str:
        return f"workflow {self.workflow_id!r} not found"


class WorkflowOps(ReadViews):
    """`submit_workflow`, `workflow_status`, `cancel_workflow`."""

    def submit_workflow(
        self,
        wf: WorkflowSpec | Mapping[str, Any],
        *,
        workflow_id: str | None = None,
        batch_webhook_url: str | None = None,
    ) -> WorkflowStatus:
        """Queue every step of a workflow in one atomic call and return its status.

        Only the steps that use no other step are claimable at once; each other step is queued when
        the steps it uses have succeeded. With `wf.idempotency_key` (per tenant) a re-submit returns
        the existing workflow and queues nothing. Without a `workflow_id`, the id is derived from
        the idempotency key (so two submitters racing with one key agree) or drawn at random.
        Raises pydantic's `ValidationError` for a bad workflow (nothing is queued) and `ValueError`
        for a batch of another tenant or a step job id already taken. `batch_webhook_url` (checked
        by the caller) is set on the workflow's batch, as `submit_batch(webhook_url=...)` does."""
        wf = parse_workflow(wf)
        if workflow_id is None:
            key = wf.idempotency_key
            workflow_id = workflow_id_for_key(wf.tenant, key) if key else new_workflow_id()
        else:
            workflow_id = validate_id(workflow_id, "workflow_id")
        planned = plan_workflow(wf, workflow_id)
        idem = self.keys.workflow_idempotency(wf.tenant, wf.idempotency_key) if wf.idempotency_key else ""
        args = [
            *self._common,
            workflow_id,
            idem,
            wf.tenant,
            wf.batch_id or "",
            _steps_json(planned),
            str(len(planned)),
            wf.webhook_url or "",
            batch_webhook_url or "",
        ]
        for step, dependents in zip(planned, _dependents(planned), strict=True):
            args += (
                step.job_id,
                step.spec.priority.value,
                str(step.spec.effective_seed(step.job_id)),
                step.spec.to_json(),
                str(len(set(step.uses))),
                json.dumps(dependents),
                step.spec.webhook_url or "",
            )
        try:
            reply = self._submit_workflow(keys=[], args=args)
        except redis.ResponseError as exc:
            text = str(exc)
            for tag in ("BATCHTENANT ", "STEPEXISTS "):
                if tag in text:
                    raise ValueError(text.split(tag, 1)[-1].split(" script:")[0]) from None
            raise
        found = _s(reply[1])
        status = self.workflow_status(found)
        if status is None:  # expired between the two calls: the key is free again
            return self.submit_workflow(wf, workflow_id=workflow_id, batch_webhook_url=batch_webhook_url)
        return status

    def workflow_status(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's state and every step's status, or None if unknown (or expired)."""
        raw = self._r.hgetall(self.keys.workflow(workflow_id))
        if not raw:
            return None
        fields = {_s(k): _s(v) for k, v in raw.items()}
        steps_meta = json.loads(fields.get("steps") or "[]")
        records = self.get_many([s["job_id"] for s in steps_meta])
        steps = [_step_status(meta, record) for meta, record in zip(steps_meta, records, strict=True)]
        cancelled = fields.get("cancelled") == "1"
        failed_step = fields.get("failed_step") or None
        return WorkflowStatus(
            workflow_id=workflow_id,
            tenant=fields.get("tenant") or "default",
            status=workflow_state(steps, cancelled=cancelled),
            steps=steps,
            failed_step=failed_step,
            error=fields.get("error") or None,
            created_at=float(fields.get("created_at") or 0.0),
            batch_id=fields.get("batch") or None,
            webhook_url=fields.get("webhook_url") or None,
        )

    def cancel_workflow(self, workflow_id: str) -> WorkflowStatus:
        """Cancel what has not finished: queued and waiting steps end `cancelled` now and never run;
        running steps get a cancel request (their engine stops between stages). A finished workflow
        is left as it is. Returns the status after the call; raises `WorkflowNotFound`."""
        reply = _s(self._cancel_workflow(keys=[], args=[*self._common, workflow_id]))
        status = self.workflow_status(workflow_id) if reply else None
        if status is None:
            raise WorkflowNotFound(workflow_id)
        return status


def _steps_json(planned: Sequence[PlannedStep]) -> str:
    """The workflow hash's `steps`: id, job id and task of each step, in order."""
    rows = [{"id": p.step, "job_id": p.job_id, "task": p.spec.task.value} for p in planned]
    return json.dumps(rows, separators=(",", ":"))


def _dependents(planned: Sequence[PlannedStep]) -> list[list[str]]:
    """For each step, the job ids of the later steps that use it (each once)."""
    users: dict[str, list[str]] = {p.job_id: [] for p in planned}
    for p in planned:
        for used in dict.fromkeys(p.uses):
            users[used].append(p.job_id)
    return [users[p.job_id] for p in planned]


def _step_status(meta: Mapping[str, str], record: JobRecord | None) -> StepStatus:
    if record is None:  # only while the workflow's keys expire together (see scripts.wf_settle)
        return StepStatus(
            id=meta["id"],
            task=TaskName(meta["task"]),
            job_id=meta["job_id"],
            status=JobStatus.CANCELLED,
            text=None,
            result_uri=None,
            result_available=False,
            error="the step's record expired after its retention",
        )  # no error_code: the step's own end is no longer known
    text = record.extra.get("text")
    succeeded = record.status is JobStatus.SUCCEEDED
    return StepStatus(
        id=meta["id"],
        task=TaskName(meta["task"]),
        job_id=record.job_id,
        status=record.status,
        text=text if isinstance(text, str) else None,
        result_uri=record.result_uri,
        result_available=succeeded and bool(record.result_uri),
        error=record.error,
        error_code=record.error_code,
    )
