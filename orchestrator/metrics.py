"""Prometheus metrics of the engine, on their own registry, served by `start_http_server`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class EngineMetrics:
    """Queue depth per priority, jobs by outcome, stage durations, sampler batch sizes, redeliveries."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "audio_omni_queue_depth", "Jobs waiting, by priority", ["priority"], registry=r
        )
        self.jobs = Counter(
            "audio_omni_jobs_total", "Finished job attempts by outcome", ["outcome"], registry=r
        )
        self.stage_s = Histogram(
            "audio_omni_stage_seconds", "Stage duration", ["stage"], buckets=STAGE_BUCKETS_S, registry=r
        )
        self.sampler_batch = Histogram(
            "audio_omni_sampler_batch_size",
            "Requests per sampling loop",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.redeliveries = Counter(
            "audio_omni_redeliveries_total", "Jobs claimed again after an attempt", registry=r
        )
        self.in_flight = Gauge("audio_omni_jobs_in_flight", "Jobs running in this engine", registry=r)

    def job_finished(self, result) -> None:
        self.jobs.labels(outcome=result.outcome).inc()
        for stage, seconds in result.timings.items():
            self.stage_s.labels(stage=stage).observe(seconds)

    def observe_batch_sizes(self, histogram: dict[int, int]) -> None:
        for size, count in histogram.items():
            for _ in range(int(count)):
                self.sampler_batch.observe(int(size))

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose `/metrics` on `addr:port` (a daemon thread)."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        start_http_server(port, addr=addr, registry=self.registry)
