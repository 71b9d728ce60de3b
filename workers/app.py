"""Build and deploy the two pools from `WorkerSettings`, and call them.

`deploy(settings)` starts the encoder and sampler pools as two Serve applications (each scales on
its own) and returns `ServePools`, the blocking client the engine uses: one item per call, from many
engine threads at once, so Serve's batching gathers items across jobs. `InProcessPools` offers the
same four calls (`encode`, `understand`, `sync_features`, `generate`) over in-process model parts
(no Ray), for tests and the bare benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.batching import own_result
from workers.encoder import NO_SYNC_WEIGHTS, EncoderDeployment
from workers.sampler import SamplerDeployment
from workers.settings import MAX_JOB_S, PoolSettings, WorkerSettings

if TYPE_CHECKING:
    import torch
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

    from model.mllm import MLLMEncoder, MLLMPrompt, UnderstandRequest
    from model.parts import SamplerPart
    from model.requests import GenerationRequest
    from model.sync import SyncExtractor

ENCODER = "encoder"
SAMPLER = "sampler"
STATS_TIMEOUT_S = 10.0  # the longest wait for the replicas' stats() reports


def _autoscaling_config(pool: PoolSettings, settings: WorkerSettings, which: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "min_replicas": pool.min_replicas,
        "max_replicas": pool.max_replicas,
        "target_ongoing_requests": pool.target_ongoing_requests,
        "upscale_delay_s": pool.upscale_delay_s,
        "downscale_delay_s": pool.downscale_delay_s,
        "look_back_period_s": pool.look_back_period_s,
    }
    if pool.initial_replicas is not None:
        config["initial_replicas"] = pool.initial_replicas
    if settings.backlog_redis_url and pool.max_replicas > pool.min_replicas:
        config["policy"] = {
            "policy_function": "workers.autoscaling:BacklogPolicy",
            "policy_kwargs": {
                "redis_url": settings.backlog_redis_url,
                "backlog_key": settings.backlog_key,
                "pool": which,
                "jobs_per_replica": settings.backlog_jobs_per_replica,
                "target_ongoing_requests": pool.target_ongoing_requests,
            },
        }
    return config


def build_apps(settings: WorkerSettings) -> dict[str, Application]:
    """The bound Serve applications {name: app} of both pools, configured from `settings`."""
    from ray import serve

    apps: dict[str, Application] = {}
    for which, cls, pool in (
        (ENCODER, EncoderDeployment, settings.encoder),
        (SAMPLER, SamplerDeployment, settings.sampler),
    ):
        deployment = serve.deployment(
            name=cls.__name__,
            ray_actor_options={"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus, "resources": dict(pool.resources)},
            autoscaling_config=_autoscaling_config(pool, settings, which),
            max_ongoing_requests=pool.max_ongoing_requests,
            graceful_shutdown_timeout_s=pool.graceful_shutdown_timeout_s,
            graceful_shutdown_wait_loop_s=1.0,
            health_check_period_s=pool.health_check_period_s,
            logging_config={"encoding": "JSON"},  # one JSON object per log line, as the API and engines log
        )(cls)
        apps[f"{settings.app_name}-{which}"] = deployment.bind(settings)
    return apps


def app_builder(args: dict[str, Any]) -> Application:
    """Serve application builder for a cluster's Serve config (`import_path: workers.app:app_builder`).

    `args = {"pool": "encoder" | "sampler", "env": {"AUDIO_OMNI_...": ...}}`: the settings travel in
    the config itself, so changing one (e.g. the weights path) changes the config and Serve rolls the
    replicas.
    """
    pool = args.get("pool")
    if pool not in (ENCODER, SAMPLER):
        raise ValueError(f"app_builder: pool must be {ENCODER!r} or {SAMPLER!r}, got {pool!r}")
    env = args.get("env") or {}
    if not isinstance(env, dict):
        raise ValueError(f"app_builder: env must be a mapping of AUDIO_OMNI_* variables, got {type(env).__name__}")
    settings = WorkerSettings.from_env(env)
    return build_apps(settings)[f"{settings.app_name}-{pool}"]


def deploy(settings: WorkerSettings) -> ServePools:
    """Start (or update) both pools on the connected Ray cluster and return a client for them."""
    from ray import serve

    for name, app in build_apps(settings).items():
        serve.run(app, name=name, route_prefix=None, blocking=False)
    return ServePools.connect(settings.app_name, timeout_s=settings.max_job_s)


def shutdown(settings: WorkerSettings) -> None:
    """Delete both pools' applications (replicas drain within their graceful shutdown timeout)."""
    from ray import serve

    for which in (ENCODER, SAMPLER):
        serve.delete(f"{settings.app_name}-{which}")


class ServePools:
    """Blocking calls into the deployed pools; safe to use from many threads.

    One call waits at most `timeout_s` (default: a job's whole budget, `WorkerSettings.max_job_s`,
    which replicas outlast when they drain); a call past it raises, and the engine retries the job.
    """

    def __init__(self, encoder: DeploymentHandle, sampler: DeploymentHandle, *, timeout_s: float = MAX_JOB_S) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._encoder = encoder
        self._sampler = sampler
        self.timeout_s = timeout_s

    @classmethod
    def connect(cls, app_name: str, *, timeout_s: float = MAX_JOB_S) -> ServePools:
        from ray import serve

        encoder = serve.get_deployment_handle(EncoderDeployment.__name__, app_name=f"{app_name}-{ENCODER}")
        sampler = serve.get_deployment_handle(SamplerDeployment.__name__, app_name=f"{app_name}-{SAMPLER}")
        return cls(encoder, sampler, timeout_s=timeout_s)

    def encode(self, prompt: MLLMPrompt) -> torch.Tensor:
        """Hidden states (L, D) of one prompt, batched with other callers' prompts by the pool."""
        hidden: torch.Tensor = self._encoder.encode.remote(prompt).result(timeout_s=self.timeout_s)
        return hidden

    def understand(self, request: UnderstandRequest) -> str:
        answer: str = self._encoder.understand.remote(request).result(timeout_s=self.timeout_s)
        return answer

    def sync_features(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """(tokens, D) float32 sync features of ONE job's frames (T, 3, 224, 224) uint8, batched with
        other callers' clips by the encoder pool. A clip the extractor refuses raises `ValueError`."""
        result: torch.Tensor | ValueError = self._encoder.sync_features.remote(frames_u8).result(
            timeout_s=self.timeout_s
        )
        if isinstance(result, ValueError):
            raise result
        return result

    def generate(self, request: GenerationRequest, keep_samples: int | None = None) -> torch.Tensor:
        """(C, N) float32 audio of one segment; with `keep_samples`, only its first N = keep_samples
        samples come back (the replica cuts them, so the rest never crosses to this process)."""
        audio: torch.Tensor = self._sampler.generate.remote(request, keep_samples).result(timeout_s=self.timeout_s)
        return audio

    def sampler_stats(self) -> dict[int, int]:
        """Sampling-loop batch sizes summed over the sampler replicas ({size: loops})."""
        return _summed(self.sampler_reports(), "batch_sizes")

    def sampler_reports(self, timeout_s: float = STATS_TIMEOUT_S) -> list[dict[str, Any]]:
        """Every sampler replica's `stats()` report (see `replica_reports`)."""
        return replica_reports(self._sampler, timeout_s)

    def sync_stats(self) -> dict[int, int]:
        """Sync-feature batch sizes summed over the encoder replicas ({size: batches})."""
        return _summed(replica_reports(self._encoder), "sync_batch_sizes")


def replica_reports(handle: DeploymentHandle, timeout_s: float = STATS_TIMEOUT_S) -> list[dict[str, Any]]:
    """`stats()` of every running replica of a deployment, one report each (Serve's broadcast).

    Waits at most `timeout_s` in all, so a caller that must end before Ray is shut down is never held
    by a replica that does not answer. A replica that fails (its node was lost, it is being replaced)
    or does not answer in time is left out of the list.
    """
    results = handle.broadcast("stats").results(timeout_s=timeout_s, return_exceptions=True)
    return [r for r in results if isinstance(r, dict)]


def _summed(reports: list[dict[str, Any]], key: str) -> dict[int, int]:
    """The `key` histograms ({size: count}) of the replicas' reports, summed."""
    total: dict[int, int] = {}
    for report in reports:
        for size, count in report[key].items():
            total[int(size)] = total.get(int(size), 0) + int(count)
    return total


class InProcessPools:
    """The pools' four calls over model parts in this process: no Ray, no batching across calls.

    Built from the same `WorkerSettings` as the deployments, and used the same way: weights and
    precision as the sampler replica applies them, the same understanding token budget, and the
    same batch-invariant padding (`pad_to` the sampler's batch size), so a sampling request gives
    the same audio here as in a replica's batch. One model call at a
    time: torch already uses every core. `calls` counts the calls per method.
    """

    def __init__(
        self,
        encoder: MLLMEncoder,
        sampler: SamplerPart,
        *,
        understand_max_new_tokens: int = 512,
        pad_to: int | None = None,
        sync_extractor: SyncExtractor | None = None,
    ) -> None:
        import threading

        if not 1 <= understand_max_new_tokens <= 8192:
            raise ValueError(
                f"understand_max_new_tokens {understand_max_new_tokens} is invalid: expected an integer in [1, 8192]"
            )
        if pad_to is not None and not 1 <= pad_to <= 1024:
            raise ValueError(f"pad_to {pad_to} is invalid: expected an integer in [1, 1024] or None")
        self.encoder = encoder
        self.sampler = sampler
        self.understand_max_new_tokens = understand_max_new_tokens
        self.pad_to = pad_to
        self.sync_extractor = sync_extractor
        self.calls: dict[str, int] = {"encode": 0, "understand": 0, "sync_features": 0, "generate": 0}
        self._lock = threading.Lock()

    @classmethod
    def build(cls, settings: WorkerSettings) -> InProcessPools:
        from model.build import build_encoder, build_sampler, build_sync_extractor
        from model.precision import apply_precision

        config = settings.load_config()
        sampler = build_sampler(config, weights=settings.resolved_weights, device=settings.device)
        apply_precision(sampler, settings.resolved_precision)
        return cls(
            build_encoder(config, weights=settings.resolved_weights, device=settings.device),
            sampler,
            understand_max_new_tokens=settings.understand_max_new_tokens,
            pad_to=settings.sampler.max_batch_size if settings.batch_invariant else None,
            sync_extractor=build_sync_extractor(config, weights=settings.resolved_sync_weights, device=settings.device),
        )

    def encode(self, prompt: MLLMPrompt) -> torch.Tensor:
        """Hidden states (L, D) of one prompt."""
        with self._lock:
            self.calls["encode"] += 1
            return self.encoder.encode([prompt])[0].cpu()

    def understand(self, request: UnderstandRequest) -> str:
        with self._lock:
            self.calls["understand"] += 1
            return self.encoder.understand([request], max_new_tokens=self.understand_max_new_tokens)[0]

    def sync_features(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """(tokens, D) float32 sync features of one job's frames (T, 3, 224, 224) uint8."""
        with self._lock:
            self.calls["sync_features"] += 1
            if self.sync_extractor is None:
                raise ValueError(NO_SYNC_WEIGHTS)
            from model.sync import SEGMENTS_PER_PASS

            features = self.sync_extractor.clip_features([frames_u8], max_segments_per_pass=SEGMENTS_PER_PASS)
            return features[0].cpu()

    def generate(self, request: GenerationRequest, keep_samples: int | None = None) -> torch.Tensor:
        """(C, N) float32 audio of one segment, cut to its first `keep_samples` when given."""
        with self._lock:
            self.calls["generate"] += 1
            return own_result(self.sampler.generate([request], pad_to=self.pad_to)[0], keep_samples)
