"""Prometheus metrics, each name defined once: the engine's (`EngineMetrics`, served on `/metrics` by
`serve(port)`) and the HTTP API's (`ApiMetrics`, served by the API's own `/metrics` route).

Engine:

- `audio_omni_queue_depth{priority}`: jobs waiting in Redis (queued + delayed retries);
- `audio_omni_jobs_total{status}`: finished attempts by outcome (succeeded, failed, retry,
  cancelled, abandoned);
- `audio_omni_stage_seconds{stage}`: stage durations (load, understand, encode, generate, ...);
- `audio_omni_sampler_batch_size`: requests per sampling loop, from the sampler replicas' counters;
- `audio_omni_redeliveries_total`: jobs claimed again after an earlier attempt (retry or takeover);
- `audio_omni_jobs_in_flight`: jobs running in this process.

API (plus `audio_omni_queue_depth`, the same gauge, read from Redis at each scrape):
- `audio_omni_api_requests_total{method, route, status}` and `audio_omni_api_request_seconds{route}`;
- `audio_omni_api_jobs_submitted_total{kind}`: jobs accepted over HTTP (job or batch);
- `audio_omni_api_admission_refused_total{reason}`: submissions refused by rate or in-flight limits.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

STAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def queue_depth_gauge(registry: CollectorRegistry) -> Gauge:
    """`audio_omni_queue_depth{priority}`: jobs waiting in Redis (queued + delayed retries)."""
    return Gauge("audio_omni_queue_depth", "Jobs waiting, by priority", ["priority"], registry=registry)


class EngineMetrics:
    """Queue depth per priority, jobs by status, stage durations, sampler batch sizes, redeliveries."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = queue_depth_gauge(r)
        self.jobs = Counter("audio_omni_jobs", "Finished job attempts by status", ["status"], registry=r)
        self.stage_s = Histogram(
            "audio_omni_stage_seconds", "Stage duration", ["stage"], buckets=STAGE_BUCKETS_S, registry=r
        )
        self.sampler_batch = Histogram(
            "audio_omni_sampler_batch_size", "Requests per sampling loop", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.redeliveries = Counter(
            "audio_omni_redeliveries", "Jobs claimed again after an earlier attempt", registry=r
        )
        self.in_flight = Gauge("audio_omni_jobs_in_flight", "Jobs running in this process", registry=r)
        self._lock = threading.Lock()
        # Last cumulative histogram seen per sampler replica, so repeated polls observe only the new loops.
        self._seen_batches: dict[Hashable, dict[int, int]] = {}

    def job_claimed(self, job: Any) -> None:
        """A job was claimed; an attempt after the first is a redelivery."""
        self.in_flight.inc()
        if getattr(job, "attempt", 1) > 1:
            self.redeliveries.inc()

    def job_finished(self, result: Any) -> None:
        """Count the attempt by its outcome and observe its stage durations (seconds)."""
        self.in_flight.dec()
        self.jobs.labels(status=result.outcome).inc()
        for stage, seconds in result.timings.items():
            self.stage_s.labels(stage=stage).observe(seconds)

    def set_queue_depths(self, depths: Mapping[str, int]) -> None:
        for priority, depth in depths.items():
            self.queue_depth.labels(priority=priority).set(depth)

    def observe_batch_sizes(self, histogram: Mapping[int, int], *, replica: Hashable = None) -> None:
        """Observe sampling loops from a replica's cumulative `{batch size: loops}` counters; only the
        loops added since this replica's previous report are observed."""
        with self._lock:
            seen = self._seen_batches.setdefault(replica, {})
            for size, count in histogram.items():
                size, count = int(size), int(count)
                for _ in range(max(0, count - seen.get(size, 0))):
                    self.sampler_batch.observe(size)
                seen[size] = max(count, seen.get(size, 0))

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose `/metrics` on `addr:port` (a daemon thread)."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        start_http_server(port, addr=addr, registry=self.registry)


class ApiMetrics:
    """Requests by route and status, their latency, admissions, and the queue depth, on their own
    registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self.queue_depth = queue_depth_gauge(r)

    def set_queue_depths(self, depths: Mapping[str, int]) -> None:
        for priority, depth in depths.items():
            self.queue_depth.labels(priority=priority).set(depth)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
