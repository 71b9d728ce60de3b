"""The Redis Streams queue against a real Redis: leases, takeover after a SIGKILL, retries with
backoff, dead-lettering, cancel, priorities, batches, idempotency, bad inputs, webhook events and
error codes.

Every key lives under the per-test `redis_prefix`, which the fixture deletes afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from orchestrator.errors import InvalidJobSpec, JobNotFound, LeaseLost
from orchestrator.jobs import JobSpec, JobStatus, Priority, derive_seed
from orchestrator.queue import JobQueue
from orchestrator.settings import Settings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSUMER = Path(__file__).with_name("queue_consumer.py")


def t2a(prompt: str = "rain on a tin roof", **kw) -> dict:
    return {"task": "text_to_audio", "prompt": prompt, **kw}


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture()
def make_queue(client, redis_prefix):
    def make(**kw) -> JobQueue:
        kw.setdefault("lease_s", 5.0)
        kw.setdefault("backoff_base_s", 0.05)
        kw.setdefault("backoff_max_s", 1.0)
        kw.setdefault("retention_s", 600)
        return JobQueue(client, prefix=redis_prefix, **kw)

    return make


def write_foreign_job(client, q: JobQueue, job_id: str, spec_json: str, priority: str = "normal") -> str:
    """Queue a job the way a foreign (or older) producer might, bypassing `submit`'s validation."""
    eid = client.xadd(q.keys.stream(priority), {"job": job_id}).decode()
    client.hset(
        q.keys.job(job_id),
        mapping={
            "status": "queued",
            "priority": priority,
            "tenant": "default",
            "seed": "1",
            "spec": spec_json,
            "submitted_at": f"{time.time():.6f}",
            "attempts": "0",
            "entry": eid,
        },
    )
    return eid


def server_s(client) -> float:
    """Redis' own clock (the queue's scripts stamp times with it), in Unix seconds."""
    sec, usec = client.time()
    return sec + usec / 1e6


def wait_until(condition, what: str, timeout_s: float = 10.0, every_s: float = 0.01) -> None:
    """Poll `condition()` until it holds; fail naming `what` once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting until {what}")
        time.sleep(every_s)


def leases_lapsed(client, q: JobQueue, claims) -> bool:
    """Whether every claim's stream entry has been idle (not renewed) for longer than the lease."""
    lease_ms = q.lease_s * 1000
    for c in claims:
        (entry,) = client.xpending_range(q.keys.stream(c.priority), q.consumer_group, c.entry_id, c.entry_id, 1)
        if entry["time_since_delivered"] <= lease_ms:
            return False
    return True


# --------------------------------------------------------------------------- submit / get


def test_submit_minimal_spec_round_trips(make_queue):
    q = make_queue()
    rec = q.submit(t2a())
    assert rec.status is JobStatus.QUEUED
    assert rec.seed == derive_seed(rec.job_id)
    got = q.get(rec.job_id)
    assert got is not None
    assert got.spec == JobSpec(task="text_to_audio", prompt="rain on a tin roof")
    assert (got.status, got.attempts, got.seed, got.priority) == (
        JobStatus.QUEUED,
        0,
        rec.seed,
        Priority.NORMAL,
    )
    assert got.submitted_at == pytest.approx(rec.submitted_at)
    assert q.get("no-such-job") is None
    assert q.queue_depths() == {"high": 0, "normal": 1, "low": 0}


def test_explicit_seed_wins_and_is_handed_to_the_consumer(make_queue):
    q = make_queue()
    rec = q.submit(t2a(seed=1234))
    (claim,) = q.claim("c1")
    assert rec.seed == claim.seed == 1234
    assert claim.spec.seed == 1234


def test_submit_rejects_bad_spec_with_per_field_errors(make_queue):
    q = make_queue()
    with pytest.raises(InvalidJobSpec) as err:
        q.submit({"task": "text_to_audio", "steps": 0})
    fields = [f for f, _ in err.value.errors]
    assert fields == ["prompt", "steps"]
    assert q.queue_depths()["normal"] == 0


def test_idempotent_submit_returns_the_existing_job(make_queue):
    q = make_queue()
    first = q.submit(t2a(idempotency_key="order-17"))
    again = q.submit(t2a(idempotency_key="order-17"))
    assert again.job_id == first.job_id
    assert q.queue_depths()["normal"] == 1  # one stream entry, not two
    other_tenant = q.submit(t2a(idempotency_key="order-17", tenant="acme"))
    assert other_tenant.job_id != first.job_id  # keys are per tenant
    # Still idempotent after the job finished (until its record expires).
    (claim,) = q.claim("c1", count=1)
    q.ack_success(claim, "s3://b/x.wav")
    done = q.get(claim.job_id)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert q.submit(t2a(idempotency_key=f"order-{17}", tenant=claim.tenant)).job_id == claim.job_id


def test_resubmitting_a_batch_creates_nothing_twice(make_queue):
    q = make_queue()
    specs = [t2a(f"p{i}") for i in range(7)]
    bid, ids = q.submit_batch(specs, batch_id="nightly-1", chunk_size=3)
    bid2, ids2 = q.submit_batch(specs, batch_id="nightly-1", chunk_size=3)
    assert (bid2, ids2) == (bid, ids)
    assert ids == [f"nightly-1-{i}" for i in range(7)]
    status = q.batch_status(bid)
    assert status is not None and status.total == 7 and status.counts[JobStatus.QUEUED] == 7
    assert q.queue_depths()["normal"] == 7


def test_batch_validation(make_queue):
    q = make_queue()
    with pytest.raises(InvalidJobSpec) as err:
        q.submit_batch([t2a("ok"), {"task": "tts"}, t2a("x" * 3000)])
    assert [f for f, _ in err.value.errors] == ["specs[1].transcript", "specs[2].prompt"]
    with pytest.raises(ValueError, match="one tenant"):
        q.submit_batch([t2a("a", tenant="t1"), t2a("b", tenant="t2")])
    q.submit_batch([t2a("a", tenant="t1")], batch_id="shared")
    with pytest.raises(ValueError, match="belongs to tenant t1"):
        q.submit_batch([t2a("b", tenant="t2")], batch_id="shared")
    with pytest.raises(InvalidJobSpec, match="differs from the batch id"):
        q.submit_batch([t2a("a", batch_id="other")], batch_id="shared")
    with pytest.raises(ValueError, match="chunk_size"):
        q.submit_batch([t2a("a")], chunk_size=0)
    assert q.queue_depths()["normal"] == 1  # only the one valid batch was written


# --------------------------------------------------------------------------- claim / lease


def test_claim_ack_records_result_timings_and_extra(make_queue, client):
    q = make_queue(retention_s=120)
    rec = q.submit(t2a(idempotency_key="k"))
    (claim,) = q.claim("engine-1")
    assert (claim.job_id, claim.attempt, claim.consumer) == (rec.job_id, 1, "engine-1")
    running = q.get(rec.job_id)
    assert running is not None and running.status is JobStatus.RUNNING and running.consumer == "engine-1"
    assert client.ttl(q.keys.job(rec.job_id)) == -1  # no expiry while not finished
    q.set_stage(claim, "generate", timings={"understand": 0.25})
    assert q.renew(claim)
    q.ack_success(claim, "s3://bucket/default/x/x.wav", {"text": "hi"}, timings={"generate": 1.5})
    done = q.get(rec.job_id)
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED and done.result_uri == "s3://bucket/default/x/x.wav"
    assert done.timings == {"understand": 0.25, "generate": 1.5}
    assert done.extra == {"text": "hi"} and done.finished_at is not None
    assert 0 < client.ttl(q.keys.job(rec.job_id)) <= 120  # retention of finished records
    assert 0 < client.ttl(q.keys.idempotency("default", "k")) <= 120
    assert q.running_count() == 0
    assert client.xlen(q.keys.stream("normal")) == 0  # acked entries are deleted
    with pytest.raises(LeaseLost):
        q.ack_success(claim, "s3://bucket/again.wav")  # a second ack changes nothing
    assert not q.renew(claim)


def test_ack_many_and_renew_many_check_each_lease(make_queue):
    q = make_queue(lease_s=0.3)
    bid, ids = q.submit_batch([t2a(f"p{i}") for i in range(3)])
    claims = q.claim("a", count=3)
    assert [c.job_id for c in claims] == ids and all(c.batch_id == bid for c in claims)
    assert q.renew_many(claims) == [True, True, True]
    wait_until(lambda: leases_lapsed(q.redis, q, claims), "all three leases lapsed")  # b takes over the first
    assert q.renew_many(claims[1:]) == [True, True]
    (taken,) = q.claim("b")
    assert taken.job_id == ids[0]
    assert q.ack_success_many([(c, f"s3://b/{c.job_id}.wav") for c in claims]) == [False, True, True]
    q.ack_success(taken, "s3://b/taken.wav")
    records = q.get_many([*ids, "missing"])
    assert [r.result_uri for r in records[:3]] == ["s3://b/taken.wav", f"s3://b/{ids[1]}.wav", f"s3://b/{ids[2]}.wav"]
    assert records[3] is None
    status = q.batch_status(bid)
    assert status is not None and status.counts[JobStatus.SUCCEEDED] == 3 and status.done
    assert q.ack_success_many([]) == []


def test_blocking_claim_wakes_when_a_job_arrives(redis_url, redis_prefix, client):
    name = f"claimer-{redis_prefix.strip(':').replace(':', '-')}"
    claimer_client = redis.Redis.from_url(redis_url, client_name=name)
    q = JobQueue(claimer_client, prefix=redis_prefix, lease_s=60.0)
    assert q.claim("c1", block_ms=0) == []
    t0 = time.monotonic()
    assert q.claim("c1", block_ms=150) == []
    assert time.monotonic() - t0 >= 0.14  # an empty queue is waited on, not polled away at once
    claims: list = []
    claimer = threading.Thread(target=lambda: claims.extend(q.claim("c1", block_ms=30_000)))
    claimer.start()

    def blocked_in_xread() -> bool:
        return any(
            c.get("name") == name and c.get("cmd") == "xread" and "b" in c.get("flags", "")
            for c in client.client_list()
        )

    wait_until(blocked_in_xread, "the claimer blocks in XREAD")
    q.submit(t2a())
    # One XREAD slice lasts up to the reclaim interval (5 s at this lease) and the block 30 s: a
    # claim that returns within 3 s of the submit was woken by the new entry.
    claimer.join(timeout=3.0)
    assert not claimer.is_alive(), "the blocked claim did not wake when a job arrived"
    assert len(claims) == 1
    claimer_client.close()


def test_renewed_lease_is_kept_and_a_lapsed_one_taken_over(make_queue):
    q = make_queue(lease_s=0.4)
    q.submit(t2a())
    (a,) = q.claim("a")
    for _ in range(6):  # 0.6 s of renewing, longer than the lease
        time.sleep(0.1)
        assert q.renew(a)
        assert q.claim("b") == []
    # a stalls: b's blocking claim takes the job over once the lease lapses (it re-checks leases
    # several times per lease while it waits).
    (b,) = q.claim("b", block_ms=5000)
    assert (b.job_id, b.attempt, b.consumer) == (a.job_id, 2, "b")
    # The stalled holder can change nothing any more.
    assert not q.renew(a)
    with pytest.raises(LeaseLost):
        q.set_stage(a, "generate")
    with pytest.raises(LeaseLost):
        q.ack_success(a, "s3://b/stale.wav")
    with pytest.raises(LeaseLost):
        q.fail(a, "stale", retryable=True)
    q.ack_success(b, "s3://b/fresh.wav")
    rec = q.get(a.job_id)
    assert rec is not None
    assert (rec.status, rec.result_uri, rec.attempts) == (JobStatus.SUCCEEDED, "s3://b/fresh.wav", 2)


def test_crash_recovery_after_sigkill(make_queue, redis_url, redis_prefix):
    """A consumer process claims a job and is SIGKILLed; after the lease another one completes it."""
    lease_s = 1.0
    q = make_queue(lease_s=lease_s)
    bid, (job_id,) = q.submit_batch([t2a()])
    proc = subprocess.Popen(
        [sys.executable, str(CONSUMER), "--redis-url", redis_url, "--prefix", redis_prefix,
         "--consumer", "doomed", "--mode", "hold", "--lease-s", str(lease_s)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        line = proc.stdout.readline().split()
        assert line == ["CLAIMED", job_id, "1"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    held = q.get(job_id)
    assert held is not None and held.status is JobStatus.RUNNING and held.consumer == "doomed"
    claims = q.claim("rescuer", block_ms=int(lease_s * 1000 * 3))
    assert [c.job_id for c in claims] == [job_id]
    assert claims[0].attempt == 2  # taken over within the claim's block of three leases
    q.ack_success(claims[0], "s3://b/recovered.wav")
    rec = q.get(job_id)
    assert rec is not None and (rec.status, rec.attempts) == (JobStatus.SUCCEEDED, 2)
    status = q.batch_status(bid)
    assert status is not None
    assert status.counts[JobStatus.SUCCEEDED] == 1 and status.finished == 1
    assert q.claim("rescuer", block_ms=int(lease_s * 1500)) == []  # nothing left to replay


# --------------------------------------------------------------------------- retry / dead-letter


def test_retry_waits_for_the_backoff(make_queue):
    base = 0.2
    q = make_queue(backoff_base_s=base, backoff_max_s=2.0, max_attempts=3)
    rec = q.submit(t2a())
    (c1,) = q.claim("c1")
    # Times on Redis' clock, which stamps them: the due time lies in [fail + d/2, fail + d].
    before = server_s(q.redis)
    assert q.fail(c1, "worker restarting", retryable=True) is JobStatus.QUEUED
    after = server_s(q.redis)
    queued = q.get(rec.job_id)
    assert queued is not None and queued.status is JobStatus.QUEUED and queued.error == "worker restarting"
    assert queued.retry_at is not None
    assert before + base / 2 - 0.001 <= queued.retry_at <= after + base + 0.001
    assert q.queue_depths()["normal"] == 1  # the delayed retry counts as backlog
    if server_s(q.redis) < queued.retry_at:
        assert q.claim("c1", block_ms=0) == []  # not before its due time
    (c2,) = q.claim("c1", block_ms=3000)
    assert c2.started_at >= queued.retry_at and c2.attempt == 2
    # The second retry waits about twice as long.
    before = server_s(q.redis)
    q.fail(c2, "still restarting", retryable=True)
    after = server_s(q.redis)
    second = q.get(rec.job_id)
    assert second is not None and second.retry_at is not None
    assert before + base - 0.001 <= second.retry_at <= after + 2 * base + 0.001
    (c3,) = q.claim("c1", block_ms=3000)
    assert c3.started_at >= second.retry_at and c3.attempt == 3


def test_retry_delay_is_exponential_capped_and_jittered(make_queue):
    q = make_queue(backoff_base_s=1.0, backoff_max_s=10.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)]:
        delays = [q.retry_delay_s(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jittered, not constant


def test_dead_letter_after_max_attempts_keeps_last_error(make_queue):
    q = make_queue(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
    bid, (job_id,) = q.submit_batch([t2a()])
    statuses = []
    for attempt in range(1, 4):
        (c,) = q.claim("c1", block_ms=2000)
        assert c.attempt == attempt
        statuses.append(q.fail(c, f"GPU fell over ({attempt})", retryable=True))
    assert statuses == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.DEAD]
    rec = q.get(job_id)
    assert rec is not None and (rec.status, rec.attempts) == (JobStatus.DEAD, 3)
    assert rec.error == "GPU fell over (3)"
    (dead,) = q.dead_letters()
    assert (dead["job"], dead["error"], dead["attempts"], dead["batch"]) == (
        job_id,
        "GPU fell over (3)",
        "3",
        bid,
    )
    status = q.batch_status(bid)
    assert status is not None and status.counts[JobStatus.DEAD] == 1
    assert [(f.job_id, f.status, f.error) for f in status.failures] == [(job_id, JobStatus.DEAD, "GPU fell over (3)")]
    assert q.claim("c1", block_ms=100) == []


def test_permanent_failure_is_not_retried(make_queue):
    q = make_queue()
    rec = q.submit(t2a())
    (c,) = q.claim("c1")
    assert q.fail(c, "input audio is 0.2 s long; need at least 1 s", retryable=False) is JobStatus.FAILED
    got = q.get(rec.job_id)
    assert got is not None and got.status is JobStatus.FAILED and "0.2 s" in (got.error or "")
    assert q.claim("c1", block_ms=200) == []
    assert q.dead_letters() == []


def test_job_whose_holder_keeps_dying_is_dead_lettered(make_queue):
    q = make_queue(lease_s=0.15, max_attempts=2)
    rec = q.submit(t2a())
    for attempt in (1, 2):
        (c,) = q.claim(f"c{attempt}", block_ms=2000)
        assert c.attempt == attempt  # and then "dies": no ack, no renew
    assert q.claim("c3", block_ms=600) == []
    got = q.get(rec.job_id)
    assert got is not None and got.status is JobStatus.DEAD
    assert "lapsed without an ack on attempt 2 of 2" in (got.error or "")
    assert [d["job"] for d in q.dead_letters()] == [rec.job_id]


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_job_never_runs(make_queue):
    q = make_queue()
    rec = q.submit(t2a())
    keep = q.submit(t2a("other"))
    assert q.cancel(rec.job_id) is JobStatus.CANCELLED
    assert q.is_cancel_requested(rec.job_id)
    claims = q.claim("c1", count=10)
    assert [c.job_id for c in claims] == [keep.job_id]
    got = q.get(rec.job_id)
    assert got is not None and got.status is JobStatus.CANCELLED and got.attempts == 0
    assert q.cancel(rec.job_id) is JobStatus.CANCELLED  # idempotent
    with pytest.raises(JobNotFound):
        q.cancel("no-such-job")


def test_cancel_job_waiting_for_retry(make_queue):
    q = make_queue(backoff_base_s=0.3, backoff_max_s=0.3)
    rec = q.submit(t2a())
    (c,) = q.claim("c1")
    q.fail(c, "transient", retryable=True)
    assert q.cancel(rec.job_id) is JobStatus.CANCELLED
    assert q.queue_depths()["normal"] == 0
    assert q.claim("c1", block_ms=600) == []


def test_cancel_running_job_is_seen_between_stages(make_queue):
    q = make_queue()
    bid, (job_id,) = q.submit_batch([t2a()])
    (c,) = q.claim("c1")
    assert not q.is_cancel_requested(job_id)
    assert q.cancel(job_id) is JobStatus.RUNNING
    assert q.is_cancel_requested(job_id)
    assert q.renew(c)  # the holder keeps its lease until it stops
    q.ack_cancelled(c)
    got = q.get(job_id)
    assert got is not None and got.status is JobStatus.CANCELLED and got.cancel_requested
    status = q.batch_status(bid)
    assert status is not None and status.counts[JobStatus.CANCELLED] == 1 and status.counts[JobStatus.RUNNING] == 0
    assert q.cancel(job_id) is JobStatus.CANCELLED


def test_cancelled_running_job_whose_holder_died_is_not_rerun(make_queue):
    q = make_queue(lease_s=0.15)
    rec = q.submit(t2a())
    q.claim("doomed")
    assert q.cancel(rec.job_id) is JobStatus.RUNNING
    assert q.claim("next", block_ms=600) == []
    got = q.get(rec.job_id)
    assert got is not None and got.status is JobStatus.CANCELLED


def test_failing_a_cancelled_job_ends_it_cancelled(make_queue):
    q = make_queue()
    rec = q.submit(t2a())
    (c,) = q.claim("c1")
    q.cancel(rec.job_id)
    assert q.fail(c, "interrupted", retryable=True) is JobStatus.CANCELLED


def test_cancel_of_finished_job_changes_nothing(make_queue):
    q = make_queue()
    rec = q.submit(t2a())
    (c,) = q.claim("c1")
    q.ack_success(c, "s3://b/x.wav")
    assert q.cancel(rec.job_id) is JobStatus.SUCCEEDED
    got = q.get(rec.job_id)
    assert got is not None and got.status is JobStatus.SUCCEEDED


# --------------------------------------------------------------------------- priorities


def test_priority_order_without_starvation(make_queue):
    q = make_queue()
    low = {q.submit(t2a(f"low {i}", priority="low")).job_id for i in range(30)}
    high = {q.submit(t2a(f"high {i}", priority="high")).job_id for i in range(30)}
    order = []
    for _ in range(20):
        (c,) = q.claim("c1")
        order.append("high" if c.job_id in high else "low" if c.job_id in low else "?")
        q.ack_success(c, "s3://b/x.wav")
    # Weights 6:3:1: high first, but every 10th claim starts at the lowest class.
    assert order[0] == "high"
    assert order.count("low") == 2 and order.count("high") == 18
    assert "low" in order[:10]


def test_high_priority_goes_first(make_queue):
    q = make_queue()
    normal = [q.submit(t2a(f"n{i}")).job_id for i in range(5)]
    high = [q.submit(t2a(f"h{i}", priority="high")).job_id for i in range(5)]
    claims = q.claim("c1", count=5)
    assert [c.job_id for c in claims] == high
    assert all(c.priority is Priority.HIGH for c in claims)
    assert q.queue_depths() == {"high": 0, "normal": 5, "low": 0}
    assert [c.job_id for c in q.claim("c1", count=10)] == normal


# --------------------------------------------------------------------------- batches


def test_batch_counts_follow_every_transition(make_queue, client):
    q = make_queue(max_attempts=2, retention_s=300)
    bid, ids = q.submit_batch([t2a(f"p{i}") for i in range(6)], chunk_size=4)

    def counts():
        s = q.batch_status(bid)
        assert s is not None and s.total == 6
        return {k.value: v for k, v in s.counts.items() if v}

    assert counts() == {"queued": 6}
    claims = {c.job_id: c for c in q.claim("c1", count=6)}
    assert counts() == {"running": 6}
    q.ack_success(claims[ids[0]], "s3://b/0.wav")
    q.ack_success(claims[ids[1]], "s3://b/1.wav")
    q.fail(claims[ids[2]], "bad input audio", retryable=False)
    q.fail(claims[ids[3]], "transient", retryable=True, delay_s=0)
    q.cancel(ids[4])
    q.ack_cancelled(claims[ids[4]])
    assert counts() == {"succeeded": 2, "failed": 1, "queued": 1, "cancelled": 1, "running": 1}
    assert client.ttl(q.keys.batch(bid)) == -1  # unfinished batches do not expire
    (retry,) = q.claim("c1", block_ms=1000)
    assert retry.job_id == ids[3]
    q.fail(retry, "transient again", retryable=True)
    q.fail(claims[ids[5]], "bad prompt", retryable=False)
    final = q.batch_status(bid, limit=2)
    assert final is not None and final.done
    assert {k.value: v for k, v in final.counts.items() if v} == {
        "succeeded": 2, "failed": 2, "cancelled": 1, "dead": 1,
    }  # fmt: skip
    assert final.failures_total == 3 and final.next_offset == 2
    assert [(f.job_id, f.status) for f in final.failures] == [
        (ids[2], JobStatus.FAILED),
        (ids[3], JobStatus.DEAD),
    ]
    page2 = q.batch_status(bid, offset=2, limit=2)
    assert page2 is not None and page2.next_offset is None
    assert [(f.job_id, f.error) for f in page2.failures] == [(ids[5], "bad prompt")]
    assert 0 < client.ttl(q.keys.batch(bid)) <= 300  # a finished batch expires with its records
    assert q.batch_status("no-such-batch") is None


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_per_job_and_never_stop_the_consumer(make_queue, client):
    q = make_queue()
    stream = q.keys.stream("normal")
    client.xadd(stream, {"spec": '{"task": "text_to_audio", "prompt": '})  # raw JSON, no job id
    write_foreign_job(client, q, "malformed-json", '{"task": "text_to_audio", "prompt": "rain"')
    write_foreign_job(client, q, "unknown-task", json.dumps({"task": "make_noise", "prompt": "x"}))
    write_foreign_job(client, q, "missing-fields", json.dumps({"task": "tts"}))
    write_foreign_job(client, q, "oversized-text", json.dumps({"task": "text_to_audio", "prompt": "x" * 5000}))
    write_foreign_job(client, q, "oversized-spec", json.dumps({"task": "tts", "transcript": "y" * 70_000}))
    client.xadd(stream, {"job": "never-written"})  # an entry whose record does not exist
    good = q.submit(t2a("the one good job"))

    claims = q.claim("c1", count=1, block_ms=1000)
    assert [c.job_id for c in claims] == [good.job_id]

    def error_of(job_id: str) -> str:
        rec = q.get(job_id)
        assert rec is not None and rec.status is JobStatus.FAILED and rec.spec is None
        assert rec.error is not None
        return rec.error

    assert "not valid JSON" in error_of("malformed-json")
    assert "task: Input should be 'understand'" in error_of("unknown-task")
    assert "make_noise" in error_of("unknown-task")
    assert "transcript: required for task 'tts'" in error_of("missing-fields")
    assert "prompt: String should have at most 2000 characters" in error_of("oversized-text")
    assert "over the limit of 65536" in error_of("oversized-spec")
    dead = q.dead_letters()
    assert len(dead) == 2
    assert 'no "job" field' in dead[0]["error"] and "text_to_audio" in dead[0]["raw"]
    assert "never-written, which has no record" in dead[1]["error"]
    assert client.xlen(stream) == 1  # only the good job's entry (pending) is left
    q.ack_success(claims[0], "s3://b/good.wav")
    assert q.claim("c1", block_ms=100) == []


# --------------------------------------------------------------------------- plumbing


def test_works_with_a_decoding_client_and_recreates_deleted_streams(redis_url, redis_prefix):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        q = JobQueue(c, prefix=redis_prefix, lease_s=5)
        q.submit(t2a())
        (claim,) = q.claim("c1")
        q.ack_success(claim, "s3://b/x.wav")
        c.delete(*q.keys.streams())  # someone wiped the streams (and with them the group)
        rec = q.submit(t2a("again"))
        (claim,) = q.claim("c1", block_ms=500)
        assert claim.job_id == rec.job_id
    finally:
        c.close()


def test_queue_from_url_settings_and_argument_checks(redis_url, redis_prefix):
    with JobQueue(redis_url, prefix=redis_prefix) as q:
        assert q.claim("c1") == []
    settings = Settings(redis_url=redis_url, redis_prefix=redis_prefix, lease_s=2.5, max_attempts=4)
    with JobQueue.from_settings(settings) as q:
        assert (q.lease_s, q.max_attempts, q.keys.prefix) == (2.5, 4, redis_prefix)
        rec = q.submit(t2a())
        assert [c.job_id for c in q.claim("c1")] == [rec.job_id]
    with pytest.raises(ValueError, match=r"backoff_base_s \(5\) must not exceed backoff_max_s \(1\)"):
        JobQueue(redis_url, prefix=redis_prefix, backoff_base_s=5, backoff_max_s=1)
    with pytest.raises(ValueError, match="lease_s"):
        JobQueue(redis_url, prefix=redis_prefix, lease_s=0)
    with pytest.raises(ValueError, match="max_attempts"):
        JobQueue(redis_url, prefix=redis_prefix, max_attempts=0)
    with pytest.raises(ValueError, match="prefix"):
        JobQueue(redis_url, prefix="bad prefix*")
    with JobQueue(redis_url, prefix=redis_prefix) as q:
        with pytest.raises(ValueError, match="count"):
            q.claim("c1", count=0)
        with pytest.raises(ValueError, match="consumer"):
            q.claim("")


# --------------------------------------------------------------------------- webhook events and error codes

HOOK = "https://hooks.example.com/audio"


def events(client, q: JobQueue) -> list[dict[str, str]]:
    """The webhook events stream, oldest first, as text."""
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(q.keys.webhook_events)]


def event(object_: str, id_: str, name: str, url: str = HOOK, tenant: str = "default") -> dict[str, str]:
    return {"object": object_, "id": id_, "event": name, "tenant": tenant, "url": url}


def test_a_job_with_a_webhook_url_announces_its_end_exactly_once(make_queue, client):
    q = make_queue(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)
    retried = q.submit(t2a("retried then succeeds", webhook_url=HOOK))
    (c,) = q.claim("c1", block_ms=2000)
    assert q.fail(c, "worker restarting", retryable=True) is JobStatus.QUEUED
    assert events(client, q) == []  # a retry is no end
    (c,) = q.claim("c1", block_ms=2000)
    q.ack_success(c, "s3://results/a.wav")
    with pytest.raises(LeaseLost):  # a stale holder cannot end it a second time
        q.ack_success(c, "s3://results/a.wav")
    assert events(client, q) == [event("job", retried.job_id, "succeeded")]

    failed = q.submit(t2a("bad input", webhook_url=HOOK + "/2"))
    (c,) = q.claim("c1", block_ms=2000)
    q.fail(c, "input audio is too short", retryable=False, error_code="bad_audio")
    dead = q.submit(t2a("keeps failing", webhook_url=HOOK))
    for _ in range(2):
        (c,) = q.claim("c1", block_ms=2000)
        q.fail(c, "GPU fell over", retryable=True)
    cancelled = q.submit(t2a("never mind", webhook_url=HOOK))
    q.cancel(cancelled.job_id)
    q.cancel(cancelled.job_id)  # cancelling an ended job again changes nothing
    silent = q.submit(t2a("no hook"))
    (c,) = q.claim("c1", block_ms=2000)
    q.ack_success(c, "s3://results/silent.wav")
    assert q.get(silent.job_id).status is JobStatus.SUCCEEDED
    assert events(client, q)[1:] == [
        event("job", failed.job_id, "failed", HOOK + "/2"),
        event("job", dead.job_id, "failed"),  # a dead-lettered job's event is `failed`
        event("job", cancelled.job_id, "cancelled"),
    ]


def test_a_batch_announces_completed_once_its_last_job_ends(make_queue, client):
    q = make_queue()
    bid, _ = q.submit_batch([t2a(f"item {i}") for i in range(3)], webhook_url=HOOK)
    q.submit_batch([t2a("item 0")], batch_id=bid, webhook_url=HOOK)  # an idempotent re-send adds nothing
    claims = q.claim("c1", count=3, block_ms=2000)
    assert len(claims) == 3
    q.ack_success(claims[0], "s3://results/0.wav")
    q.fail(claims[1], "bad prompt", retryable=False)
    assert events(client, q) == []  # one job still runs; the jobs have no hook of their own
    q.ack_success(claims[2], "s3://results/2.wav")
    assert events(client, q) == [event("batch", bid, "completed")]
    assert q.batch_status(bid).webhook_url == HOOK


def test_a_batch_written_in_parts_is_announced_once_after_its_last_part(make_queue, client):
    # A batch larger than one chunk is written in several script calls. Here every job ends as soon
    # as its chunk is written, so after each chunk the batch looks complete: only the end of the
    # last chunk's job may announce it.
    q = make_queue()
    write_chunk = q._submit_chunk

    def write_then_finish(*args, **kwargs):
        written = write_chunk(*args, **kwargs)
        for c in q.claim("c1", count=10, block_ms=2000):
            q.ack_success(c, f"s3://results/{c.job_id}.wav")
        return written

    q._submit_chunk = write_then_finish
    bid, job_ids = q.submit_batch([t2a(f"item {i}") for i in range(3)], chunk_size=1, webhook_url=HOOK)
    assert [q.get(j).status for j in job_ids] == [JobStatus.SUCCEEDED] * 3
    assert events(client, q) == [event("batch", bid, "completed")]


def test_a_workflow_announces_how_it_ended_and_a_step_its_own_end(make_queue, client):
    q = make_queue()
    steps = [
        {"id": "describe", "task": "understand", "prompt": "What is this?", "input_audio_uri": "s3://in/a.wav"},
        {"id": "score", "task": "text_to_music", "prompt": "Music for {{describe.text}}", "webhook_url": HOOK + "/s"},
    ]
    ok = q.submit_workflow({"steps": steps, "webhook_url": HOOK})
    (c,) = q.claim("c1", block_ms=2000)
    q.ack_success(c, "s3://results/d.json", {"text": "rain"})
    assert events(client, q) == []
    (c,) = q.claim("c1", block_ms=2000)
    q.ack_success(c, "s3://results/s.wav")
    assert events(client, q) == [
        event("job", f"{ok.workflow_id}-score", "succeeded", HOOK + "/s"),
        event("workflow", ok.workflow_id, "succeeded"),
    ]

    failing = q.submit_workflow({"steps": steps, "webhook_url": HOOK, "idempotency_key": "second"})
    (c,) = q.claim("c1", block_ms=2000)
    q.fail(c, "input not found: s3://in/a.wav", retryable=False, error_code="input_not_found")
    # The step that never ran is cancelled (its own hook says so), then the workflow has failed.
    assert events(client, q)[2:] == [
        event("job", f"{failing.workflow_id}-score", "cancelled", HOOK + "/s"),
        event("workflow", failing.workflow_id, "failed"),
    ]
    ended = q.workflow_status(failing.workflow_id)
    assert [s.error_code for s in ended.steps] == ["input_not_found", "dependency_failed"]

    stopped = q.submit_workflow({"steps": steps[:1], "webhook_url": HOOK, "idempotency_key": "third"})
    q.cancel_workflow(stopped.workflow_id)
    q.cancel_workflow(stopped.workflow_id)
    assert events(client, q)[4:] == [event("workflow", stopped.workflow_id, "cancelled")]


def test_every_end_records_its_error_code(make_queue):
    q = make_queue(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)
    bid, (a, b, c_id) = q.submit_batch([t2a("a"), t2a("b"), t2a("c")])
    claims = {c.job_id: c for c in q.claim("c1", count=3, block_ms=2000)}
    q.fail(claims[a], "input audio lasts 400 s", retryable=False, error_code="bad_audio")
    q.fail(claims[b], "storage throttled", retryable=True, error_code="storage_unavailable")
    waiting = q.get(b)
    assert (waiting.status, waiting.error_code) == (JobStatus.QUEUED, "storage_unavailable")
    (again,) = q.claim("c1", block_ms=2000)
    q.fail(again, "storage throttled", retryable=True, error_code="storage_unavailable")
    assert (q.get(b).status, q.get(b).error_code) == (JobStatus.DEAD, "retries_exhausted")
    q.fail(claims[c_id], "a bug", retryable=True)  # no code given: internal
    (retry,) = q.claim("c1", block_ms=2000)
    assert q.get(c_id).error_code == "internal"
    q.ack_success(retry, "s3://results/c.wav")
    done = q.get(c_id)
    assert (done.error, done.error_code) == (None, None)  # a success clears the earlier attempts' error
    failures = q.batch_status(bid).failures
    assert [(f.job_id, f.error_code) for f in failures] == [(a, "bad_audio"), (b, "retries_exhausted")]
    cancelled = q.submit(t2a("d"))
    q.cancel(cancelled.job_id)
    assert q.get(cancelled.job_id).error_code == "cancelled"
    with pytest.raises(ValueError):  # a code outside the vocabulary is refused before anything is written
        q.fail(again, "x", retryable=False, error_code="no_such_code")


def test_a_job_whose_lease_keeps_lapsing_dies_with_retries_exhausted(make_queue):
    q = make_queue(lease_s=0.15, max_attempts=1)
    rec = q.submit(t2a(webhook_url=HOOK))
    q.claim("c1", block_ms=2000)  # and then "dies"
    assert q.claim("c2", block_ms=600) == []
    got = q.get(rec.job_id)
    assert (got.status, got.error_code) == (JobStatus.DEAD, "retries_exhausted")


# --------------------------------------------------------------------------- listing indexes


def test_listing_indexes_drop_what_expired(make_queue, client):
    q = make_queue()
    jobs = []
    for i in range(4):  # newest first is by submission millisecond (ties by id): keep them apart
        jobs.append(q.submit(t2a(f"job {i}", tenant="acme")).job_id)
        time.sleep(0.003)
    bid, _ = q.submit_batch([t2a("in a batch", tenant="acme")])
    index = q.keys.tenant_jobs("acme")
    assert client.zcard(index) == 5 and client.zcard(q.keys.tenant_batches("acme")) == 1
    client.delete(q.keys.job(jobs[0]), q.keys.job(jobs[2]), q.keys.batch(bid))  # as if they had expired
    listed, cursor = q.list_jobs("acme", limit=10)
    assert [r.job_id for r in listed] == [f"{bid}-0", jobs[3], jobs[1]] and cursor is None
    assert client.zcard(index) == 3  # a listing removes the entries it found expired
    assert q.list_batches("acme") == ([], None)
    client.delete(q.keys.job(jobs[1]))
    q.submit(t2a("later", tenant="acme"))  # each submission sweeps the oldest entries
    assert client.zcard(index) == 3 and client.zscore(index, jobs[1]) is None
    assert q.list_jobs("default") == ([], None)
