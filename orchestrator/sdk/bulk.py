"""`run_jsonl`: run a whole JSONL manifest through the API and collect its results in a folder.

- Submits the lines as batches, in chunks that fit the tenant's in-flight quota: a chunk refused
  with 429 `quota_exceeded` or 413 `too_large` is split (the limit the error names is learnt) and
  sent again once jobs have finished.
- Records every step in `out_dir/run_state.jsonl` (an append-only journal) before acting on it, and
  sends each chunk with an idempotency key derived from the manifest (path and content) and its
  lines, so a run that crashed or was stopped resumes where it was: a chunk whose answer was lost
  is sent again with its key and returns the batch already queued, never a second one.
- Polls the batches' results, downloads each finished job's result once (several at a time, with a
  progress bar) into `out_dir/results/<line>_<job_id>.<ext>`, and writes `out_dir/results.jsonl`:
  one line per manifest line, in manifest order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.api_errors import ApiError
from orchestrator.jobs import FINAL_STATUSES
from orchestrator.sdk import calls
from orchestrator.sdk.errors import WaitTimeout
from orchestrator.sdk.models import BatchCreated
from orchestrator.sdk.run_state import (
    EXPIRED,
    Done,
    Entry,
    Journal,
    Outcome,
    RunState,
    chunk_key,
    learn_limit,
    read_manifest,
)

if TYPE_CHECKING:
    from orchestrator.sdk.sync import Client

__all__ = ["RunSummary", "run_jsonl"]

STATE_FILE = "run_state.jsonl"
RESULTS_FILE = "results.jsonl"
RESULTS_DIR = "results"
_FINAL = frozenset(s.value for s in FINAL_STATUSES)
_ITEM_RE = re.compile(r"jobs\[(\d+)\]")


@dataclass(frozen=True)
class RunSummary:
    """How a `run_jsonl` ended: lines by final status, results downloaded by this call (a resumed
    run does not count the earlier ones), batches submitted by it, and the results file."""

    total: int
    counts: dict[str, int]
    downloaded: int
    batches_submitted: int
    results_path: Path

    @property
    def succeeded(self) -> int:
        return self.counts.get("succeeded", 0)


class _Run:
    """One `run_jsonl` call: submits, polls, downloads, journals (the journal from one thread)."""

    def __init__(
        self,
        client: Client,
        manifest: Path,
        out_dir: Path,
        *,
        chunk_size: int,
        max_in_flight: int | None,
        download_concurrency: int,
        poll_s: float,
        progress: bool,
    ) -> None:
        self.client = client
        self.manifest = manifest
        self.out_dir = out_dir
        self.entries = read_manifest(manifest)
        self.by_line = {e.line: e for e in self.entries}
        self.digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        self.chunk_size = chunk_size
        self.limit = max_in_flight
        self.download_concurrency = download_concurrency
        self.poll_s = poll_s
        self.progress = progress
        self.submit_policy = client.retry.replace(retry_quota=False)
        self.not_before = 0.0  # no chunk is sent before this (monotonic) time after a refusal
        self.downloaded = 0
        self.batches_submitted = 0
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RESULTS_DIR).mkdir(exist_ok=True)
        self.journal = Journal(out_dir / STATE_FILE)
        self._check_header()

    def _check_header(self) -> None:
        header = self.journal.header
        if header is None:
            self.journal.write({"op": "manifest", "path": str(self.manifest.resolve()), "sha256": self.digest})
        elif header.get("sha256") != self.digest:
            raise ValueError(
                f"{self.out_dir} holds a run of a different manifest ({header.get('path')}, sha256 "
                f"{str(header.get('sha256'))[:12]}...); {self.manifest} has changed since or is another file: "
                "use a new out_dir"
            )

    @property
    def state(self) -> RunState:
        return self.journal.state

    # ------------------------------------------------------------------ submitting

    def _outstanding_jobs(self) -> int:
        return sum(self.by_line[line].jobs for line in self.state.jobs if line not in self.state.done)

    def _next_chunk(self) -> list[Entry]:
        """The next lines to send, as many as fit the chunk size and the room left in the quota."""
        state = self.state
        assigned = {line for key, lines in state.chunks.items() if key not in state.refused for line in lines}
        outstanding = self._outstanding_jobs()
        room = self.chunk_size if self.limit is None else min(self.chunk_size, self.limit - outstanding)
        if outstanding and room < self.chunk_size // 2:
            return []  # wait for half a chunk of room rather than send many tiny batches
        chunk: list[Entry] = []
        jobs = 0
        for entry in self.entries:
            if entry.line in assigned:
                continue
            if jobs + entry.jobs > room:
                if not chunk and outstanding == 0:
                    chunk.append(entry)  # wider than the room with nothing in flight: the API says if it fits
                break
            chunk.append(entry)
            jobs += entry.jobs
        return chunk

    def submit_some(self) -> bool:
        """Send the pending or next chunk if the quota has room; whether anything was sent."""
        if time.monotonic() < self.not_before:
            return False
        pending = self.state.pending_chunks()
        if pending:
            key, lines = pending[0], self.state.chunks[pending[0]]
        else:
            entries = self._next_chunk()
            if not entries:
                return False
            lines = [e.line for e in entries]
            key = chunk_key(self.manifest, self.digest, lines)
            self.journal.write({"op": "chunk", "key": key, "lines": lines})
        try:
            created = self.client.run(
                calls.submit_batch([self.by_line[n].body for n in lines], key), retry=self.submit_policy
            )
        except ApiError as exc:
            if not ((exc.status == 429 and exc.code in ("quota_exceeded", "rate_limited")) or exc.status == 413):
                if 400 <= exc.status < 500:  # refused as a whole: nothing of it was queued
                    self.journal.write({"op": "refused", "key": key})
                raise _with_lines(exc, lines) from None
            self._refused(key, lines, exc)
            return False
        self._record_batch(key, lines, created)
        return True

    def _refused(self, key: str, lines: list[int], exc: ApiError) -> None:
        """Nothing of a refused chunk was queued: forget its key, learn the limit the refusal names,
        and send smaller chunks (413) or wait for room (429)."""
        self.journal.write({"op": "refused", "key": key})
        jobs = sum(self.by_line[n].jobs for n in lines)
        limit, _ = learn_limit(exc)
        if exc.status == 413:
            if len(lines) == 1:
                raise ApiError(exc.status, exc.code, f"manifest line {lines[0]}: {exc.message}", exc.field) from None
            self.chunk_size = max(1, min(self.chunk_size, limit if limit is not None else jobs // 2))
            if limit is not None and "in flight" in exc.message:
                self.limit = limit
            return
        if exc.code == "quota_exceeded":
            if limit is not None:
                self.limit, self.chunk_size = limit, max(1, min(self.chunk_size, limit))
            else:
                self.chunk_size = max(1, jobs // 2)
            wait_s = self.poll_s  # room appears as this run's own jobs finish: look again soon
        else:  # rate_limited: its Retry-After is when a submission will be accepted
            wait_s = exc.retry_after_s if exc.retry_after_s is not None else self.poll_s
        self.not_before = time.monotonic() + min(max(wait_s, 0.0), self.client.retry.max_retry_after_s)

    def _record_batch(self, key: str, lines: list[int], created: BatchCreated) -> None:
        workflows = {item.index: item for item in created.workflows}
        plain = iter(created.job_ids)
        jobs: dict[str, tuple[str, str | None]] = {}
        for index, line in enumerate(lines):
            item = workflows.get(index)
            jobs[str(line)] = (item.job_ids[-1], item.workflow_id) if item is not None else (next(plain), None)
        self.journal.write({"op": "batch", "key": key, "batch_id": created.batch_id, "jobs": jobs})
        self.batches_submitted += 1

    # ------------------------------------------------------------------ polling and downloading

    def finished_items(self, busy: set[int]) -> list[tuple[int, Outcome]]:
        """(line, outcome) of every job that reached a final status and is neither done nor being
        fetched: from each batch's results listing, or the job itself when the listing lacks it."""
        waiting: dict[str, dict[str, int]] = {}
        for line, (job_id, _, batch_id) in self.state.jobs.items():
            if line not in self.state.done and line not in busy:
                waiting.setdefault(batch_id, {})[job_id] = line
        found: list[tuple[int, Outcome]] = []
        for batch_id, lines in waiting.items():
            seen: dict[str, Outcome] = {}
            try:
                for item in self.client.iter_batch_results(batch_id):
                    if item.job_id in lines and item.status is not None:
                        seen[item.job_id] = Outcome.of(item)
            except ApiError as exc:
                if exc.status != 404:  # 404: the batch record expired; ask each job
                    raise
            for job_id, line in lines.items():
                outcome = seen.get(job_id) or self._job_outcome(job_id)
                if outcome.status in _FINAL or outcome.status == EXPIRED:
                    found.append((line, outcome))
        return found

    def _job_outcome(self, job_id: str) -> Outcome:
        try:
            return Outcome.of(self.client.status(job_id))
        except ApiError as exc:
            if exc.status != 404:
                raise
            return Outcome(EXPIRED, error=f"the record of job {job_id} expired before this run collected it")

    def fetch(self, line: int, item: Outcome) -> Done:
        """The final state of a line, its result downloaded (or found already downloaded)."""
        job_id, workflow_id, _ = self.state.jobs[line]
        body = self.by_line[line].body
        done = Done(
            line=line,
            job_id=job_id,
            status=item.status,
            workflow_id=workflow_id,
            custom_id=item.custom_id if item.custom_id is not None else body.get("custom_id"),
            metadata=item.metadata if item.metadata is not None else body.get("metadata"),
            text=item.text,
            error=item.error,
            error_code=item.error_code,
        )
        if item.status == "succeeded":
            stem = f"{line:06d}_{job_id}"
            folder = self.out_dir / RESULTS_DIR
            existing = [p for p in folder.glob(f"{stem}.*") if not p.name.startswith(".")]
            if existing:  # renamed into place before a crash cut off its journal record
                path = existing[0]
            else:
                try:
                    path = self.client.save_result(job_id, folder, stem=stem)
                except ApiError as exc:
                    if exc.code != "not_ready":
                        raise
                    done.error = exc.message  # succeeded, but its result is no longer stored
                    return done
                self.downloaded += 1
            done.result_path = str(path.relative_to(self.out_dir))
        return done

    # ------------------------------------------------------------------ the loop

    def run(self, timeout_s: float | None) -> RunSummary:
        from tqdm import tqdm

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        futures: dict[Future[Done], int] = {}
        total = len(self.entries)
        with (
            ThreadPoolExecutor(self.download_concurrency, thread_name_prefix="run-jsonl") as pool,
            tqdm(
                total=total, initial=len(self.state.done), unit="job", disable=not self.progress, file=sys.stderr
            ) as bar,
        ):
            try:
                while len(self.state.done) < total:
                    sent = self.submit_some()
                    for line, item in self.finished_items(set(futures.values())):
                        futures[pool.submit(self.fetch, line, item)] = line
                    if futures:
                        timeout = 0 if sent else self.poll_s
                        finished, _ = wait(list(futures), timeout=timeout, return_when=FIRST_COMPLETED)
                        self._record(finished, futures, bar)
                    elif not sent:
                        time.sleep(self.poll_s)
                    bar.set_postfix_str(f"in flight {self._outstanding_jobs()}", refresh=False)
                    if deadline is not None and time.monotonic() > deadline:
                        raise WaitTimeout(
                            f"run_jsonl of {self.manifest}: {len(self.state.done)}/{total} lines finished after "
                            f"{timeout_s:g} s; run it again with the same out_dir to resume"
                        )
            except BaseException:
                # Stopping: downloads not started are dropped, running ones are let finish and
                # journaled, so a resumed run neither fetches them again nor misses them.
                for future in futures:
                    future.cancel()
                finished, _ = wait(list(futures))
                self._record([f for f in finished if not f.cancelled() and f.exception() is None], futures, bar)
                raise
        return self._write_results()

    def _record(self, finished: Iterable[Future[Done]], futures: dict[Future[Done], int], bar: Any) -> None:
        """Journal the lines whose fetch finished (a failed fetch raises its error here)."""
        for future in finished:
            futures.pop(future)
            done = future.result()
            self.journal.write({"op": "done", **done.__dict__})
            bar.update(1)

    def _write_results(self) -> RunSummary:
        path = self.out_dir / RESULTS_FILE
        tmp = path.with_name(f".{path.name}.part")
        counts: dict[str, int] = {}
        with tmp.open("w", encoding="utf-8") as out:
            for entry in self.entries:
                done = self.state.done[entry.line]
                counts[done.status] = counts.get(done.status, 0) + 1
                out.write(json.dumps(done.__dict__) + "\n")
        tmp.replace(path)
        return RunSummary(len(self.entries), counts, self.downloaded, self.batches_submitted, path)


def _with_lines(exc: ApiError, lines: list[int]) -> ApiError:
    """The API's error about a chunk with its items (`jobs[i]`) named by their manifest lines."""

    def named(text: str | None) -> str | None:
        if text is None:
            return None
        return _ITEM_RE.sub(
            lambda m: f"line {lines[int(m.group(1))]}" if int(m.group(1)) < len(lines) else m.group(0), text
        )

    details = [{"field": named(d["field"]), "message": named(d["message"]) or ""} for d in exc.details]
    message = named(exc.message) or ""
    if "line " not in message:
        message += f" (manifest lines {lines[0]}-{lines[-1]})"
    return ApiError(exc.status, exc.code, message, named(exc.field), details=details)


def run_jsonl(
    client: Client,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    chunk_size: int = 100,
    max_in_flight: int | None = None,
    download_concurrency: int = 8,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run the JSONL manifest at `path` (one job or workflow per line) through `client`'s API and
    collect everything in `out_dir` (see the module docstring). Run it again with the same
    `out_dir` to resume after a crash or a `WaitTimeout`. `max_in_flight` caps the jobs this run
    keeps queued (default: learnt from the API's refusals); `chunk_size` caps one batch."""
    for name, value, top in (("chunk_size", chunk_size, 10_000), ("download_concurrency", download_concurrency, 64)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise ValueError(f"{name} {value!r} is invalid: expected an integer in [1, {top}]")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ValueError(f"max_in_flight {max_in_flight!r} is invalid: expected an integer >= 1 or None")
    if not isinstance(poll_s, int | float) or not 0 < poll_s <= 600:
        raise ValueError(f"poll_s {poll_s!r} is invalid: expected seconds in (0, 600]")
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    run = _Run(
        client,
        manifest,
        Path(out_dir),
        chunk_size=chunk_size,
        max_in_flight=max_in_flight,
        download_concurrency=download_concurrency,
        poll_s=float(poll_s),
        progress=progress,
    )
    try:
        return run.run(timeout_s)
    finally:
        run.journal.close()
