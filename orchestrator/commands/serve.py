"""`audio-omni serve`: service mode.

Connects to (or starts) Ray, deploys the encoder and sampler pools (unless `--no-deploy`), then runs
N engine loops in this process, each a Redis consumer of the shared queue writing results to S3.
Beside them, one housekeeping thread publishes the backlog for the autoscaling policy
(`workers.autoscaling`) and refreshes the Prometheus gauges; `/metrics` is served on
`--metrics-port`. SIGTERM / SIGINT stop claiming, let the jobs in flight finish, and (if this process
deployed them) delete the pools. `--drain` exits once the queue is empty and nothing runs.

Settings come from the environment (`AUDIO_OMNI_*`, `REDIS_URL`, `S3_BUCKET`, ...); flags win.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model.limits import MAX_INPUT_AUDIO_S
from workers.settings import DEFAULT_PRESET, WorkerSettings

if TYPE_CHECKING:
    from orchestrator.engine import Engine
    from orchestrator.settings import Settings
    from orchestrator.storage import Storage
    from workers.app import ServePools

HOUSEKEEPING_EVERY_S = 1.0
BATCH_STATS_EVERY_S = 10.0


@dataclass(frozen=True)
class ServiceOptions:
    """How this process runs: engine loops, backpressure, metrics, lifetime."""

    engines: int = 1
    max_in_flight: int = 8
    metrics_port: int | None = None  # None: no /metrics endpoint
    metrics_addr: str = "127.0.0.1"
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    deploy: bool = True  # deploy the pools (False: use pools some other process deployed)
    keep_pools: bool = False  # leave the pools running on exit
    drain: bool = False  # exit once the queue is empty and no job runs
    model_version: str | None = None
    max_input_audio_s: float = MAX_INPUT_AUDIO_S  # longer input audio fails its job

    def __post_init__(self) -> None:
        if not 1 <= self.engines <= 64:
            raise ValueError(f"engines must be in [1, 64], got {self.engines}")
        if not 1 <= self.max_in_flight <= 1024:
            raise ValueError(f"max_in_flight must be in [1, 1024], got {self.max_in_flight}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if not 0 < self.max_input_audio_s <= MAX_INPUT_AUDIO_S:
            raise ValueError(
                f"max_input_audio_s {self.max_input_audio_s:g} is invalid: "
                f"expected seconds in (0, {MAX_INPUT_AUDIO_S:g}]"
            )


class Service:
    """The pools plus N engine loops on one Redis queue and one S3 bucket (Ray already connected)."""

    def __init__(
        self,
        settings: Settings,
        worker_settings: WorkerSettings,
        options: ServiceOptions,
        *,
        storage: Storage | None = None,
    ) -> None:
        import redis

        from orchestrator.metrics import EngineMetrics
        from orchestrator.storage import storage_from_settings

        self.settings = settings
        self.options = options
        if worker_settings.backlog_redis_url is None:
            # Backlog-driven autoscaling reads the same Redis this service reports into.
            worker_settings = worker_settings.replace(
                backlog_redis_url=settings.redis_url, backlog_prefix=settings.redis_prefix
            )
        self.worker_settings = worker_settings
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.storage = storage or storage_from_settings(**settings.storage_kwargs(embedded=False))
        self.metrics = EngineMetrics()
        self.engines: list[Engine] = []
        self.pools: ServePools | None = None  # set by start()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Deploy (or connect to) the pools, start the engine loops, housekeeping and /metrics."""
        from orchestrator.engine import Engine, EngineSettings
        from orchestrator.queue import JobQueue
        from orchestrator.sources import RedisSource
        from orchestrator.storage import input_resolver_from_settings
        from orchestrator.tenants import TenantStore
        from workers.app import ServePools, deploy

        ws = self.worker_settings
        pools = deploy(ws) if self.options.deploy else ServePools.connect(ws.app_name, timeout_s=ws.max_job_s)
        self.pools = pools
        config = ws.load_config()
        version = self.options.model_version or ws.model_version
        engine_settings = EngineSettings(
            max_in_flight=self.options.max_in_flight,
            renew_every_s=self.settings.effective_renew_interval_s,
            model_version=version,
            max_input_audio_s=self.options.max_input_audio_s,
        )
        # The same input rules as the API's: the deployment's, each tenant's own prefix in the
        # result bucket, and each tenant's own allowed buckets (from the tenant store).
        tenants = TenantStore.from_settings(self.settings, client=self.redis)
        inputs = input_resolver_from_settings(
            self.storage, tenant_rules=tenants.input_policy, **self.settings.storage_kwargs(embedded=False)
        )
        for i in range(self.options.engines):
            # One queue object per loop (its reclaim timer is per consumer); the connection pool is shared.
            queue = JobQueue.from_settings(self.settings, client=self.redis)
            source = RedisSource(queue, consumer=f"{self.options.consumer}-{i}")
            self.engines.append(
                Engine(source, self.storage, inputs, pools, config, engine_settings, metrics=self.metrics)
            )
        self._queue = JobQueue.from_settings(self.settings, client=self.redis)
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port, addr=self.options.metrics_addr)
        for i, engine in enumerate(self.engines):
            t = threading.Thread(
                target=engine.run, kwargs={"until_exhausted": self.options.drain}, name=f"engine-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        hk = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        hk.start()
        self._housekeeper = hk

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every engine loop ended (drained or stopped); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                return False
        return True

    def stop(self) -> None:
        """Stop claiming; jobs in flight finish (`wait()` to block on them)."""
        for engine in self.engines:
            engine.stop()

    def close(self) -> None:
        """After the engines ended: stop housekeeping, withdraw the backlog report, delete the pools."""
        from workers.app import shutdown
        from workers.autoscaling import withdraw_backlog

        self._stop.set()
        if getattr(self, "_housekeeper", None) is not None:
            self._housekeeper.join(timeout=5)
        try:
            withdraw_backlog(self.redis, self.worker_settings.backlog_key, self.options.consumer)
        except Exception as exc:  # Redis gone at exit: the report ages out by itself
            print(f"audio-omni serve: could not withdraw the backlog report: {exc}", file=sys.stderr)
        if self.options.deploy and not self.options.keep_pools:
            shutdown(self.worker_settings)
        self.redis.close()

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        """Publish the backlog (autoscaling) and refresh the queue-depth and batch-size metrics."""
        from workers.autoscaling import backlog_report, publish_backlog

        key = self.worker_settings.backlog_key
        next_batch_stats = 0.0
        while not self._stop.is_set():
            try:
                depths = self._queue.queue_depths()
                self.metrics.set_queue_depths(depths)
                upstream = {"encoder": 0, "sampler": 0}
                for engine in self.engines:
                    b = engine.backlog()
                    upstream["encoder"] += b["encoder"]
                    upstream["sampler"] += b["sampler"]
                report = backlog_report(sum(depths.values()), upstream["encoder"], upstream["sampler"])
                publish_backlog(self.redis, key, self.options.consumer, report)
                if time.monotonic() >= next_batch_stats:
                    next_batch_stats = time.monotonic() + BATCH_STATS_EVERY_S
                    for replica, hist in (self.pools.sampler_replica_stats() if self.pools else {}).items():
                        self.metrics.observe_batch_sizes(hist, replica=replica)
            except Exception as exc:  # Redis or a replica blip: next tick tries again
                print(f"audio-omni serve: housekeeping failed: {exc}", file=sys.stderr)
            self._stop.wait(HOUSEKEEPING_EVERY_S)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    conn = parser.add_argument_group("connections (default: environment)")
    conn.add_argument("--redis-url", default=None, help="Redis URL (REDIS_URL / AUDIO_OMNI_REDIS_URL)")
    conn.add_argument("--redis-prefix", default=None, help="key prefix of this deployment")
    conn.add_argument("--s3-bucket", default=None, help="result bucket (S3_BUCKET)")
    conn.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (S3_ENDPOINT_URL)")
    conn.add_argument("--lease-s", type=float, default=None, help="job lease in seconds")
    conn.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    conn.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray (default: all)")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        default=None,
        help=f"model preset (small, tiny, full); default AUDIO_OMNI_PRESET, else {DEFAULT_PRESET}",
    )
    model.add_argument("--config", default=None, help="a model_config.json (overrides --preset)")
    model.add_argument("--weights", default=None, help="checkpoint (model.ckpt, safetensors or converted folder)")
    model.add_argument("--device", default=None, help="cpu or cuda")
    model.add_argument("--app-name", default=None, help="Serve application name prefix")
    pools = parser.add_argument_group("pools (default: AUDIO_OMNI_{ENCODER,SAMPLER}_* variables)")
    pools.add_argument("--max-batch-size", type=int, default=None, help="sampler batch size")
    pools.add_argument("--sampler-min-replicas", type=int, default=None)
    pools.add_argument("--sampler-max-replicas", type=int, default=None)
    pools.add_argument("--encoder-min-replicas", type=int, default=None)
    pools.add_argument("--encoder-max-replicas", type=int, default=None)
    pools.add_argument("--no-deploy", action="store_true", help="use pools another process deployed")
    pools.add_argument("--keep-pools", action="store_true", help="leave the pools running on exit")
    run = parser.add_argument_group("engine")
    run.add_argument("--engines", type=int, default=1, help="engine loops in this process (default 1)")
    run.add_argument("--max-in-flight", type=int, default=8, help="jobs in flight per engine (default 8)")
    run.add_argument("--consumer", default=None, help="consumer name (default: host-pid-random)")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    run.add_argument("--metrics-addr", default="127.0.0.1", help="address of /metrics (default loopback)")
    run.add_argument("--drain", action="store_true", help="exit once the queue is empty and nothing runs")
    run.add_argument(
        "--max-input-audio-s",
        type=float,
        default=MAX_INPUT_AUDIO_S,
        help=f"input audio length limit in seconds (default and most {MAX_INPUT_AUDIO_S:g})",
    )


def _worker_settings(args: argparse.Namespace) -> WorkerSettings:
    ws = WorkerSettings.from_env(
        preset=args.preset, config_path=args.config, weights=args.weights, device=args.device, app_name=args.app_name
    )
    sampler, encoder = ws.sampler, ws.encoder
    if args.max_batch_size is not None:
        sampler = sampler.replace(
            max_batch_size=args.max_batch_size,
            max_ongoing_requests=max(sampler.max_ongoing_requests, args.max_batch_size),
        )
    for pool_name, lo, hi in (
        ("sampler", args.sampler_min_replicas, args.sampler_max_replicas),
        ("encoder", args.encoder_min_replicas, args.encoder_max_replicas),
    ):
        pool = sampler if pool_name == "sampler" else encoder
        pool = pool.replace(
            min_replicas=pool.min_replicas if lo is None else lo,
            max_replicas=pool.max_replicas if hi is None else hi,
        )
        if pool_name == "sampler":
            sampler = pool
        else:
            encoder = pool
    return ws.replace(sampler=sampler, encoder=encoder)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from orchestrator.logging import configure

    configure(level=os.environ.get("AUDIO_OMNI_LOG_LEVEL", "INFO"))
    from orchestrator.settings import Settings

    try:
        settings = Settings.from_env(
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            s3_bucket=args.s3_bucket,
            s3_endpoint_url=args.s3_endpoint_url,
            lease_s=args.lease_s,
        )
        worker_settings = _worker_settings(args)
        options = ServiceOptions(
            engines=args.engines,
            max_in_flight=args.max_in_flight,
            metrics_port=args.metrics_port,
            metrics_addr=args.metrics_addr,
            deploy=not args.no_deploy,
            keep_pools=args.keep_pools,
            drain=args.drain,
            max_input_audio_s=args.max_input_audio_s,
            **({"consumer": args.consumer} if args.consumer else {}),
        )
        settings.storage_kwargs(embedded=False)  # fail now, not at the first result, without a bucket
    except ValueError as exc:
        print(f"audio-omni serve: {exc}", file=sys.stderr)
        return 2
    import ray

    from workers.local_ray import init_ray

    started_ray = init_ray(address=args.ray_address, num_cpus=args.num_cpus)
    service = Service(settings, worker_settings, options)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        if stopping.is_set():  # a second signal: leave now
            raise KeyboardInterrupt
        stopping.set()
        print("audio-omni serve: stopping; letting the jobs in flight finish", file=sys.stderr)
        service.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        service.start()
        print(
            f"audio-omni serve: {options.engines} engine loop(s) as {options.consumer} on "
            f"{settings.redis_url} (prefix {settings.redis_prefix}) -> s3://{settings.s3_bucket}"
            + (f"; metrics on :{options.metrics_port}/metrics" if options.metrics_port is not None else ""),
            file=sys.stderr,
        )
        while not service.wait(timeout_s=1.0):
            pass
    finally:
        service.stop()
        service.wait(timeout_s=600)
        service.close()
        if started_ray:
            ray.shutdown()
    return 0
