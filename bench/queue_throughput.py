"""Queue throughput and latency: our Redis Streams queue next to rq and dramatiq on the same Redis.

Figures, each for the same no-op workload on all three systems:

- submit/s: one job per call (`JobQueue.submit` / `Queue.enqueue` / `actor.send`);
- bulk submit/s: many jobs per call (`submit_batch` / `enqueue_many` in a pipeline /
  `dramatiq.group(...).run()`, dramatiq's only multi-message API);
- drain/s: one consumer process takes and acknowledges pre-queued no-op jobs (ours: `claim` +
  `ack_success_many`, each job still its own lease-checked status write; rq: `SimpleWorker` in
  burst mode; dramatiq: a `Worker` with its default threads), timed from "go" until every job is
  acknowledged, process start-up excluded;
- p50/p99 submit-to-start latency: jobs submitted one at a time (2 ms apart) to an idle,
  waiting consumer; latency = time the consumer has the job minus time just before submit.

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
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def make_dramatiq(url: str, namespace: str) -> Any:
    """A dramatiq broker on our client configuration, and its no-op actor."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(client=client_for(url), namespace=namespace)

    def dq_noop(tag: str) -> None:
        with _started_lock:
            _started[tag] = time.time()

    return broker, dramatiq.actor(dq_noop, broker=broker, queue_name="bench", max_retries=0)


# --------------------------------------------------------------------------- consumer processes


def role_main(args: argparse.Namespace) -> int:
    """Consumer side, run in its own process: print READY, wait for GO (drain) or just consume."""
    logging.basicConfig(level=logging.WARNING)
    n = args.n
    out: dict[str, Any] = {}
    if args.role.startswith("ours"):
        q = JobQueue(client_for(args.redis_url), prefix=args.prefix, **QUEUE_KW)
        q.ensure_groups()
        print("READY", flush=True)
        if args.role == "ours-drain":
            sys.stdin.readline()
            t0 = time.perf_counter()
            done = 0
            while done < n:
                claims = q.claim("drain", count=200, block_ms=1000)
                recorded = q.ack_success_many([(c, "noop://") for c in claims])
                done += sum(recorded)
            out["elapsed_s"] = time.perf_counter() - t0
        else:
            done = 0
            while done < n:
                claims = q.claim("latency", count=10, block_ms=1000)
                now = time.time()
                for c in claims:
                    _started[c.job_id] = now
                    q.ack_success(c, "noop://")
                done += len(claims)
            out["started"] = _started
    elif args.role.startswith("rq"):
        from rq import Queue, SimpleWorker

        c = client_for(args.redis_url)
        worker = SimpleWorker([Queue(args.queue, connection=c)], connection=c, name=f"{args.queue}-worker")
        print("READY", flush=True)
        if args.role == "rq-drain":
            sys.stdin.readline()
            t0 = time.perf_counter()
            worker.work(burst=True, logging_level="WARNING")
            out["elapsed_s"] = time.perf_counter() - t0
        else:
            worker.work(max_jobs=n, logging_level="WARNING")
            out["started"] = _started
    else:
        import dramatiq

        broker, _ = make_dramatiq(args.redis_url, args.namespace)
        worker = dramatiq.Worker(broker)
        if args.role == "dramatiq-drain":
            print("READY", flush=True)
            sys.stdin.readline()
            t0 = time.perf_counter()
            worker.start()
            broker.join("bench", interval=5)
            out["elapsed_s"] = time.perf_counter() - t0
        else:
            worker.start()
            print("READY", flush=True)
            while len(_started) < n:
                time.sleep(0.01)
            out["started"] = dict(_started)
        worker.stop()
        out["done"] = len(_started)
    print(json.dumps(out), flush=True)
    return 0


def spawn(role: str, n: int, **kw: str) -> subprocess.Popen:
    cmd = [sys.executable, str(THIS), "--role", role, "--n", str(n)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", v]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "READY":
        proc.kill()
        raise RuntimeError(f"{role} consumer did not start (said {line!r})")
    return proc


def finish(proc: subprocess.Popen, timeout_s: float = 120.0) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"consumer exited with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def drain_rate(role: str, n: int, **kw: str) -> float:
    proc = spawn(role, n, **kw)
    try:
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        return n / finish(proc)["elapsed_s"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def latency_ms(role: str, n: int, submit_one: Callable[[int], str], **kw: str) -> tuple[float, float]:
    """Submit n jobs 2 ms apart to a waiting consumer; (p50, p99) of submit-to-start in ms."""
    proc = spawn(role, n, **kw)
    try:
        time.sleep(0.5)  # let the consumer reach its blocking wait
        submitted: dict[str, float] = {}
        for i in range(n):
            t = time.time()
            submitted[submit_one(i)] = t
            time.sleep(0.002)
        started = finish(proc)["started"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lat = [(started[k] - t) * 1000 for k, t in submitted.items()]
    return statistics.median(lat), percentile(lat, 0.99)


# --------------------------------------------------------------------------- the three systems


def bench_ours(url: str, run: str, a: argparse.Namespace) -> dict[str, float]:
    c = client_for(url)
    res: dict[str, float] = {}
    q = JobQueue(c, prefix=f"bench:{run}:submit:", **QUEUE_KW)
    specs = [noop_spec(i) for i in range(a.n_single)]
    t0 = time.perf_counter()
    for spec in specs:
        q.submit(spec)
    res["submit_per_s"] = a.n_single / (time.perf_counter() - t0)
    specs = [noop_spec(i) for i in range(a.n_bulk)]
    t0 = time.perf_counter()
    q.submit_batch(specs, chunk_size=1000)
    res["bulk_submit_per_s"] = a.n_bulk / (time.perf_counter() - t0)
    cleanup(c, f"bench:{run}:submit:*")

    drain_prefix = f"bench:{run}:drain:"
    JobQueue(c, prefix=drain_prefix, **QUEUE_KW).submit_batch([noop_spec(i) for i in range(a.n_drain)])
    res["drain_per_s"] = drain_rate("ours-drain", a.n_drain, redis_url=url, prefix=drain_prefix)
    cleanup(c, f"bench:{run}:drain:*")

    lat_prefix = f"bench:{run}:lat:"
    lq = JobQueue(c, prefix=lat_prefix, **QUEUE_KW)
    lq.ensure_groups()
    res["p50_ms"], res["p99_ms"] = latency_ms(
        "ours-latency", a.n_latency, lambda i: lq.submit(noop_spec(i)).job_id, redis_url=url, prefix=lat_prefix
    )
    c.close()
    return res


def bench_rq(url: str, run: str, a: argparse.Namespace) -> dict[str, float]:
    from rq import Queue

    c = client_for(url)
    res: dict[str, float] = {}
    q = Queue(f"bench-{run}-submit", connection=c)
    t0 = time.perf_counter()
    for i in range(a.n_single):
        q.enqueue(rq_noop, str(i), job_id=f"bench-{run}-s{i}")
    res["rq_submit_per_s"] = a.n_single / (time.perf_counter() - t0)
    datas = [Queue.prepare_data(rq_noop, (str(i),), job_id=f"bench-{run}-b{i}") for i in range(a.n_bulk)]
    t0 = time.perf_counter()
    for start in range(0, a.n_bulk, 1000):
        with c.pipeline() as pipe:
            q.enqueue_many(datas[start : start + 1000], pipeline=pipe)
            pipe.execute()
    res["rq_bulk_submit_per_s"] = a.n_bulk / (time.perf_counter() - t0)

    dq = Queue(f"bench-{run}-drain", connection=c)
    datas = [Queue.prepare_data(rq_noop, (str(i),), job_id=f"bench-{run}-d{i}") for i in range(a.n_drain)]
    for start in range(0, a.n_drain, 1000):
        with c.pipeline() as pipe:
            dq.enqueue_many(datas[start : start + 1000], pipeline=pipe)
            pipe.execute()
    res["rq_drain_per_s"] = drain_rate("rq-drain", a.n_drain, redis_url=url, queue=dq.name)

    lq = Queue(f"bench-{run}-lat", connection=c)

    def submit_one(i: int) -> str:
        tag = f"bench-{run}-l{i}"
        lq.enqueue(rq_noop, tag, job_id=tag)
        return tag

    res["rq_p50_ms"], res["rq_p99_ms"] = latency_ms("rq-latency", a.n_latency, submit_one, redis_url=url, queue=lq.name)
    c.close()
    return res


def bench_dramatiq(url: str, run: str, a: argparse.Namespace) -> dict[str, float]:
    import dramatiq

    res: dict[str, float] = {}
    _, actor = make_dramatiq(url, f"bench-{run}-submit")
    t0 = time.perf_counter()
    for i in range(a.n_single):
        actor.send(str(i))
    res["dramatiq_submit_per_s"] = a.n_single / (time.perf_counter() - t0)
    messages = [actor.message(str(i)) for i in range(a.n_bulk)]
    t0 = time.perf_counter()
    dramatiq.group(messages).run()
    res["dramatiq_bulk_submit_per_s"] = a.n_bulk / (time.perf_counter() - t0)

    ns = f"bench-{run}-drain"
    _, actor = make_dramatiq(url, ns)
    dramatiq.group([actor.message(str(i)) for i in range(a.n_drain)]).run()
    res["dramatiq_drain_per_s"] = drain_rate("dramatiq-drain", a.n_drain, redis_url=url, namespace=ns)

    ns = f"bench-{run}-lat"
    _, actor = make_dramatiq(url, ns)

    def submit_one(i: int) -> str:
        tag = f"l{i}"
        actor.send(tag)
        return tag

    res["dramatiq_p50_ms"], res["dramatiq_p99_ms"] = latency_ms(
        "dramatiq-latency", a.n_latency, submit_one, redis_url=url, namespace=ns
    )
    return res


def cleanup(c: redis.Redis, pattern: str) -> int:
    keys = list(c.scan_iter(match=pattern, count=2000))
    for i in range(0, len(keys), 1000):
        c.delete(*keys[i : i + 1000])
    return len(keys)


def cleanup_run(url: str, run: str) -> None:
    c = client_for(url)
    for pattern in (f"bench:{run}:*", f"*bench-{run}*"):
        cleanup(c, pattern)
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
    ap.add_argument("--n-latency", type=int, default=300)
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
        for name, fn in (("ours", bench_ours), ("rq", bench_rq), ("dramatiq", bench_dramatiq)):
            t0 = time.perf_counter()
            got = fn(args.redis_url, run, args)
            figures.update(got)
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in got.items())
            print(f"{name:9s} ({time.perf_counter() - t0:5.1f} s): {shown}", flush=True)
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
