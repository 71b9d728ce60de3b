"""Operators' routes (a key of an admin tenant, `Tenant.admin`; anyone else gets 403 `forbidden`).

GET    /v1/admin/dead-letters                    the dead-letter stream, newest first (?limit=&cursor=)
POST   /v1/admin/dead-letters/{job_id}/requeue   queue a dead job again -> the job (attempts reset);
                                                 404 when it is not dead-lettered, 409 for a
                                                 workflow's step (resubmit the workflow)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from orchestrator.api.deps import AdminTenant, JobId, ServicesDep
from orchestrator.api.errors import COMMON_ERRORS, documented
from orchestrator.api.views import DeadLetterPage, DeadLetterView, JobView
from orchestrator.api_errors import ApiError
from orchestrator.queue import NotDeadLettered, RequeueRefused
from orchestrator.queue.dead_letters import MAX_DEAD_LETTERS_LIMIT

router = APIRouter(tags=["admin"])


@router.get("/v1/admin/dead-letters", responses=documented(*COMMON_ERRORS, 403))
def list_dead_letters(
    _admin: AdminTenant,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_DEAD_LETTERS_LIMIT, description="entries per page")] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$", description="the next_cursor of the previous page")
    ] = None,
) -> DeadLetterPage:
    """Jobs that ran out of attempts (and malformed queue entries), newest first, every tenant's:
    the job id, tenant, last error and its `error_code`, attempts and when it died."""
    letters, next_cursor = services.queue.dead_letters_page(limit=limit, cursor=cursor)
    return DeadLetterPage(items=[DeadLetterView.of(letter) for letter in letters], next_cursor=next_cursor)


@router.post("/v1/admin/dead-letters/{job_id}/requeue", responses=documented(*COMMON_ERRORS, 403, 409))
def requeue_dead_letter(job_id: JobId, _admin: AdminTenant, services: ServicesDep) -> JobView:
    """Queue a dead job again: its attempts start from zero, its error is cleared and its
    dead-letter entry removed; it runs like a new job (its batch counts it as queued again)."""
    try:
        record = services.queue.requeue_dead(job_id)
    except NotDeadLettered as exc:
        raise ApiError(404, "not_found", str(exc), "job_id") from None
    except RequeueRefused as exc:
        raise ApiError(409, "conflict", str(exc), "job_id") from None
    return JobView.of(record)
