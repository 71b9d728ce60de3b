"""What the SDK returns: the API's own response models (`orchestrator.api.views`, and the webhook
delivery views of `orchestrator.webhooks.deliveries`), plus the page of a batch's JSONL results.
Unknown fields a newer server sends are ignored, so an older SDK keeps working."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from pydantic import BaseModel, Field

from orchestrator.api.views import (
    BatchCreated,
    BatchPage,
    BatchResultLine,
    BatchView,
    CancelView,
    DeadLetterPage,
    DeadLetterView,
    HealthView,
    JobPage,
    JobView,
    ResultView,
    UploadView,
    VideoUploadView,
    WorkflowStepView,
    WorkflowView,
)
from orchestrator.webhooks.deliveries import DeliveryPage, DeliveryView

__all__ = [
    "BatchCreated",
    "BatchPage",
    "BatchResultLine",
    "BatchResultsPage",
    "BatchView",
    "CancelView",
    "DeadLetterPage",
    "DeadLetterView",
    "DeliveryPage",
    "DeliveryView",
    "HealthView",
    "JobPage",
    "JobView",
    "Paged",
    "ResultView",
    "UploadView",
    "VideoUploadView",
    "WorkflowStepView",
    "WorkflowView",
]

T_co = TypeVar("T_co", covariant=True)


class Paged(Protocol[T_co]):
    """Any page of a list endpoint: its `items`, and the cursor of the next page (None: the last)."""

    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


class BatchResultsPage(BaseModel):
    """One page of `GET /v1/batches/{id}/results`: its JSONL lines, and the `X-Next-Cursor` header."""

    items: list[BatchResultLine]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; None on the last one")
