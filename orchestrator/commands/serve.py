"""`audio-omni serve`: service mode.

Connects to (or starts) Ray, deploys the encoder and sampler pools (unless told to use the ones
another process deployed: `--no-deploy` / `AUDIO_OMNI_DEPLOY_POOLS=false`, as on Kubernetes where
the RayService runs them), then runs N engine loops in this process, each a Redis consumer of the
shared queue writing results to S3, and the webhook dispatcher (`AUDIO_OMNI_WEBHOOKS=false` turns it
off). Beside them, one housekeeping thread publishes the backlog for the autoscaling policy
(`workers.autoscaling`), contends for exporting the shared-state gauges and the pool replicas'
figures (`orchestrator.metrics`), and refreshes them. `/metrics` is served on `--metrics-addr`:
`--metrics-port` (`AUDIO_OMNI_METRICS_ADDR` / `AUDIO_OMNI_METRICS_PORT`) from the start, before Ray
is reached. SIGTERM / SIGINT stop claiming, let the jobs in flight finish, and (if this process
deployed them) delete the pools. `--drain` exits once the queue is empty and nothing runs.

Settings come from the environment (`orchestrator.settings.Settings`, `ServeSettings`,
`ObservabilitySettings`, `workers.settings.WorkerSettings`); flags win.
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
from orchestrator.logging import get_logger
from orchestrator.metrics import LeaderLock, leader_key
from workers.settings import DEFAULT_PRESET, WorkerSettings

if TYPE_CHECKING:
    from orchestrator.engine import Engine
    from orchestrator.settings import ObservabilitySettings, Settings
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
    webhooks: bool = False  # run the webhook dispatcher in this process
    metrics_leader_ttl_s: float = 30.0  # TTL of the metrics exporter locks (orchestrator.metrics)

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
        self.redis = settings.redis_client()
        self.storage = storage or storage_from_settings(**settings.storage_kwargs(embedded=False))
        self.metrics = EngineMetrics(holder=options.consumer)
        self.engines: list[Engine] = []
        self.pools: ServePools | None = None  # set by start()
        self.log = get_logger("serve", consumer=options.consumer)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metrics_server: Any = None
        self._pools_lock: LeaderLock | None = None

    def serve_metrics(self) -> None:
        """Start `/metrics` on the configured address and port (if any); done before Ray is reached,
        so the process can be scraped (build info, its liveness) while it waits for the cluster."""
        if self.options.metrics_port is not None and self._metrics_server is None:
            self._metrics_server, _ = self.metrics.serve(self.options.metrics_port, addr=self.options.metrics_addr)
            self.log.info(
                "metrics listening", addr=self.options.metrics_addr, port=self._metrics_server.server_address[1]
            )

    @property
    def metrics_port(self) -> int | None:
        """The port `/metrics` listens on (the real one when 0 was asked for), else None."""
        return None if self._metrics_server is None else int(self._metrics_server.server_address[1])

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
        ttl_s = self.options.metrics_leader_ttl_s
        self.metrics.attach(self._queue, self.redis, backlog_key=ws.backlog_key, ttl_s=ttl_s)
        pools_key = leader_key(self.settings.redis_prefix, "pools")
        self._pools_lock = LeaderLock(self.redis, pools_key, self.options.consumer, max(ttl_s, 3 * BATCH_STATS_EVERY_S))
        self.serve_metrics()
        if self.options.webhooks:
            self._start_webhooks()
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
        from workers.app import STATS_TIMEOUT_S, shutdown
        from workers.autoscaling import withdraw_backlog

        self._stop.set()
        if getattr(self, "_housekeeper", None) is not None:
            # Its Ray calls are bounded; it must end before the caller shuts Ray down (a Ray call from
            # a thread after ray.shutdown() starts a new Ray and then exits the whole process).
            self._housekeeper.join(timeout=STATS_TIMEOUT_S + 2 * HOUSEKEEPING_EVERY_S + 5)
            if self._housekeeper.is_alive():
                self.log.warning("housekeeping did not end in time")
        if getattr(self, "_webhooks", None) is not None:
            self._webhooks.join(timeout=self._webhooks_drain_s)  # it finishes the attempts in flight
        try:
            withdraw_backlog(self.redis, self.worker_settings.backlog_key, self.options.consumer)
        except Exception as exc:  # Redis gone at exit: the report ages out by itself
            self.log.warning("could not withdraw the backlog report", error=str(exc))
        for lock in (self.metrics.exporter.lock if self.metrics.exporter else None, self._pools_lock):
            if lock is not None:
                lock.release()  # another process takes over the metrics at once
        if self.options.deploy and not self.options.keep_pools:
            shutdown(self.worker_settings)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.redis.close()

    def _start_webhooks(self) -> None:
        """The webhook dispatcher on this process's Redis client, stopped with the housekeeping."""
        from orchestrator.webhooks.dispatcher import start_dispatcher
        from orchestrator.webhooks.settings import WebhookSettings

        settings = WebhookSettings.from_env()
        self._webhooks_drain_s = settings.connect_timeout_s + 2 * settings.timeout_s + 1
        self._webhooks = start_dispatcher(self.redis, self.settings.keys, stop=self._stop, settings=settings)
        self.log.info("webhook dispatcher started")

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        """Publish the backlog (autoscaling); export the shared state and the pool replicas' figures
        when this process holds their locks."""
        from workers.autoscaling import backlog_report, publish_backlog

        key = self.worker_settings.backlog_key
        next_replica_poll = 0.0
        exporter = self.metrics.exporter
        was_pools_leader = baseline = False
        while not self._stop.is_set():
            try:
                upstream = {"encoder": 0, "sampler": 0}
                for engine in self.engines:
                    b = engine.backlog()
                    upstream["encoder"] += b["encoder"]
                    upstream["sampler"] += b["sampler"]
                queued = sum(self._queue.queue_depths().values())
                report = backlog_report(queued, upstream["encoder"], upstream["sampler"])
                publish_backlog(self.redis, key, self.options.consumer, report)
                if exporter is not None:
                    exporter.refresh()
                pools_leader = self._pools_lock is not None and self._pools_lock.acquire()
                if pools_leader and not was_pools_leader:
                    baseline, next_replica_poll = True, 0.0  # a new exporter: what was counted is its baseline
                elif not pools_leader and was_pools_leader:
                    self.metrics.forget_replicas()
                was_pools_leader = pools_leader
                if pools_leader and time.monotonic() >= next_replica_poll and not self._stop.is_set():
                    next_replica_poll = time.monotonic() + BATCH_STATS_EVERY_S
                    self.metrics.observe_replica_reports(self._replica_reports(), baseline=baseline)
                    baseline = False
            except Exception as exc:  # Redis or a replica blip: next tick tries again
                self.log.warning("housekeeping failed", error=str(exc), error_type=type(exc).__name__)
            self._stop.wait(HOUSEKEEPING_EVERY_S)

    def _replica_reports(self) -> dict[str, dict[str, Any]]:
        """Every sampler replica's `stats()` report, by replica (bounded: `STATS_TIMEOUT_S`)."""
        if self.pools is None:
            return {}
        reports = self.pools.sampler_reports()
        return {str(r.get("replica_id") or r.get("load_s")): r for r in reports}


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    conn = parser.add_argument_group("connections (default: environment)")
    conn.add_argument("--redis-url", default=None, help="Redis URL (REDIS_URL / AUDIO_OMNI_REDIS_URL)")
    conn.add_argument("--redis-prefix", default=None, help="key prefix of this deployment")
    conn.add_argument("--s3-bucket", default=None, help="result bucket (S3_BUCKET)")
    conn.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (S3_ENDPOINT_URL)")
    conn.add_argument("--lease-s", type=float, default=None, help="job lease in seconds")
    conn.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (RAY_ADDRESS; default: start a local one)"
    )
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
    pools.add_argument(
        "--deploy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deploy the pools, or (--no-deploy) use the ones another process deployed under --app-name "
        "(AUDIO_OMNI_DEPLOY_POOLS; default: deploy)",
    )
    pools.add_argument("--keep-pools", action="store_true", help="leave the pools running on exit")
    run = parser.add_argument_group("engine")
    run.add_argument("--engines", type=int, default=None, help="engine loops in this process (AUDIO_OMNI_ENGINES; 1)")
    run.add_argument(
        "--max-in-flight", type=int, default=None, help="jobs in flight per engine (AUDIO_OMNI_MAX_IN_FLIGHT; 8)"
    )
    run.add_argument("--consumer", default=None, help="consumer name (default: host-pid-random)")
    run.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics on this port (AUDIO_OMNI_METRICS_PORT)"
    )
    run.add_argument(
        "--metrics-addr", default=None, help="address of /metrics (AUDIO_OMNI_METRICS_ADDR; default 127.0.0.1)"
    )
    run.add_argument(
        "--webhooks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the webhook dispatcher (AUDIO_OMNI_WEBHOOKS; default on)",
    )
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


@dataclass(frozen=True)
class Resolved:
    """Everything `audio-omni serve` runs with, from the environment and the flags."""

    settings: Settings
    worker_settings: WorkerSettings
    options: ServiceOptions
    ray_address: str | None
    observability: ObservabilitySettings


def resolve(args: argparse.Namespace) -> Resolved:
    """The settings of a `serve` run: environment first, flags win. Raises ValueError naming the
    setting at fault."""
    from orchestrator.settings import ObservabilitySettings, ServeSettings, Settings

    settings = Settings.from_env(
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        s3_bucket=args.s3_bucket,
        s3_endpoint_url=args.s3_endpoint_url,
        lease_s=args.lease_s,
    )
    serve = ServeSettings.from_env(
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        deploy_pools=args.deploy,
        ray_address=args.ray_address,
        engines=args.engines,
        max_in_flight=args.max_in_flight,
        webhooks=args.webhooks,
    )
    observability = ObservabilitySettings.from_env()
    options = ServiceOptions(
        engines=serve.engines,
        max_in_flight=serve.max_in_flight,
        metrics_port=serve.metrics_port,
        metrics_addr=serve.metrics_addr,
        deploy=serve.deploy_pools,
        keep_pools=args.keep_pools,
        drain=args.drain,
        max_input_audio_s=args.max_input_audio_s,
        webhooks=serve.webhooks,
        metrics_leader_ttl_s=observability.metrics_leader_ttl_s,
        **({"consumer": args.consumer} if args.consumer else {}),
    )
    settings.storage_kwargs(embedded=False)  # fail now, not at the first result, without a bucket
    if serve.webhooks:
        from orchestrator.webhooks.settings import WebhookSettings

        WebhookSettings.from_env()  # a bad AUDIO_OMNI_WEBHOOK_* fails now, by name
    return Resolved(settings, _worker_settings(args), options, serve.ray_address, observability)


def _errors_of(exc: ValueError) -> str:
    """A settings error in one line per problem, naming the setting (pydantic's, shortened)."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors(include_url=False)
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from orchestrator.logging import configure

    try:
        resolved = resolve(args)
    except ValueError as exc:
        print(f"audio-omni serve: {_errors_of(exc)}", file=sys.stderr)
        return 2
    obs = resolved.observability
    configure(json=obs.log_format == "json", level=obs.log_level)
    settings, options = resolved.settings, resolved.options
    import ray

    from workers.local_ray import init_ray

    service = Service(settings, resolved.worker_settings, options)
    try:
        service.serve_metrics()
    except OSError as exc:
        print(
            f"audio-omni serve: cannot serve /metrics on {options.metrics_addr}:{options.metrics_port}: {exc}",
            file=sys.stderr,
        )
        return 2
    started_ray = init_ray(address=resolved.ray_address, num_cpus=args.num_cpus)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        if stopping.is_set():  # a second signal: leave now
            raise KeyboardInterrupt
        stopping.set()
        service.log.info("stopping; letting the jobs in flight finish", signal=signum)
        service.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        service.start()
        service.log.info(
            "serving",
            engines=options.engines,
            redis=settings.redis_url.split("@")[-1],
            prefix=settings.redis_prefix,
            bucket=settings.s3_bucket,
            deployed_pools=options.deploy,
            app_name=resolved.worker_settings.app_name,
            metrics=f"{options.metrics_addr}:{service.metrics_port}" if service.metrics_port is not None else None,
            webhooks=options.webhooks,
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
