"""The body of a delivery: `{"type", "timestamp", "data"}`, `data` being the object's API view.

`data` is what `GET /v1/jobs/{id}`, `/v1/batches/{id}` or `/v1/workflows/{id}` answered when the
event was taken in (the views of `orchestrator.api.views`, read through the queue), so a receiver
parses one schema whether it polls or listens. `timestamp` is when the object ended (the time the
queue appended the event). When the record has already expired, `data` holds only the id.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from orchestrator.api.views import BatchView, JobView, WorkflowView
from orchestrator.queue import JobQueue
from orchestrator.webhooks.deliveries import Event

__all__ = ["event_body", "event_data", "iso_timestamp"]


def iso_timestamp(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`: `2026-12-07T03:20:57.123Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_data(queue: JobQueue, event: Event) -> dict[str, Any]:
    """The object's view as JSON, or `{"<object>_id": id}` if its record is gone."""
    view: JobView | BatchView | WorkflowView | None = None
    if event.object == "job":
        record = queue.get(event.object_id)
        view = None if record is None else JobView.of(record)
    elif event.object == "batch":
        status = queue.batch_status(event.object_id)
        view = None if status is None else BatchView.of(status)
    else:
        workflow = queue.workflow_status(event.object_id)
        view = None if workflow is None else WorkflowView.of(workflow)
    if view is None:
        return {f"{event.object}_id": event.object_id}
    return view.model_dump(mode="json")


def event_body(queue: JobQueue, event: Event) -> str:
    """The exact JSON every attempt of the event's delivery sends (and signs)."""
    body = {"type": event.type, "timestamp": iso_timestamp(event.occurred_ms), "data": event_data(queue, event)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
