"""Workflows: ordered steps, each its own job, later steps using earlier steps' outputs.

POST   /v1/workflows          {"steps": [...], "idempotency_key": ...} -> 201 the workflow (200 replay)
GET    /v1/workflows/{id}     the workflow's status and each step's status, text, error
DELETE /v1/workflows/{id}     cancel every step that has not finished (202 while one still runs)

A step is a job spec plus an `id`; `{{<id>.text}}` in a text field or `{{<id>.audio}}` as an audio
URI uses an earlier step's output. A bad reference, a cycle, a wrong kind or a text that could
outgrow its field is a 422 naming `steps[i].<field>` and the step, and nothing is queued. A step's
result is its job's (`GET /v1/jobs/{job_id}/result`).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from orchestrator.api.deps import CurrentTenant, OwnWorkflow, ServicesDep, check_workflow, queue_workflow
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.views import WorkflowView
from orchestrator.api_errors import ApiError
from orchestrator.jobs import JobStatus
from orchestrator.workflows import WorkflowSpec, WorkflowState

router = APIRouter(tags=["workflows"])


@router.post(
    "/v1/workflows",
    status_code=201,
    responses={
        200: {"model": WorkflowView, "description": "the existing workflow (same idempotency_key)"},
        **documented(*COMMON_ERRORS, 403, 409, 413, 429),
    },
)
def submit_workflow(
    body: WorkflowSpec, tenant: CurrentTenant, services: ServicesDep, response: Response
) -> WorkflowView:
    """Queue a workflow: every step becomes a job, runnable once the steps it uses have succeeded.
    A re-submit with the same `idempotency_key` returns the existing workflow (200)."""
    workflow = check_workflow(services, tenant, body)
    status, created = queue_workflow(services, tenant, workflow)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/workflows/{status.workflow_id}"
    return WorkflowView.of(status)


@router.get("/v1/workflows/{workflow_id}", responses=documented(*COMMON_ERRORS))
def get_workflow(workflow: OwnWorkflow) -> WorkflowView:
    """The workflow's status (queued, running, succeeded, failed, cancelled), the step that failed
    it, and per step its job id, status, text answer, whether a result is available, and error."""
    return WorkflowView.of(workflow)


@router.delete(
    "/v1/workflows/{workflow_id}",
    responses={
        202: {"model": WorkflowView, "description": "cancelled; a running step stops at its next stage"},
        **documented(*COMMON_ERRORS, 409),
    },
)
def cancel_workflow(workflow: OwnWorkflow, services: ServicesDep, response: Response) -> WorkflowView:
    """Cancel a workflow: its waiting and queued steps end `cancelled` now and never run (200); a
    running step stops at its next stage (202). A workflow that already ended is a 409 (a cancelled
    one answers 200 again)."""
    if workflow.status in (WorkflowState.SUCCEEDED, WorkflowState.FAILED):
        message = f"workflow {workflow.workflow_id!r} already {workflow.status.value}"
        raise ApiError(409, "conflict", message, "workflow_id")
    status = services.queue.cancel_workflow(workflow.workflow_id)
    if status.status is not WorkflowState.CANCELLED:  # it ended between the read and the cancel
        message = f"workflow {workflow.workflow_id!r} already {status.status.value}"
        raise ApiError(409, "conflict", message, "workflow_id")
    if any(step.status is JobStatus.RUNNING for step in status.steps):
        response.status_code = 202
    return WorkflowView.of(status)
