"""`GET /v1/batches/{id}/report`: the batch's HTML report (`orchestrator.report`), the same page
`audio-omni report` writes: per job its prompt, players (input and result) with spectrograms,
status, timings, text answer and error; summary counts and a stage-time chart at the top."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from orchestrator.api.deps import BatchId, CurrentTenant, ServicesDep, own_batch
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api_errors import ApiError
from orchestrator.report import DEFAULT_MAX_JOBS, jobs_from_queue, render_report
from orchestrator.storage import InputResolver

router = APIRouter(tags=["batches"])

MAX_INPUT_BYTES = 256 * 1024 * 1024


@router.get(
    "/v1/batches/{batch_id}/report",
    response_class=HTMLResponse,
    responses={
        200: {"description": "one self-contained HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
        # The errors keep the API's one JSON shape (the route's own class would document them as HTML).
        **{
            status: {
                "description": entry["description"],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
            for status, entry in documented(*COMMON_ERRORS).items()
        },
    },
)
def get_batch_report(
    batch_id: BatchId,
    tenant: CurrentTenant,
    services: ServicesDep,
    max_jobs: Annotated[
        int, Query(ge=1, le=2000, description="jobs shown with their audio; the summary counts them all")
    ] = DEFAULT_MAX_JOBS,
) -> HTMLResponse:
    """The batch's report as one self-contained HTML page (audio and spectrograms embedded as data
    URIs; no script, nothing fetched), to open in a browser or save."""
    own_batch(batch_id, tenant, services, 0, 1)  # 404 unless it is the caller's batch
    inputs = services.inputs
    reader = None
    if isinstance(inputs, InputResolver):  # the edit inputs' players: read with the engine's own rules
        resolver = inputs

        def reader(uri: str, owner: str) -> bytes:
            return resolver.read(uri, tenant=owner, max_bytes=MAX_INPUT_BYTES)

    try:
        jobs, total = jobs_from_queue(services.queue, services.storage, batch_id, read_input=reader, max_jobs=max_jobs)
    except KeyError:  # it expired between the two reads
        raise ApiError(404, "not_found", f"batch {batch_id!r} not found", "batch_id") from None
    return HTMLResponse(render_report(f"Batch {batch_id}", jobs, total=total))
