"""The job queue on Redis Streams: submit, claim under a lease, renew, ack, retry, dead-letter, cancel.

Shape (keys in `orchestrator.keys`, scripts in `orchestrator.lua.scripts`; the code in three parts
on a shared core: `submission` (admission), `leases` (the lease holder's calls), `views` (reads)):

- One stream per priority class with one consumer group. An entry carries only the job id; the
  job's spec and state live in its hash, so a state change never rewrites the stream.
- `claim` is one Lua script: move due retries back from the delayed sets, take over entries whose
  lease lapsed (`XAUTOCLAIM` with min-idle = the lease), then read new entries from the priority
  streams in weighted rotation (no class starves). Each taken job gets a fresh lease token; a
  cancelled job is acknowledged and skipped; a malformed entry goes to the dead-letter stream.
  When nothing is ready, `claim` blocks on `XREAD` for newer entries (no polling).
- The lease is the entry's idle time in the pending list: `renew` resets it (`XCLAIM ... JUSTID`),
  a consumer that stops renewing for `lease_s` loses the job to the next claimer.
- `ack_success`, `fail`, `ack_cancelled`, `set_stage` and `renew` check the lease token inside
  their script, so a consumer whose job was taken over can change nothing (`LeaseLost`): every
  job ends in exactly one final state, counted once in its batch.
- `fail(retryable=True)` schedules a retry after exponential backoff with jitter (a sorted set
  scored by due time) until `max_attempts`, then the job is `dead` and copied to the dead-letter
  stream with its last error; `fail(retryable=False)` makes it `failed` at once.
- Finished job records, their idempotency keys and completed batches expire after `retention_s`
  (Redis EXPIRE; nothing to purge by hand).

Public API (stable; used by the engine, the CLI and the HTTP API)::

    q = JobQueue(redis_client_or_url, prefix=..., lease_s=..., max_attempts=..., backoff_base_s=...,
                 backoff_max_s=..., retention_s=..., consumer_group="engine")
    q = JobQueue.from_settings(settings)
    q.submit(spec) -> JobRecord                       # idempotent on spec.idempotency_key
    q.submit_batch(specs, batch_id=None, chunk_size=500) -> (batch_id, [job_id, ...])
    q.get(job_id) -> JobRecord | None;  q.get_many(job_ids) -> [JobRecord | None, ...]
    q.batch_status(batch_id, offset=0, limit=100) -> BatchStatus | None
    q.claim(consumer, count=1, block_ms=0) -> [Claim, ...]
    q.renew(claim) -> bool;  q.renew_many(claims) -> [bool, ...]   # False: lease lost, stop working
    q.set_stage(claim, stage, timings=None)            # raises LeaseLost
    q.ack_success(claim, result_uri, extra=None, timings=None)   # raises LeaseLost
    q.ack_success_many([(claim, result_uri[, extra]), ...]) -> [bool, ...]
    q.fail(claim, error, retryable=..., delay_s=None) -> JobStatus  # raises LeaseLost
    q.ack_cancelled(claim)                             # raises LeaseLost
    q.cancel(job_id) -> JobStatus                      # raises JobNotFound
    q.is_cancel_requested(job_id) -> bool
    q.queue_depths() -> {priority: queued + delayed};  q.running_count() -> int
    q.dead_letters(count=100, after="-") -> [dict, ...]       # oldest first, raw fields
    q.dead_letters_page(limit=100, cursor=None) -> ([DeadLetter, ...], next_cursor)  # newest first
    q.requeue_dead(job_id) -> JobRecord                # raises NotDeadLettered, RequeueRefused
    q.list_jobs(tenant, status=, batch_id=, created_after=, limit=50, cursor=) -> ([JobRecord], next_cursor)
    q.list_batches(tenant, created_after=, limit=50, cursor=) -> ([BatchStatus], next_cursor)
    q.batch_items(batch_id, limit=100, cursor=) -> ([BatchItem], next_cursor)   # batch order
    q.retry_delay_s(attempt) -> float
    q.submit_workflow(wf, workflow_id=None) -> WorkflowStatus   # idempotent on wf.idempotency_key
    q.workflow_status(workflow_id) -> WorkflowStatus | None
    q.cancel_workflow(workflow_id) -> WorkflowStatus   # raises WorkflowNotFound

Workflows (`orchestrator.queue.workflows`): every step is a job of this queue; a step waits (queued,
no stream entry) until the steps it uses have succeeded, and a failed, dead or cancelled step ends
the rest of its workflow, inside the same script that ends the step.

The engine renews every `lease_s / 3` (e.g. `renew_many` from a heartbeat thread), checks
`is_cancel_requested` between stages, writes the result to storage *before* `ack_success`
(a crash in between replays the job, which rewrites the same key with the same bytes), and maps
exceptions with `orchestrator.errors.outcome_of`.
"""

from __future__ import annotations

from orchestrator.queue.core import DEFAULT_PRIORITY_WEIGHTS, Claim, QueueCore
from orchestrator.queue.dead_letters import DeadLetter, DeadLetters, NotDeadLettered, RequeueRefused
from orchestrator.queue.leases import Leases
from orchestrator.queue.listing import BatchItem, InvalidCursor, Listing
from orchestrator.queue.submission import Submission
from orchestrator.queue.views import ReadViews
from orchestrator.queue.workflows import WorkflowNotFound, WorkflowOps

__all__ = [
    "DEFAULT_PRIORITY_WEIGHTS",
    "BatchItem",
    "Claim",
    "DeadLetter",
    "DeadLetters",
    "InvalidCursor",
    "JobQueue",
    "Leases",
    "Listing",
    "NotDeadLettered",
    "QueueCore",
    "ReadViews",
    "RequeueRefused",
    "Submission",
    "WorkflowNotFound",
    "WorkflowOps",
]


class JobQueue(Submission, Leases, WorkflowOps, Listing, DeadLetters):
    """A Redis Streams job queue with leases, retries, dead-lettering, cancel, priorities and batches.

    Admission (`Submission`), the lease holder's calls (`Leases`), workflows (`WorkflowOps`),
    listing (`Listing`), dead letters (`DeadLetters`) and the read views (`ReadViews`) over one
    connection and one configuration (`QueueCore`: its docstring lists the parameters).
    """
