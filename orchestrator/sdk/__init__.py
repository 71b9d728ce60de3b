"""Python SDK of the HTTP API: `Client` (sync) and `AsyncClient` (asyncio) with one surface, typed
return models, retries (`RetryPolicy`), and `run_jsonl` for a whole manifest. Reference: docs/sdk.md.

    from orchestrator.sdk import Client

    with Client("https://audio.example.com", api_key="aok_...") as client:
        job = client.submit({"task": "text_to_audio", "prompt": "rain on a tin roof"})
        done = client.wait(job.job_id, timeout_s=600, raise_on_failure=True)
        client.download(done.job_id, "rain.wav")
"""

from orchestrator.api_errors import ApiError
from orchestrator.sdk.aio import AsyncClient
from orchestrator.sdk.bulk import RunSummary, run_jsonl
from orchestrator.sdk.errors import JobFailed, WaitTimeout, WorkflowFailed
from orchestrator.sdk.models import (
    BatchCreated,
    BatchPage,
    BatchResultLine,
    BatchResultsPage,
    BatchView,
    CancelView,
    DeadLetterPage,
    DeadLetterView,
    DeliveryPage,
    DeliveryView,
    HealthView,
    JobPage,
    JobView,
    ResultView,
    UploadView,
    WorkflowStepView,
    WorkflowView,
)
from orchestrator.sdk.retry import RetryPolicy
from orchestrator.sdk.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "BatchCreated",
    "BatchPage",
    "BatchResultLine",
    "BatchResultsPage",
    "BatchView",
    "CancelView",
    "Client",
    "DeadLetterPage",
    "DeadLetterView",
    "DeliveryPage",
    "DeliveryView",
    "HealthView",
    "JobFailed",
    "JobPage",
    "JobView",
    "ResultView",
    "RetryPolicy",
    "RunSummary",
    "UploadView",
    "WaitTimeout",
    "WorkflowFailed",
    "WorkflowStepView",
    "WorkflowView",
    "run_jsonl",
]
