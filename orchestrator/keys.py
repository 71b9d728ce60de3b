"""Every Redis key of the job system, built from one configurable prefix.

Nothing else in the code base spells a key. The Lua scripts of the queue receive the fixed keys
and the *bases* of per-id keys (`job_base` + job id) from here, so they build no names of their own.

Layout under prefix `P` (default `aomni:`)::

    P q:{priority}            stream of queued jobs per priority class (consumer group "engine")
    P delayed:{priority}      sorted set: job id -> due time (ms) of a retry waiting for its backoff
    P cursor:{priority}       XAUTOCLAIM scan cursor of that stream (so reclaiming covers the whole PEL)
    P claim-seq               counter that rotates which priority is read first (no starvation)
    P dead                    dead-letter stream (jobs out of attempts, malformed stream entries)
    P job:{job_id}            hash: status, stage, attempts, error, result uri, timings, spec, ...
    P batch:{batch_id}        hash: total and counts by status
    P batch-failures:{id}     list of failed / dead job ids of a batch, in order of failure
    P batch-jobs:{id}         list of a batch's job ids in submission order (its results' order)
    P tenant-jobs:{tenant}    sorted set: the tenant's job ids by submit time (ms), for listing
    P tenant-batches:{tenant} sorted set: the tenant's batch ids by creation time (ms), for listing
    P webhooks:events         stream of ends of objects with a webhook_url (`orchestrator.webhooks`)
    P idem:{tenant}:{key}     idempotency key -> job id
    P wf:{workflow_id}        hash: tenant, steps (JSON [{id, job_id, task}]), created_at, batch,
                              idem, open (steps not yet final), cancelled ('1'), failed_step, error
    P wf-idem:{tenant}:{key}  a workflow's idempotency key -> workflow id
    P tenant:{tenant_id}      hash: tenant record (quotas, allowed inputs)
    P apikey:{sha256 hex}     API key hash -> tenant id
    P tenants                 set of tenant ids
    P tenant-keys:{tenant}    set of the key digests of a tenant
    P tenant-rate:{tenant}    GCRA state of the tenant's submissions-per-minute limit
    P tenant-inflight:{tenant} sorted set: unfinished job ids of the tenant (in-flight quota)
    P autoscale:backlog       hash: engine id -> its backlog report (`workers.autoscaling`); spelled by
                              `workers.settings.backlog_key`, which the Serve pods use on their own

For Redis Cluster, give a prefix with a hash tag (e.g. `{aomni}:`): the queue's scripts touch
keys they discover at run time, which must all live in one slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.jobs import PRIORITIES, Priority
from workers.settings import backlog_key

__all__ = ["DEFAULT_PREFIX", "RedisKeys"]

DEFAULT_PREFIX = "aomni:"
MAX_PREFIX_CHARS = 100
# Glob characters would make the prefix unusable as a SCAN pattern (ops tooling and test cleanup).
_BAD_PREFIX_RE = re.compile(r"[\s*?\[\]\\]")


@dataclass(frozen=True)
class RedisKeys:
    """Key builder for one deployment (one prefix)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        p = self.prefix
        if not isinstance(p, str) or not 1 <= len(p) <= MAX_PREFIX_CHARS or _BAD_PREFIX_RE.search(p):
            raise ValueError(
                f"Redis key prefix {p!r} is invalid: expected 1-{MAX_PREFIX_CHARS} characters "
                "without whitespace or glob characters (* ? [ ] \\)"
            )

    # ----------------------------------------------------------------------- queue structure

    def stream(self, priority: Priority | str) -> str:
        return self.stream_base + Priority(priority).value

    @property
    def stream_base(self) -> str:
        """`stream_base + priority` is the stream of that priority."""
        return f"{self.prefix}q:"

    def delayed(self, priority: Priority | str) -> str:
        return f"{self.prefix}delayed:{Priority(priority).value}"

    @property
    def delayed_base(self) -> str:
        """`delayed_base + priority` is the delayed set of that priority."""
        return f"{self.prefix}delayed:"

    def autoclaim_cursor(self, priority: Priority | str) -> str:
        return f"{self.prefix}cursor:{Priority(priority).value}"

    @property
    def claim_seq(self) -> str:
        return f"{self.prefix}claim-seq"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead"

    def streams(self) -> list[str]:
        """The priority streams, highest priority first."""
        return [self.stream(p) for p in PRIORITIES]

    # ----------------------------------------------------------------------- per-job / batch

    @property
    def job_base(self) -> str:
        return f"{self.prefix}job:"

    def job(self, job_id: str) -> str:
        return self.job_base + job_id

    @property
    def batch_base(self) -> str:
        return f"{self.prefix}batch:"

    def batch(self, batch_id: str) -> str:
        return self.batch_base + batch_id

    @property
    def batch_failures_base(self) -> str:
        return f"{self.prefix}batch-failures:"

    def batch_failures(self, batch_id: str) -> str:
        return self.batch_failures_base + batch_id

    @property
    def batch_jobs_base(self) -> str:
        return f"{self.prefix}batch-jobs:"

    def batch_jobs(self, batch_id: str) -> str:
        """List of the batch's job ids in submission order."""
        return self.batch_jobs_base + batch_id

    # ----------------------------------------------------------------------- listing (per tenant)

    @property
    def tenant_jobs_base(self) -> str:
        return f"{self.prefix}tenant-jobs:"

    def tenant_jobs(self, tenant_id: str) -> str:
        """Sorted set of one tenant's job ids, scored by submit time in ms (GET /v1/jobs)."""
        return self.tenant_jobs_base + tenant_id

    @property
    def tenant_batches_base(self) -> str:
        return f"{self.prefix}tenant-batches:"

    def tenant_batches(self, tenant_id: str) -> str:
        """Sorted set of one tenant's batch ids, scored by creation time in ms (GET /v1/batches)."""
        return self.tenant_batches_base + tenant_id

    # ----------------------------------------------------------------------- webhooks

    @property
    def webhook_events(self) -> str:
        """Stream of the ends of jobs, batches and workflows that have a `webhook_url`."""
        return f"{self.prefix}webhooks:events"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}idem:{tenant}:{key}"

    # ----------------------------------------------------------------------- workflows

    @property
    def workflow_base(self) -> str:
        """`workflow_base + workflow id` is the workflow's hash."""
        return f"{self.prefix}wf:"

    def workflow(self, workflow_id: str) -> str:
        return self.workflow_base + workflow_id

    def workflow_idempotency(self, tenant: str, key: str) -> str:
        """A workflow's idempotency key (its own namespace: a job and a workflow may share a key)."""
        return f"{self.prefix}wf-idem:{tenant}:{key}"

    # ----------------------------------------------------------------------- tenants (HTTP API)

    def tenant(self, tenant_id: str) -> str:
        return f"{self.prefix}tenant:{tenant_id}"

    def api_key(self, key_sha256_hex: str) -> str:
        return f"{self.prefix}apikey:{key_sha256_hex}"

    @property
    def tenants(self) -> str:
        """Set of every tenant id."""
        return f"{self.prefix}tenants"

    def tenant_api_keys(self, tenant_id: str) -> str:
        """Set of the key digests of one tenant (to list and revoke them)."""
        return f"{self.prefix}tenant-keys:{tenant_id}"

    def tenant_rate(self, tenant_id: str) -> str:
        """GCRA state of one tenant's submissions-per-minute limit."""
        return f"{self.prefix}tenant-rate:{tenant_id}"

    def tenant_in_flight(self, tenant_id: str) -> str:
        """Sorted set of one tenant's unfinished job ids (in-flight quota)."""
        return f"{self.prefix}tenant-inflight:{tenant_id}"

    # ----------------------------------------------------------------------- autoscaling

    @property
    def autoscale_backlog(self) -> str:
        """Hash of the engines' backlog reports, read by the pools' autoscaling policy."""
        return backlog_key(self.prefix)

    # ----------------------------------------------------------------------- ops

    @property
    def scan_pattern(self) -> str:
        """SCAN MATCH pattern covering every key of this deployment."""
        return self.prefix + "*"
