"""Queue throughput and latency: our Redis Streams queue next to rq and dramatiq on the same Redis.

Figures, each for the same no-op workload on all three systems:

- submit/s: one job per call (`JobQueue.submit` / `Queue.enqueue` / `actor.send`);
- bulk submit/s: many jobs per call (`submit_batch` / `enqueue_many` in a pipeline /
  `dramatiq.group(...).run()`, dramatiq's only multi-message API);
- drain/s: one consumer process takes and acknowledges pre-queued no-op jobs (ours: a claim
  thread (`claim`, 200 at a time) feeding an ack thread (`ack_success_many`; every job still gets
  its own lease check, status write, ack and batch count); rq: `SimpleWorker` in burst mode;
  dramatiq: a `Worker` with its default 8 threads), timed from "go" until every job is
  acknowledged (or the time budget is spent), process start-up excluded;
- p50/p99 submit-to-start latency: jobs submitted one at a time, `--latency-gap-ms` apart (longer
  than any system's per-job cost, so no backlog builds), to a waiting consumer; latency = time the
  consumer has the job minus the time just before the submit call.

All three share one Redis client configuration (`redis.Redis.from_url`). Keys live under
`bench:{run}:` (ours), `rq:*bench-{run}*` and `bench-{run}*` (dramatiq's namespace) and are
deleted at the end, whatever happens. Never FLUSHDB.

Run: `.venv/bin/python bench/queue_throughput.py [--redis-url redis://127.0.0.1:6379/15]`.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: orchestrator/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder: rq imports its jobs by module

import redis

from orchestrator.jobs import JobSpec
from orchestrator.queue import JobQueue

DEFAULT_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
QUEUE_KW = {"lease_s": 30.0, "max_attempts": 3}
THIS = Path(__file__).resolve()


def noop_spec(i: int) -> JobSpec:
    return JobSpec(task="text_to_audio", prompt=f"no-op {i}", steps=1)


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- peers: job functions

_started: dict[str, float] = {}
_started_lock = threading.Lock()


def rq_noop(tag: str) -> None:
    """rq job: note when it started (SimpleWorker runs it in the worker process)."""
    _started[tag] = time.time()


def rq_job() -> Callable[[str], None]:
    """`rq_noop` as rq must reference it: from an importable module, not `__main__`."""
    import queue_throughput

    return queue_throughput.rq_noop


def make_dramatiq(url: str, namespace: str) -> Any:
    """A dramatiq broker on our client configuration, and its no-op actor."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(client=client_for(url), namespace=namespace)
    dramatiq.set_broker(broker)  # so nothing falls back to a default broker on db 0

    def dq_noop(tag: str) -> None:
        with _started_lock:
            _started[tag] = time.time()

    return broker, dramatiq.actor(dq_noop, broker=broker, queue_name="bench", max_retries=0)


# --------------------------------------------------------------------------- consumer processes


def _wait_until(cond: Callable[[], bool], budget_s: float, poll_s: float = 0.005) -> None:
    deadline = time.perf_counter() + budget_s
    while not cond() and time.perf_counter() < deadline:
        time.sleep(poll_s)


def role_main(args: argparse.Namespace) -> int:
    """Consumer side, in its own process. Prints READY once set up; a drain role then waits for a
    line on stdin ("go") and times until `n` jobs are acknowledged or `budget_s` is spent. Prints
    one JSON line: {"done": jobs, "elapsed_s": ...} or {"started": {tag: unix time}}."""
    logging.basicConfig(level=logging.WARNING)
    n, budget_s = args.n, args.budget_s
    out: dict[str, Any] = {}
    if args.role.startswith("ours"):
        q = JobQueue(client_for(args.redis_url), prefix=args.prefix, **QUEUE_KW)
        q.ensure_groups()
        print("READY", flush=True)
        if args.role == "ours-drain":
            sys.stdin.readline()
            t0 = time.perf_counter()
            # One process, two threads as in the engine: a claim loop feeding the ack path, so that
            # parsing one batch overlaps Redis running the script of the other.
            handoff: queue.Queue[list | None] = queue.Queue(maxsize=2)

            def claim_loop() -> None:
                taken = 0
                while taken < n and time.perf_counter() - t0 < budget_s:
                    claims = q.claim("drain", count=200, block_ms=200)
                    taken += len(claims)
                    if claims:
                        handoff.put(claims)
                handoff.put(None)

            threading.Thread(target=claim_loop, daemon=True).start()
            done = 0
            while (claims := handoff.get()) is not None:
                done += sum(q.ack_success_many([(c, "noop://") for c in claims]))
            out.update(done=done, elapsed_s=time.perf_counter() - t0)
        else:
            t0 = time.perf_counter()
            while len(_started) < n and time.perf_counter() - t0 < budget_s:
                claims = q.claim("latency", count=10, block_ms=200)
                now = time.time()
                for c in claims:
                    _started[c.job_id] = now
                    q.ack_success(c, "noop://")
            out["started"] = _started
    elif args.role.startswith("rq"):
        import queue_throughput  # the module rq imports the job function from
        from rq import Queue, SimpleWorker

        c = client_for(args.redis_url)
        rq_queue = Queue(args.queue, connection=c)
        worker = SimpleWorker([rq_queue], connection=c, name=f"{args.queue}-worker")
        started = queue_throughput._started

        # rq installs signal handlers, so its unmodified worker loop runs on the main thread and a
        # watcher thread reports and ends the process.
        def watch(t0: float) -> None:
            _wait_until(lambda: len(started) >= n, budget_s - (time.perf_counter() - t0))
            if args.role == "rq-drain":
                out.update(done=len(started), elapsed_s=time.perf_counter() - t0)
            else:
                out["started"] = dict(started)
            print(json.dumps(out), flush=True)
            os._exit(0)

        print("READY", flush=True)
        if args.role == "rq-drain":
            sys.stdin.readline()
        threading.Thread(target=watch, args=(time.perf_counter(),), daemon=True).start()
        worker.work(burst=args.role == "rq-drain", logging_level="WARNING")
        while True:  # burst finished first: the watcher reports
            time.sleep(1)
    else:
        import dramatiq

        broker, _ = make_dramatiq(args.redis_url, args.namespace)
        worker = dramatiq.Worker(broker)  # default: 8 worker threads
        if args.role == "dramatiq-drain":
            print("READY", flush=True)
            sys.stdin.readline()
            t0 = time.perf_counter()
            worker.start()
            # Done = acknowledged: the broker counts queued plus unacknowledged messages.
            _wait_until(lambda: broker.do_qsize("bench") == 0, budget_s, poll_s=0.02)
            out.update(done=n - broker.do_qsize("bench"), elapsed_s=time.perf_counter() - t0)
        else:
            worker.start()
            print("READY", flush=True)
            _wait_until(lambda: len(_started) >= n, budget_s)
            out["started"] = dict(_started)
    print(json.dumps(out), flush=True)
    os._exit(0)  # do not wait for the peers' worker threads


def spawn(role: str, n: int, budget_s: float, **kw: str) -> subprocess.Popen:
    cmd = [sys.executable, str(THIS), "--role", role, "--n", str(n), "--budget-s", str(budget_s)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", v]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "READY":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{role} consumer did not start (said {line!r})")
    return proc


def finish(proc: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"consumer exited with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def drain_rate(role: str, n: int, budget_s: float, **kw: str) -> float:
    """Jobs acknowledged per second by one consumer process (n jobs, or as many as fit the budget)."""
    proc = spawn(role, n, budget_s, **kw)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    got = finish(proc, budget_s + 30)
    return got["done"] / got["elapsed_s"]


def latency_ms(role: str, n: int, gap_s: float, submit_one: Callable[[int], str], **kw: str) -> tuple[float, float]:
    """Submit n jobs `gap_s` apart to a waiting consumer; (p50, p99) of submit-to-start in ms."""
    budget_s = n * gap_s + 20
    proc = spawn(role, n, budget_s, **kw)
    try:
        time.sleep(0.5)  # let the consumer reach its blocking wait
        submitted: dict[str, float] = {}
        for i in range(n):
            t = time.time()
            submitted[submit_one(i)] = t
            time.sleep(gap_s)
    finally:
        started = finish(proc, budget_s + 30)["started"]
    # A job that never started within the budget counts as the budget (it is not dropped).
    lat = [(started.get(k, t + budget_s) - t) * 1000 for k, t in submitted.items()]
    return statistics.median(lat), percentile(lat, 0.99)


def rate(n: int, budget_s: float, chunk: int, step: Callable[[int, int], object]) -> float:
    """Items per second of `step(start, stop)` over [0, n) in chunks, stopping early when the
    time budget is spent (the rate counts only the items done)."""
    t0 = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - t0 < budget_s:
        k = min(chunk, n - done)
        step(done, done + k)
        done += k
    return done / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- the three systems


class Ours:
    """Our queue: `JobQueue` on the shared client configuration, keys under `bench:{run}:`."""

    key = ""

    def __init__(self, url: str, run: str, a: argparse.Namespace) -> None:
        self.url, self.run, self.a = url, run, a
        self.c = client_for(url)
        self.specs = [noop_spec(i) for i in range(max(a.n_single, a.n_bulk, a.n_drain, a.n_latency))]

    def _queue(self, phase: str) -> JobQueue:
        return JobQueue(self.c, prefix=f"bench:{self.run}:{phase}:", **QUEUE_KW)

    def submit(self) -> float:
        q = self._queue("single")
        return rate(self.a.n_single, self.a.budget_s, 1, lambda i, _: q.submit(self.specs[i]))

    def bulk_submit(self) -> float:
        q = self._queue("bulk")
        return rate(self.a.n_bulk, self.a.budget_s, 1000, lambda i, j: q.submit_batch(self.specs[i:j], chunk_size=1000))

    def drain(self, round_: int) -> float:
        phase = f"drain{round_}"
        self._queue(phase).submit_batch(self.specs[: self.a.n_drain], chunk_size=1000)
        prefix = f"bench:{self.run}:{phase}:"
        return drain_rate("ours-drain", self.a.n_drain, self.a.budget_s, redis_url=self.url, prefix=prefix)

    def latency(self) -> tuple[float, float]:
        q = self._queue("lat")
        q.ensure_groups()
        prefix = f"bench:{self.run}:lat:"
        submit_one = lambda i: q.submit(self.specs[i]).job_id  # noqa: E731
        return latency_ms("ours-latency", self.a.n_latency, self.a.latency_gap_ms / 1000, submit_one,
                          redis_url=self.url, prefix=prefix)  # fmt: skip


class Rq:
    """rq: `Queue` / `SimpleWorker` on the same client configuration; names contain `bench-{run}`."""

    key = "rq_"

    def __init__(self, url: str, run: str, a: argparse.Namespace) -> None:
        from rq import Queue

        self.Queue, self.url, self.run, self.a = Queue, url, run, a
        self.c = client_for(url)
        self.job = rq_job()

    def _enqueue_many(self, q: Any, items: list) -> None:
        with self.c.pipeline() as pipe:
            q.enqueue_many(items, pipeline=pipe)
            pipe.execute()

    def submit(self) -> float:
        q, run = self.Queue(f"bench-{self.run}-single", connection=self.c), self.run
        return rate(
            self.a.n_single, self.a.budget_s, 1, lambda i, _: q.enqueue(self.job, f"s{i}", job_id=f"bench-{run}-s{i}")
        )

    def bulk_submit(self) -> float:
        q, run = self.Queue(f"bench-{self.run}-bulk", connection=self.c), self.run
        datas = [
            self.Queue.prepare_data(self.job, (f"b{i}",), job_id=f"bench-{run}-b{i}") for i in range(self.a.n_bulk)
        ]
        return rate(self.a.n_bulk, self.a.budget_s, 1000, lambda i, j: self._enqueue_many(q, datas[i:j]))

    def drain(self, round_: int) -> float:
        q, run, n = self.Queue(f"bench-{self.run}-drain{round_}", connection=self.c), self.run, self.a.n_drain
        datas = [self.Queue.prepare_data(self.job, (f"d{i}",), job_id=f"bench-{run}-d{round_}-{i}") for i in range(n)]
        for start in range(0, n, 1000):
            self._enqueue_many(q, datas[start : start + 1000])
        return drain_rate("rq-drain", n, self.a.budget_s, redis_url=self.url, queue=q.name)

    def latency(self) -> tuple[float, float]:
        q, run = self.Queue(f"bench-{self.run}-lat", connection=self.c), self.run

        def submit_one(i: int) -> str:
            tag = f"bench-{run}-l{i}"
            q.enqueue(self.job, tag, job_id=tag)
            return tag

        return latency_ms("rq-latency", self.a.n_latency, self.a.latency_gap_ms / 1000, submit_one,
                          redis_url=self.url, queue=q.name)  # fmt: skip


class Dramatiq:
    """dramatiq: `RedisBroker(client=...)` on the same client configuration, namespace `bench-{run}-*`."""

    key = "dramatiq_"

    def __init__(self, url: str, run: str, a: argparse.Namespace) -> None:
        import dramatiq

        self.dramatiq, self.url, self.run, self.a = dramatiq, url, run, a

    def submit(self) -> float:
        _, actor = make_dramatiq(self.url, f"bench-{self.run}-single")
        return rate(self.a.n_single, self.a.budget_s, 1, lambda i, _: actor.send(str(i)))

    def bulk_submit(self) -> float:
        broker, actor = make_dramatiq(self.url, f"bench-{self.run}-bulk")
        messages = [actor.message(str(i)) for i in range(self.a.n_bulk)]
        group = self.dramatiq.group
        return rate(self.a.n_bulk, self.a.budget_s, 1000, lambda i, j: group(messages[i:j], broker=broker).run())

    def drain(self, round_: int) -> float:
        ns = f"bench-{self.run}-drain{round_}"
        broker, actor = make_dramatiq(self.url, ns)
        self.dramatiq.group([actor.message(str(i)) for i in range(self.a.n_drain)], broker=broker).run()
        return drain_rate("dramatiq-drain", self.a.n_drain, self.a.budget_s, redis_url=self.url, namespace=ns)

    def latency(self) -> tuple[float, float]:
        ns = f"bench-{self.run}-lat"
        _, actor = make_dramatiq(self.url, ns)

        def submit_one(i: int) -> str:
            tag = f"l{i}"
            actor.send(tag)
            return tag

        return latency_ms("dramatiq-latency", self.a.n_latency, self.a.latency_gap_ms / 1000, submit_one,
                          redis_url=self.url, namespace=ns)  # fmt: skip


def cleanup(c: redis.Redis, pattern: str) -> int:
    keys = list(c.scan_iter(match=pattern, count=2000))
    for i in range(0, len(keys), 1000):
        c.delete(*keys[i : i + 1000])
    return len(keys)


def cleanup_run(url: str, run: str) -> None:
    c = client_for(url)
    for pattern in (f"bench:{run}:*", f"*bench-{run}*"):
        cleanup(c, pattern)
    # rq's maintenance lock (it expires on its own within minutes; only the bench uses rq here).
    c.delete("rq:clean_groups")
    for registry in ("rq:workers", "rq:queues"):  # rq's global sets: drop only our members
        members = [m for m in c.smembers(registry) if f"bench-{run}".encode() in m]
        if members:
            c.srem(registry, *members)
    c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=DEFAULT_URL)
    ap.add_argument("--n-single", type=int, default=2000)
    ap.add_argument("--n-bulk", type=int, default=20000)
    ap.add_argument("--n-drain", type=int, default=5000)
    ap.add_argument("--n-latency", type=int, default=200)
    ap.add_argument("--latency-gap-ms", type=float, default=10.0)
    ap.add_argument("--budget-s", type=float, default=8.0, help="time cap per throughput phase (keeps the run bounded)")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--queue", help=argparse.SUPPRESS)
    ap.add_argument("--namespace", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        return role_main(args)

    run = uuid.uuid4().hex[:10]
    t_start = time.perf_counter()
    figures: dict[str, float] = {}
    try:
        systems = [cls(args.redis_url, run, args) for cls in (Ours, Rq, Dramatiq)]
        # Phase by phase across the three systems, so that compared figures are taken close together
        # in time (other load on the machine drifts). Drain, the most load-sensitive, is best of two.
        for phase in ("submit", "bulk_submit", "drain", "latency"):
            t0, before = time.perf_counter(), set(figures)
            for system in systems:
                k = system.key
                if phase == "latency":
                    figures[f"{k}p50_ms"], figures[f"{k}p99_ms"] = system.latency()
                elif phase == "drain":
                    figures[f"{k}drain_per_s"] = max(system.drain(r) for r in (1, 2))
                else:
                    figures[f"{k}{phase}_per_s"] = getattr(system, phase)()
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in figures.items() if k not in before)
            print(f"{phase:12s} ({time.perf_counter() - t0:5.1f} s): {shown}", flush=True)
    finally:
        cleanup_run(args.redis_url, run)
    peer_drain = max(figures["rq_drain_per_s"], figures["dramatiq_drain_per_s"])
    print(
        f"drain {figures['drain_per_s'] / peer_drain:.1f}x the faster peer; bulk submit "
        f"{figures['bulk_submit_per_s'] / figures['rq_bulk_submit_per_s']:.1f}x rq enqueue_many; "
        f"p50 {figures['p50_ms']:.2f} ms; total {time.perf_counter() - t_start:.0f} s",
        flush=True,
    )
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
