"""Prometheus metrics, each name defined once, by Prometheus convention (`_total` counters,
`_seconds` / `_bytes` units). docs/operations.md lists them with the alerts that use them.

Per process (summing over processes is right):

- engine (`EngineMetrics`, `/metrics` of `audio-omni serve`): `audio_omni_jobs_total{status}` (finished
  attempts by outcome: succeeded, failed, retry, cancelled, abandoned), `audio_omni_redeliveries_total`,
  `audio_omni_jobs_in_flight`, `audio_omni_stage_seconds{stage}` (the engine's own stage timings),
  `audio_omni_queue_wait_seconds` (submitted -> first claim), `audio_omni_job_latency_seconds{status}`
  (submitted -> final outcome: succeeded, failed, cancelled);
- API (`ApiMetrics`, its `/metrics` route): `audio_omni_api_requests_total{method,route,status}`,
  `audio_omni_api_request_seconds{route}`, `audio_omni_api_jobs_submitted_total{kind}`,
  `audio_omni_api_admission_refused_total{reason}`;
- both: `audio_omni_build_info{version,git_sha,python,component}` (always 1).

Shared state, exported by ONE process at a time (so `sum()` never over-counts): the holder of a Redis
lock (`LeaderLock`, TTL `AUDIO_OMNI_METRICS_LEADER_TTL_S`). Every engine contends once a second and
every API at each scrape, so the queue stays visible with no engine running:
`audio_omni_queue_depth{priority}`, `audio_omni_jobs_running`, `audio_omni_dead_letters`,
`audio_omni_engines` (engine processes with a fresh backlog report), `audio_omni_pool_backlog{pool}`
(jobs that will reach each pool), `audio_omni_metrics_leader` (1 on the exporter).

Pool replicas, exported by one ENGINE at a time (a second lock; only engines reach the pools):
`audio_omni_sampler_batch_size` (requests per sampling loop), `audio_omni_sampler_replicas`, and per
sampler replica with CUDA: `audio_omni_sampler_gpu_memory_allocated_bytes{replica}`,
`..._reserved_bytes`, `..._total_bytes`, `audio_omni_sampler_gpu_utilization_ratio{replica}` (pynvml only).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "ApiMetrics",
    "EngineMetrics",
    "LeaderLock",
    "SharedState",
    "SharedStateCollector",
    "build_labels",
    "leader_key",
]

STAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
LATENCY_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FINAL_OUTCOMES = ("succeeded", "failed", "cancelled")
GPU_FIELDS = {
    "memory_allocated_bytes": "GPU memory held by tensors",
    "memory_reserved_bytes": "GPU memory reserved by the caching allocator",
    "memory_total_bytes": "GPU memory of the device",
}


# --------------------------------------------------------------------------- build info


def _git_sha() -> str:
    """`AUDIO_OMNI_GIT_SHA` (set by the image build), else the checkout's HEAD, else "unknown"."""
    given = os.environ.get("AUDIO_OMNI_GIT_SHA", "").strip()
    if given:
        return given[:40]
    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:40]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:40]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0][:40]
    except OSError:
        pass
    return "unknown"


def build_labels(component: str) -> dict[str, str]:
    """The labels of `audio_omni_build_info` for this process."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("audio-omni-jobs")
    except PackageNotFoundError:
        ours = "unknown"
    return {"version": ours, "git_sha": _git_sha(), "python": platform.python_version(), "component": component}


def _build_info(registry: CollectorRegistry, component: str) -> Gauge:
    labels = build_labels(component)
    gauge = Gauge("audio_omni_build_info", "Build of this process (always 1)", list(labels), registry=registry)
    gauge.labels(**labels).set(1)
    return gauge


# --------------------------------------------------------------------------- one exporter of shared state

_ACQUIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def process_id(component: str) -> str:
    """A name for this process that no other process shares (a lock holder must be unique)."""
    return f"{component}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def leader_key(prefix: str, role: str) -> str:
    """The Redis key of the lock whose holder exports `role`'s metrics (`shared` or `pools`)."""
    if role not in ("shared", "pools"):
        raise ValueError(f"role must be 'shared' or 'pools', got {role!r}")
    return f"{prefix}metrics:leader:{role}"


class LeaderLock:
    """A Redis lock with a TTL: `acquire()` takes it when free and renews it when held (one Lua
    script each, so two contenders never both hold it). Held means the last successful
    `acquire()` is younger than the TTL; a holder that stops renewing loses it when it expires."""

    def __init__(self, client: redis.Redis, key: str, holder: str, ttl_s: float) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.client, self.key, self.holder, self.ttl_s = client, key, holder, ttl_s
        self._held_at: float | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """True when this process holds the lock now. A Redis error counts as not holding it."""
        try:
            ok = bool(self._acquire(keys=[self.key], args=[self.holder, int(self.ttl_s * 1000)]))
        except redis.RedisError:
            ok = False
        self._held_at = time.monotonic() if ok else None
        return ok

    @property
    def held(self) -> bool:
        return self._held_at is not None and time.monotonic() - self._held_at < self.ttl_s

    def release(self) -> None:
        """Give the lock up (on shutdown) so another process takes over at once."""
        self._held_at = None
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self._release(keys=[self.key], args=[self.holder])


@dataclass(frozen=True)
class SharedState:
    """One snapshot of the system's shared state, read from Redis."""

    queue_depths: Mapping[str, int]
    running: int
    dead_letters: int
    engines: int
    pool_backlog: Mapping[str, int] = field(default_factory=dict)


class SharedStateCollector(Collector):
    """Yields the shared-state gauges of the latest snapshot while `is_leader()` holds, else
    nothing (a process that is not the exporter exports none of them)."""

    def __init__(self, is_leader: Callable[[], bool], holder: str) -> None:
        self._is_leader = is_leader
        self._holder = holder
        self._state: SharedState | None = None

    def update(self, state: SharedState | None) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        if state is None or not self._is_leader():
            return
        depth = GaugeMetricFamily("audio_omni_queue_depth", "Jobs waiting, by priority", labels=["priority"])
        for priority, n in sorted(state.queue_depths.items()):
            depth.add_metric([priority], n)
        yield depth
        yield GaugeMetricFamily("audio_omni_jobs_running", "Jobs claimed by an engine now", value=state.running)
        yield GaugeMetricFamily("audio_omni_dead_letters", "Dead-lettered jobs", value=state.dead_letters)
        yield GaugeMetricFamily("audio_omni_engines", "Engine processes reporting", value=state.engines)
        backlog = GaugeMetricFamily("audio_omni_pool_backlog", "Jobs that will reach each pool", labels=["pool"])
        for pool, n in sorted(state.pool_backlog.items()):
            backlog.add_metric([pool], n)
        yield backlog
        leader = GaugeMetricFamily("audio_omni_metrics_leader", "1 on the exporter of shared state", labels=["holder"])
        leader.add_metric([self._holder], 1)
        yield leader


def read_shared_state(queue: Any, client: redis.Redis, *, dead_letter_key: str, backlog_key: str) -> SharedState:
    """The shared state from Redis: the queue's depths and running jobs, the dead-letter stream's
    length and the engines' backlog reports (fresh ones only, as the autoscaler reads them)."""
    from workers.autoscaling import DEFAULT_STALE_S, POOLS, waiting_work

    depths = queue.queue_depths()
    running = queue.running_count()
    dead = int(client.xlen(dead_letter_key))
    reports = client.hgetall(backlog_key) or {}
    now = time.time()
    engines = 0
    for value in reports.values():
        try:
            if now - float(json.loads(value)["t"]) <= DEFAULT_STALE_S:
                engines += 1
        except (ValueError, TypeError, KeyError):
            continue
    backlog = {pool: waiting_work(reports, pool, now_s=now) for pool in POOLS}
    return SharedState(queue_depths=depths, running=running, dead_letters=dead, engines=engines, pool_backlog=backlog)


class SharedStateExporter:
    """Contends for the shared-state lock and, while holding it, keeps the collector's snapshot fresh."""

    def __init__(self, lock: LeaderLock, collector: SharedStateCollector, read: Callable[[], SharedState]) -> None:
        self.lock, self.collector, self._read = lock, collector, read

    def refresh(self) -> bool:
        """One round: True when this process exports the shared state (and read it now)."""
        if not self.lock.acquire():
            self.collector.update(None)
            return False
        try:
            self.collector.update(self._read())
        except redis.RedisError:
            self.collector.update(None)
            raise
        return True


# --------------------------------------------------------------------------- the engine's


class EngineMetrics:
    """Jobs by outcome, stage and latency histograms, the shared state (when elected) and the
    pool replicas' batch sizes and GPU figures (when elected for the pools)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, holder: str | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = _build_info(r, "engine")
        self.jobs = Counter("audio_omni_jobs", "Finished job attempts by outcome", ["status"], registry=r)
        self.stage_s = Histogram(
            "audio_omni_stage_seconds", "Stage duration", ["stage"], buckets=STAGE_BUCKETS_S, registry=r
        )
        self.queue_wait_s = Histogram(
            "audio_omni_queue_wait_seconds", "Submitted to first claim", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.latency_s = Histogram(
            "audio_omni_job_latency_seconds",
            "Submitted to final outcome (end to end)",
            ["status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.redeliveries = Counter(
            "audio_omni_redeliveries", "Jobs claimed again after an earlier attempt", registry=r
        )
        self.in_flight = Gauge("audio_omni_jobs_in_flight", "Jobs running in this process", registry=r)
        # Pools (exported by the pools leader only).
        self.sampler_batch = Histogram(
            "audio_omni_sampler_batch_size", "Requests per sampling loop", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.sampler_replicas = Gauge(
            "audio_omni_sampler_replicas", "Sampler replicas that answered the last poll", registry=r
        )
        self.gpu = {
            name: Gauge(f"audio_omni_sampler_gpu_{name}", doc, ["replica"], registry=r)
            for name, doc in GPU_FIELDS.items()
        }
        self.gpu_utilization = Gauge(
            "audio_omni_sampler_gpu_utilization_ratio", "GPU busy fraction (pynvml)", ["replica"], registry=r
        )
        self.holder = holder or process_id("engine")
        self.exporter: SharedStateExporter | None = None  # set by `attach`
        self.shared = SharedStateCollector(lambda: self.exporter is not None and self.exporter.lock.held, self.holder)
        r.register(self.shared)
        self._lock = threading.Lock()
        # Per job in flight: (seconds from submission to this claim, monotonic time of the claim).
        self._claims: dict[str, tuple[float | None, float]] = {}
        # Last cumulative histogram seen per sampler replica, so repeated polls observe only the new loops.
        self._seen_batches: dict[Hashable, dict[int, int]] = {}

    def attach(self, queue: Any, client: redis.Redis, *, backlog_key: str, ttl_s: float) -> SharedStateExporter:
        """Contend for exporting the shared state of `queue` (a `JobQueue`); call `refresh()` on the
        result about once a second (the service's housekeeping does)."""
        keys = queue.keys
        lock = LeaderLock(client, leader_key(keys.prefix, "shared"), self.holder, ttl_s)
        self.exporter = SharedStateExporter(
            lock,
            self.shared,
            lambda: read_shared_state(queue, client, dead_letter_key=keys.dead_letter, backlog_key=backlog_key),
        )
        return self.exporter

    def job_claimed(self, job: Any) -> None:
        """A job was claimed; an attempt after the first is a redelivery, a first one has waited."""
        self.in_flight.inc()
        attempt = getattr(job, "attempt", 1)
        if attempt > 1:
            self.redeliveries.inc()
        claim = getattr(job, "token", None)
        waited: float | None = None
        if claim is not None and getattr(claim, "submitted_at", None):
            waited = max(0.0, float(claim.started_at) - float(claim.submitted_at))  # both Redis' clock
            if attempt == 1:
                self.queue_wait_s.observe(waited)
        with self._lock:
            self._claims[job.job_id] = (waited, time.monotonic())

    def job_finished(self, result: Any) -> None:
        """Count the attempt by its outcome, observe its stages, and its end-to-end latency when final."""
        self.in_flight.dec()
        outcome = str(result.outcome)
        self.jobs.labels(status=outcome).inc()
        for stage, seconds in result.timings.items():
            self.stage_s.labels(stage=stage).observe(seconds)
        with self._lock:
            waited, claimed_at = self._claims.pop(result.job_id, (None, 0.0))
        if waited is not None and outcome in FINAL_OUTCOMES:
            self.latency_s.labels(status=outcome).observe(waited + time.monotonic() - claimed_at)

    # ------------------------------------------------------------------ pools (the pools leader)

    def observe_replica_reports(self, reports: Mapping[Any, Mapping[str, Any]], *, baseline: bool = False) -> None:
        """Sampler replicas' `stats()` reports ({replica: report}): observe the sampling loops each
        ran since its previous report (with `baseline`, only remember the counters: a new exporter
        must not count loops an earlier one counted), and set the GPU gauges per replica."""
        with self._lock:
            for replica, report in reports.items():
                seen = self._seen_batches.setdefault(replica, {})
                for size, count in (report.get("batch_sizes") or {}).items():
                    size, count = int(size), int(count)
                    if not baseline:
                        for _ in range(max(0, count - seen.get(size, 0))):
                            self.sampler_batch.observe(size)
                    seen[size] = max(count, seen.get(size, 0))
            self.sampler_replicas.set(len(reports))
            self.clear_gpu()
            for replica, report in reports.items():
                gpu = report.get("gpu") or {}
                for name, gauge in self.gpu.items():
                    if gpu.get(name) is not None:
                        gauge.labels(replica=str(replica)).set(float(gpu[name]))
                if gpu.get("utilization_ratio") is not None:
                    self.gpu_utilization.labels(replica=str(replica)).set(float(gpu["utilization_ratio"]))

    def observe_batch_sizes(self, histogram: Mapping[int, int], *, replica: Hashable = None) -> None:
        """Observe one replica's cumulative `{batch size: loops}` counters (see `observe_replica_reports`)."""
        self.observe_replica_reports({replica: {"batch_sizes": histogram}})

    def clear_gpu(self) -> None:
        for gauge in (*self.gpu.values(), self.gpu_utilization):
            gauge.clear()

    def forget_replicas(self) -> None:
        """No longer the pools exporter: drop the per-replica gauges and the counters seen."""
        with self._lock:
            self._seen_batches.clear()
            self.clear_gpu()
            self.sampler_replicas.set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[Any, threading.Thread]:
        """Expose `/metrics` on `addr:port` (a daemon thread); returns the server and its thread."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        return start_http_server(port, addr=addr, registry=self.registry)


# --------------------------------------------------------------------------- the API's


class ApiMetrics:
    """Requests by route and status, their latency, admissions, build info, and the shared state
    while this API holds the exporter lock (refreshed at each scrape: `render(refresh)`)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, holder: str | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = _build_info(r, "api")
        self.requests = Counter(
            "audio_omni_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "audio_omni_api_request_seconds", "HTTP request latency", ["route"], buckets=REQUEST_BUCKETS_S, registry=r
        )
        self.submitted = Counter("audio_omni_api_jobs_submitted_total", "Jobs accepted over HTTP", ["kind"], registry=r)
        self.refused = Counter(
            "audio_omni_api_admission_refused_total", "Submissions refused by limits", ["reason"], registry=r
        )
        self.holder = holder or process_id("api")
        self.exporter: SharedStateExporter | None = None
        self.shared = SharedStateCollector(lambda: self.exporter is not None and self.exporter.lock.held, self.holder)
        r.register(self.shared)

    def attach(self, queue: Any, *, ttl_s: float) -> SharedStateExporter:
        """Contend for exporting the shared state of `queue` (a `JobQueue`) at each scrape."""
        keys = queue.keys
        lock = LeaderLock(queue.redis, leader_key(keys.prefix, "shared"), self.holder, ttl_s)
        self.exporter = SharedStateExporter(
            lock,
            self.shared,
            lambda: read_shared_state(
                queue, queue.redis, dead_letter_key=keys.dead_letter, backlog_key=keys.autoscale_backlog
            ),
        )
        return self.exporter

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
