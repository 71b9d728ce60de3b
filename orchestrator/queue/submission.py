"""Admission: queue one job or a batch (idempotent, atomic per chunk), and cancel a job.

Each call is one Lua script (`SUBMIT`, `CANCEL`), so a job is either fully queued (record, stream
entry, batch counters, idempotency key) or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from orchestrator.errors import InvalidJobSpec, JobNotFound
from orchestrator.jobs import (
    MAX_BATCH_ID_CHARS,
    JobRecord,
    JobSpec,
    JobStatus,
    batch_job_id,
    new_batch_id,
    new_job_id,
    parse_spec,
    validate_id,
)
from orchestrator.queue.core import MAX_CHUNK_SIZE, _s
from orchestrator.queue.views import ReadViews

__all__ = ["Submission"]


class Submission(ReadViews):
    """Submit jobs and batches; cancel jobs (a re-submit returns the existing record)."""

    def submit(self, spec: JobSpec | Mapping[str, Any], *, job_id: str | None = None) -> JobRecord:
        """Queue one job and return its record. With `spec.idempotency_key` (per tenant) or an
        existing `job_id`, a re-submit returns the existing job instead of creating a second one.
        A spec with `batch_id` joins (or starts) that batch. Raises `InvalidJobSpec`.

        The job is listed for its tenant (`list_jobs`) in the same atomic call; with
        `spec.webhook_url` its end is announced on the webhook events stream."""
        spec = parse_spec(spec)
        job_id = new_job_id() if job_id is None else validate_id(job_id, "job_id")
        submitted_at, rows = self._submit_chunk(spec.batch_id or "", spec.tenant, [(job_id, spec)])
        found_id, created = rows[0]
        if created:
            # Built from values validated above, so no second validation pass.
            return JobRecord.model_construct(
                job_id=job_id,
                status=JobStatus.QUEUED,
                tenant=spec.tenant,
                priority=spec.priority,
                batch_id=spec.batch_id,
                seed=spec.effective_seed(job_id),
                spec=spec,
                submitted_at=submitted_at,
            )
        record = self.get(found_id)
        if record is None:  # expired between the two calls: the key is free again
            return self.submit(spec, job_id=job_id)
        return record

    def submit_batch(
        self,
        specs: Iterable[JobSpec | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        chunk_size: int = 500,
        webhook_url: str | None = None,
    ) -> tuple[str, list[str]]:
        """Queue many jobs as one batch, `chunk_size` jobs per atomic script call.

        Every spec is validated before anything is written (`InvalidJobSpec` names each bad
        item as `specs[i].field`). All specs must share one tenant. Item i gets the job id
        `{batch_id}-{i}`, so re-submitting a batch under the same id creates nothing twice.
        Returns `(batch_id, job_ids)` in input order (existing ids where items already existed).
        With `webhook_url` (already checked by the caller), `batch.completed` is announced when the
        batch's last job ends; the URL is recorded with the last chunk (see below). A caller that
        adds more jobs to the batch afterwards (workflows) passes the URL with its last write instead.
        """
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size {chunk_size!r} is invalid: expected an integer in [1, {MAX_CHUNK_SIZE}]")
        batch_id = (
            new_batch_id() if batch_id is None else validate_id(batch_id, "batch_id", max_chars=MAX_BATCH_ID_CHARS)
        )
        parsed: list[JobSpec] = []
        errors: list[tuple[str, str]] = []
        for i, item in enumerate(specs):
            try:
                spec = parse_spec(item)
            except InvalidJobSpec as exc:
                errors.extend((f"specs[{i}]" + (f".{f}" if f else ""), m) for f, m in exc.errors)
                continue
            if spec.batch_id is not None and spec.batch_id != batch_id:
                errors.append((f"specs[{i}].batch_id", f"{spec.batch_id!r} differs from the batch id {batch_id!r}"))
            parsed.append(spec)
        if errors:
            raise InvalidJobSpec(errors, what="batch")
        if not parsed:
            raise ValueError("a batch needs at least one job spec")
        tenants = {s.tenant for s in parsed}
        if len(tenants) > 1:
            raise ValueError(f"a batch belongs to one tenant; these specs name {sorted(tenants)}")
        tenant = parsed[0].tenant
        job_ids: list[str] = []
        starts = range(0, len(parsed), chunk_size)
        for start in starts:
            chunk = [(batch_job_id(batch_id, start + k), s) for k, s in enumerate(parsed[start : start + chunk_size])]
            # The batch's webhook URL is recorded with its last chunk only: were every job of an
            # earlier chunk to end before the next chunk is written, the batch would look complete.
            url = (webhook_url or "") if start == starts[-1] else ""
            _, rows = self._submit_chunk(batch_id, tenant, chunk, webhook_url=url)
            job_ids.extend(jid for jid, _ in rows)
        return batch_id, job_ids

    def _submit_chunk(
        self, batch_id: str, tenant: str, jobs: Sequence[tuple[str, JobSpec]], *, webhook_url: str = ""
    ) -> tuple[float, list[tuple[str, bool]]]:
        args = [*self._common, batch_id, tenant, webhook_url, str(len(jobs))]
        idem = self.keys.idempotency
        for job_id, spec in jobs:
            args += (
                job_id,
                spec.priority.value,
                spec.tenant,
                str(spec.effective_seed(job_id)),
                idem(spec.tenant, spec.idempotency_key) if spec.idempotency_key else "",
                spec.to_json(),
                spec.webhook_url or "",
            )
        try:
            reply = self._submit(keys=[], args=args)
        except redis.ResponseError as exc:
            if "BATCHTENANT" in str(exc):
                raise ValueError(str(exc).split("BATCHTENANT ", 1)[-1].split(" script:")[0]) from None
            raise
        submitted_at = float(_s(reply[0]))
        rows = [(_s(reply[i]), int(reply[i + 1]) == 1) for i in range(1, len(reply), 2)]
        return submitted_at, rows

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job. A queued job (also one waiting for a retry) ends `cancelled` now and never
        runs; for a running job a cancel is requested and `running` is returned: its engine sees
        `is_cancel_requested` between stages and calls `ack_cancelled`. A finished job is left as it
        is and its status returned. Raises `JobNotFound` for an unknown (or expired) job."""
        args = [*self._common, job_id]
        reply = _s(self._cancel(keys=[], args=args))
        if not reply:
            raise JobNotFound(job_id)
        return JobStatus(reply)
