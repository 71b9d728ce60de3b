"""The webhook dispatcher: queue events in, signed deliveries out, retried for hours, never lost.

One loop per process (`start_dispatcher` runs it in a thread of `audio-omni serve`; `audio-omni
webhooks run` in the foreground); any number of processes share the work:

1. **Intake.** Read new events from `P webhooks:events` as one consumer of the group "webhooks"
   (XREADGROUP), build each one's body from the queue's record and turn it into a delivery record
   (`DeliveryStore.intake`: one script writes the record once and acknowledges the entry). Events a
   dead dispatcher read but never took in are taken over with XAUTOCLAIM once idle for
   `event_claim_idle_s`.
2. **Dispatch.** Claim due deliveries (`DeliveryStore.claim`, leased for `delivery_lease_s`) up to
   the free worker threads; each worker makes one attempt (`Sender.send`) and records it
   (`DeliveryStore.finish`): 2xx delivered; 410 or a refused URL failed at once; anything else is
   retried after the next wait of `retry_schedule_s` (jittered) until the schedule runs out. A
   dispatcher that dies mid-attempt leaves its lease to lapse: the delivery is due again and the
   next dispatcher sends it with the same `webhook-id` (receivers deduplicate on it).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import redis

from orchestrator.keys import RedisKeys
from orchestrator.logging import get_logger
from orchestrator.queue import JobQueue
from orchestrator.tenants import TenantNotFound, TenantStore
from orchestrator.webhooks.deliveries import Claimed, DeliveryStore, parse_event
from orchestrator.webhooks.payloads import event_body
from orchestrator.webhooks.sender import AttemptResult, Sender
from orchestrator.webhooks.settings import WebhookSettings
from orchestrator.webhooks.targets import Resolver

__all__ = ["WebhookDispatcher", "retry_delay_s", "start_dispatcher"]

Outcome = Literal["delivered", "retry", "failed"]
READ_COUNT = 100
BUSY_POLL_S = 0.05  # how often a loop with attempts in flight looks for freed workers
ERROR_PAUSE_S = 1.0


def retry_delay_s(settings: WebhookSettings, attempts: int, rng: random.Random | None = None) -> float | None:
    """The wait before the next attempt after `attempts` failed ones, or None when none is left.
    Retry n waits a uniform draw in `[(1 - jitter) * cap, cap]`, cap = `retry_schedule_s[n - 1]`."""
    schedule = settings.retry_schedule_s
    if attempts < 1 or attempts > len(schedule):
        return None
    cap = schedule[attempts - 1]
    draw = (rng or random).random()
    return cap * (1.0 - settings.jitter * draw)


class WebhookDispatcher:
    """Takes in events and sends deliveries for one deployment (`keys`) over a shared Redis client."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        settings: WebhookSettings | None = None,
        *,
        consumer: str | None = None,
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        self.settings = settings or WebhookSettings.from_env()
        self.store = DeliveryStore(client, keys, retention_s=self.settings.retention_s)
        self.queue = JobQueue(client, prefix=keys.prefix)
        self.tenants = TenantStore(client, prefix=keys.prefix)
        self.sender = Sender(self.settings, resolver=resolver)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.log = get_logger("webhooks", consumer=self.consumer)
        self._r = client
        self._group = self.settings.consumer_group
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="webhook")
        self._active: set[Future[None]] = set()
        self._next_autoclaim = 0.0
        self._group_ready = False

    # ----------------------------------------------------------------------- intake

    def ensure_group(self) -> None:
        """Create the consumer group (reading the stream from its start) unless it exists."""
        if self._group_ready:
            return
        try:
            self._r.xgroup_create(self.store.keys.events, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def intake(self, block_s: float = 0.0) -> int:
        """Take in events that dead dispatchers left (when due) and new ones, waiting up to
        `block_s` for the first. Returns how many became deliveries."""
        self.ensure_group()
        taken = 0
        if time.monotonic() >= self._next_autoclaim:
            taken += self._take_over()
            self._next_autoclaim = time.monotonic() + min(5.0, self.settings.event_claim_idle_s / 2)
        block_ms = round(block_s * 1000) if block_s > 0 else None
        reply: Any = self._r.xreadgroup(
            self._group, self.consumer, {self.store.keys.events: ">"}, count=READ_COUNT, block=block_ms
        )
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                taken += self._take_in(entry_id, fields)
        return taken

    def _take_over(self) -> int:
        taken, start = 0, "0-0"
        idle_ms = round(self.settings.event_claim_idle_s * 1000)
        while True:
            reply: Any = self._r.xautoclaim(
                self.store.keys.events, self._group, self.consumer, idle_ms, start_id=start, count=READ_COUNT
            )
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            for entry_id, fields in reply[1]:
                if fields is None:  # deleted while pending (Redis < 7 reports it this way)
                    continue
                taken += self._take_in(entry_id, fields)
            if start == "0-0":
                return taken

    def _take_in(self, entry_id: Any, fields: Mapping[Any, Any]) -> int:
        entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            event = parse_event(entry, fields)
        except ValueError as exc:
            self.log.error("malformed webhook event dropped", entry_id=entry, error=str(exc))
            self.store.drop_event(entry, group=self._group)
            return 0
        self.store.intake(event, group=self._group, body=event_body(self.queue, event))
        self.log.info("webhook event taken in", delivery_id=event.delivery_id, type=event.type, tenant=event.tenant)
        return 1

    # ----------------------------------------------------------------------- dispatch

    def dispatch(self) -> int:
        """Start one attempt for each due delivery that a free worker can take. Returns how many."""
        self._active = {f for f in self._active if not f.done()}
        free = self.settings.concurrency - len(self._active)
        if free <= 0:
            return 0
        claimed = self.store.claim(free, lease_s=self.settings.delivery_lease_s)
        for item in claimed:
            self._active.add(self._pool.submit(self.attempt, item))
        return len(claimed)

    def attempt(self, item: Claimed) -> None:
        """One attempt of a claimed delivery, recorded. An unexpected error is logged and the
        lease left to lapse, so the delivery is tried again."""
        log = self.log.bind(delivery_id=item.delivery_id, tenant=item.tenant, attempt=item.attempts)
        try:
            result = self._send(item)
            outcome: Outcome
            delay = 0.0
            if result.delivered:
                outcome = "delivered"
            else:
                wait = None if result.permanent else retry_delay_s(self.settings, item.attempts)
                outcome = "failed" if wait is None else "retry"
                delay = wait or 0.0
            recorded = self.store.finish(
                item, outcome, status_code=result.status_code, error=result.error, delay_s=delay
            )
            if not recorded:
                log.warning("webhook attempt outlived its lease; another dispatcher owns the delivery")
            elif outcome == "delivered":
                log.info("webhook delivered", status_code=result.status_code)
            else:
                log.warning("webhook attempt failed", outcome=outcome, retry_in_s=round(delay, 3), error=result.error)
        except Exception:
            log.exception("webhook attempt crashed; the delivery is retried when its lease lapses")

    def _send(self, item: Claimed) -> AttemptResult:
        try:
            secrets = self.tenants.webhook_signing_secrets(item.tenant, overlap_s=self.settings.secret_overlap_s)
        except TenantNotFound:
            message = f"tenant {item.tenant!r} is not registered, so there is no secret to sign with"
            return AttemptResult(False, error=message + " (create it: audio-omni tenants create)")
        return self.sender.send(item.url, item.delivery_id, item.body, secrets)

    # ----------------------------------------------------------------------- loop

    def step(self, block_s: float = 0.0) -> int:
        """One round: dispatch what is due, then take in events (waiting up to `block_s`)."""
        started = self.dispatch()
        if started or self._active:
            block_s = min(block_s, BUSY_POLL_S)
        due = self.store.next_due_in_s()
        if due is not None:
            block_s = min(block_s, due)
        return started + self.intake(block_s)

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; then let the attempts in flight finish and release resources."""
        self.log.info("webhook dispatcher started", group=self._group)
        try:
            while not stop.is_set():
                try:
                    self.step(self.settings.poll_interval_s)
                except redis.RedisError as exc:
                    self.log.warning("webhook dispatcher cannot reach Redis; retrying", error=str(exc))
                    stop.wait(ERROR_PAUSE_S)
                except Exception:
                    self.log.exception("webhook dispatcher round failed; retrying")
                    stop.wait(ERROR_PAUSE_S)
        finally:
            self.close()
            self.log.info("webhook dispatcher stopped")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.sender.close()


def start_dispatcher(
    client: redis.Redis, keys: RedisKeys, *, stop: threading.Event, settings: WebhookSettings | None = None
) -> threading.Thread:
    """Run a `WebhookDispatcher` in a daemon thread until `stop` is set; returns the started thread
    (join it after setting `stop`: it finishes the attempts in flight first)."""
    dispatcher = WebhookDispatcher(client, keys, settings)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="webhook-dispatcher", daemon=True)
    thread.start()
    return thread
