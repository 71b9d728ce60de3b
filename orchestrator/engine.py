"""The engine loop: claim, load inputs, understand, encode, generate, write, ack.

A short loop over narrow seams (`JobSource`, `ResultSink`, and pools offering `encode`,
`understand` and `generate`, one item per call). Each job runs in a worker thread; at most
`max_in_flight` run at once (backpressure: nothing more is claimed until one finishes). Many jobs
calling the pools concurrently is what lets Serve batch across jobs. A renewer thread keeps every
running job's lease alive; cancellation is checked between stages; stage timings are recorded.

Outcomes are exceptions (orchestrator.errors): a bad input fails the job alone with its reason, a
transient fault retries it, a cancellation ends it `cancelled`, a lost lease drops it silently.
torch is imported lazily (inside functions) so importing the orchestrator stays light.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from orchestrator.audio_io import decode_audio, encode_audio
from orchestrator.errors import JobCancelled, LeaseLost, Outcome, PermanentError, RetryableError, outcome_of
from orchestrator.jobs import EditOp, JobSpec, TaskName
from orchestrator.logging import get_logger
from orchestrator.sinks import ResultSink
from orchestrator.sources import ClaimedJob, JobSource
from orchestrator.storage import InputPolicy, Storage

MODEL_RATE_HZ = 44_100
THINKER_RATE_HZ = 16_000
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_INPUT_AUDIO_S = 300.0

# Stages after which a generating job still has to reach the sampler pool.
_BEFORE_SAMPLER = frozenset({"load", "understand", "encode"})

_EDIT_TASKS = {
    EditOp.ADD: "edit_add",
    EditOp.REMOVE: "edit_remove",
    EditOp.EXTRACT: "edit_extract",
    EditOp.STYLE_TRANSFER: "edit_style_transfer",
}


@dataclass(frozen=True)
class EngineSettings:
    max_in_flight: int = 8
    renew_every_s: float = 10.0
    claim_block_s: float = 1.0
    max_input_bytes: int = MAX_INPUT_BYTES
    max_input_audio_s: float = MAX_INPUT_AUDIO_S
    model_version: str = "tiny-random"

    def __post_init__(self) -> None:
        if not 1 <= self.max_in_flight <= 1024:
            raise ValueError(f"max_in_flight must be in [1, 1024], got {self.max_in_flight}")
        if self.renew_every_s <= 0:
            raise ValueError(f"renew_every_s must be > 0, got {self.renew_every_s}")


@dataclass
class JobResult:
    job_id: str
    outcome: str  # succeeded / failed / retry / cancelled / abandoned
    error: str | None = None
    result_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _short_error(exc: BaseException, limit: int = 500) -> str:
    """The last line of an error (a Ray task error carries the remote traceback before it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _PoolError(RetryableError):
    """A pool call failed (replica died, model raised): transient from the job's point of view."""


def _call(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise _PoolError(f"{stage} failed: {_short_error(exc)}") from exc


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.timings[name] = round(timer.timings.get(name, 0.0) + time.perf_counter() - self.t0, 4)

        return _Ctx()


# --------------------------------------------------------------------------- inputs


TenantPolicy = Callable[[str], InputPolicy | None]  # tenant id -> its own extra S3 input rules


def _read(
    storage: Storage, uri: str, job: ClaimedJob, settings: EngineSettings, tenant_policy: TenantPolicy | None
) -> bytes:
    # Storage raises the shared outcome classes (PermanentError / RetryableError) itself; it looks
    # the tenant's own rules up only if the deployment's policy refuses the URI.
    own_rules = None if tenant_policy is None else (lambda: tenant_policy(job.tenant))
    return storage.read_input(uri, tenant=job.tenant, max_bytes=settings.max_input_bytes, tenant_policy=own_rules)


def _load_array(data: bytes, uri: str, what: str):
    """A tensor from `.npy` or `.safetensors` bytes (the first tensor in the file)."""
    import numpy as np
    import torch

    try:
        if uri.endswith(".safetensors"):
            from safetensors.torch import load as load_st

            tensors = load_st(data)
            if not tensors:
                raise PermanentError(f"{what} {uri} holds no tensors")
            return next(iter(tensors.values()))
        if uri.endswith(".npy"):
            return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
    except PermanentError:
        raise
    except Exception as exc:
        raise PermanentError(f"{what} {uri} is not a readable tensor file: {exc}") from None
    raise PermanentError(f"{what} {uri}: expected a .npy or .safetensors file")


def spec_to_inputs(
    spec: JobSpec,
    job: ClaimedJob,
    storage: Storage,
    settings: EngineSettings,
    tenant_policy: TenantPolicy | None = None,
):
    """Read and decode a job's inputs into `model.pipeline.TaskInputs` (bad input: PermanentError).

    `tenant_policy`: tenant id -> that tenant's own extra S3 input rules (see `Storage.read_input`).
    """
    import torch

    from model.pipeline import TaskInputs
    from model.tasks import Task

    def audio(uri: str, rate: int, what: str):
        data = _read(storage, uri, job, settings, tenant_policy)
        return torch.from_numpy(
            decode_audio(data, sample_rate=rate, max_duration_s=settings.max_input_audio_s, what=what)
        )

    task = Task(_EDIT_TASKS[spec.op]) if spec.task is TaskName.EDIT else Task(spec.task.value)
    x = TaskInputs(
        task=task, steps=spec.steps, cfg_scale=float(spec.cfg_scale), seed=job.seed, keep_source=spec.keep_source
    )
    x.prompt = spec.prompt or ""
    if task is not Task.UNDERSTAND:
        x.duration_s = spec.duration_s
    if spec.task is TaskName.EDIT and spec.op is EditOp.STYLE_TRANSFER:
        x.prompt, x.edit_target = spec.source_prompt or "", spec.prompt
    x.transcript = spec.transcript
    x.voice_prompt_text = spec.voice_prompt_text
    if spec.input_audio_uri:
        if task is Task.UNDERSTAND:
            x.audio_16k = audio(spec.input_audio_uri, THINKER_RATE_HZ, "input audio")
        else:
            x.audio = audio(spec.input_audio_uri, MODEL_RATE_HZ, "input audio")
    if spec.voice_prompt_uri:
        x.voice_prompt = audio(spec.voice_prompt_uri, MODEL_RATE_HZ, "voice prompt")
    if spec.video_uri:
        data = _read(storage, spec.video_uri, job, settings, tenant_policy)
        frames = _load_array(data, spec.video_uri, "video frames")
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise PermanentError(
                f"video {spec.video_uri} must be uint8 frames (T, 3, H, W), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        x.video_frames = frames
    if spec.sync_feature_uri:
        feats = _load_array(
            _read(storage, spec.sync_feature_uri, job, settings, tenant_policy), spec.sync_feature_uri, "sync features"
        )
        x.sync_features = feats.float()
    return x


# --------------------------------------------------------------------------- the engine


class Engine:
    """Runs claimed jobs through the pools and records their outcome on the source."""

    def __init__(
        self,
        source: JobSource,
        sink: ResultSink,
        pools: Any,
        config: Any,
        settings: EngineSettings | None = None,
        *,
        on_done: Callable[[JobResult], None] | None = None,
        metrics: Any = None,
        tenant_policy: TenantPolicy | None = None,
    ) -> None:
        self.source = source
        # tenant id -> that tenant's own extra S3 input rules (service mode: from the tenant store)
        self.tenant_policy = tenant_policy
        self.sink = sink
        self.pools = pools
        self.config = config
        self.settings = settings or EngineSettings()
        self.on_done = on_done
        self.metrics = metrics
        self.log = get_logger("engine")
        self._running: dict[str, ClaimedJob] = {}
        self._stages: dict[str, str] = {}  # job id -> the stage it is in now (backlog per pool)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        self._stop.set()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._running)

    def backlog(self) -> dict[str, int]:
        """Jobs in this engine that still need each pool but are not calling it yet.

        `encoder`: jobs still loading inputs (every task asks the encoder next); `sampler`: jobs that
        generate audio and have not reached the sampler. Work already sent to a pool is counted by
        Serve itself (ongoing requests); this is what will arrive next, for the autoscaler.
        """
        with self._lock:
            jobs = [(job, self._stages.get(job_id, "load")) for job_id, job in self._running.items()]
        return {
            "in_flight": len(jobs),
            "encoder": sum(1 for _, stage in jobs if stage == "load"),
            "sampler": sum(
                1 for job, stage in jobs if stage in _BEFORE_SAMPLER and job.spec.generates_audio
            ),
        }

    def run(self, *, until_exhausted: bool = False) -> None:
        """Claim and run jobs until `stop()` (or, with `until_exhausted`, until the source is empty)."""
        renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
        renewer.start()
        futures: set[Future] = set()
        with ThreadPoolExecutor(self.settings.max_in_flight, thread_name_prefix="job") as pool:
            while not self._stop.is_set():
                free = self.settings.max_in_flight - len(futures)
                if free > 0:
                    block = self.settings.claim_block_s if not futures else 0.0
                    for job in self.source.claim(free, block):
                        with self._lock:
                            self._running[job.job_id] = job
                            self._stages[job.job_id] = "load"
                        if self.metrics is not None:
                            self.metrics.job_claimed(job)
                        futures.add(pool.submit(self._run_job, job))
                if futures:
                    done, futures = wait(futures, timeout=0.05, return_when=FIRST_COMPLETED)
                    futures = set(futures)
                    for f in done:
                        f.result()  # _run_job never raises; surface bugs in the loop itself
                elif until_exhausted and self.source.exhausted():
                    break
            wait(futures)
        self._stop.set()
        renewer.join(timeout=5)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.settings.renew_every_s):
            with self._lock:
                jobs = list(self._running.values())
            for job in jobs:
                try:
                    self.source.renew(job)
                except LeaseLost:
                    self.log.warning("lease lost", job_id=job.job_id)
                except Exception as exc:  # a Redis blip: the next tick tries again
                    self.log.warning("lease renewal failed", job_id=job.job_id, error=str(exc))

    # ------------------------------------------------------------------ one job

    def _check_cancel(self, job: ClaimedJob) -> None:
        if self.source.is_cancel_requested(job):
            raise JobCancelled(job.job_id)

    def _run_job(self, job: ClaimedJob) -> JobResult:
        timer = _Timer()
        log = self.log.bind(job_id=job.job_id, batch_id=job.batch_id, tenant=job.tenant)
        result = JobResult(job.job_id, "running")
        try:
            location, extra = self._execute(job, timer, log)
            self.source.ack_success(job, result_uri=location, timings=timer.timings, extra=extra)
            result.outcome, result.result_uri = "succeeded", location
            log.info("job succeeded", stage="done", timings=timer.timings)
        except BaseException as exc:  # every outcome is recorded, none swallowed
            if not isinstance(exc, Exception):
                raise
            action = outcome_of(exc)
            result.error = _short_error(exc)
            try:
                if action is Outcome.CANCEL:
                    self.source.cancel(job)
                    result.outcome = "cancelled"
                elif action is Outcome.ABANDON:
                    result.outcome = "abandoned"
                else:
                    self.source.fail(job, exc, retry=action is Outcome.RETRY, timings=timer.timings)
                    result.outcome = "retry" if action is Outcome.RETRY else "failed"
            except LeaseLost:
                result.outcome = "abandoned"
            log.warning(
                "job did not succeed",
                outcome=result.outcome,
                error=result.error,
                error_type=type(exc).__name__,
            )
        finally:
            with self._lock:
                self._running.pop(job.job_id, None)
                self._stages.pop(job.job_id, None)
        result.timings = timer.timings
        if self.metrics is not None:
            self.metrics.job_finished(result)
        if self.on_done is not None:
            self.on_done(result)
        return result

    def _mark(self, job: ClaimedJob, timer: _Timer, stage: str) -> None:
        """Record that the job entered `stage` (here, and on the source if it keeps stages)."""
        with self._lock:
            self._stages[job.job_id] = stage
        set_stage = getattr(self.source, "set_stage", None)
        if set_stage is not None:
            set_stage(job, stage, timer.timings)

    def _enter(self, job: ClaimedJob, timer: _Timer, stage: str):
        """`_mark` the stage and time it (a context manager)."""
        self._mark(job, timer, stage)
        return timer.stage(stage)

    def _execute(self, job: ClaimedJob, timer: _Timer, log: Any) -> tuple[str, dict]:
        from model.pipeline import plan_task

        spec = job.spec
        with self._enter(job, timer, "load"):
            log.debug("loading inputs", stage="load")
            inputs = spec_to_inputs(spec, job, self.sink.storage, self.settings, self.tenant_policy)
            try:
                plan = plan_task(self.config, inputs)
            except ValueError as exc:  # the model's own input checks: a bad input, not a fault
                raise PermanentError(str(exc)) from exc
        text = None
        if plan.understand is not None:
            self._check_cancel(job)
            with self._enter(job, timer, "understand"):
                text = _call("understand", self.pools.understand, plan.understand)
            if plan.needs_transcript:
                try:
                    plan = plan.with_transcript(text)
                except ValueError as exc:
                    raise PermanentError(str(exc)) from exc
        audio_bytes = None
        audio_meta: dict[str, Any] = {}
        if plan.generation is not None:
            self._check_cancel(job)
            with self._enter(job, timer, "encode"):
                features = _call("encode", self.pools.encode, plan.encode)
            gen = plan.generation
            segments: list[Any] = []
            self._mark(job, timer, "generate")  # once, not per segment: one source write per stage
            for k in range(gen.num_segments):
                self._check_cancel(job)
                with timer.stage("generate"):
                    segments.append(
                        self.pools.generate(gen.request(k, features, segments[-1] if segments else None))
                    )
            with self._enter(job, timer, "encode_audio"):
                audio = gen.finish(segments)  # (C, N)
                audio_bytes = encode_audio(audio.numpy(), self.config.sample_rate, spec.output_format.value)
            audio_meta = {
                "sample_rate": self.config.sample_rate,
                "channels": int(audio.shape[0]),
                "duration_s": round(audio.shape[-1] / self.config.sample_rate, 6),
            }
        self._check_cancel(job)
        metadata = {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "tenant": job.tenant,
            "task": plan.task.value,
            "spec": spec.model_dump(mode="json", exclude_none=True),
            "seed": job.seed,
            "attempt": job.attempt,
            "model_version": self.settings.model_version,
            "timings_s": dict(timer.timings),
            "text": text,
            "notes": list(plan.notes),
            **audio_meta,
        }
        with self._enter(job, timer, "write"):
            loc = self.sink.write(
                tenant=job.tenant,
                job_id=job.job_id,
                batch_id=job.batch_id,
                metadata=metadata,
                audio_bytes=audio_bytes,
                ext=spec.output_format.value,
            )
        uri = loc.result_uri or loc.metadata_uri
        extra = {"text": text, "metadata_uri": loc.metadata_uri, **audio_meta}
        return uri, {k: v for k, v in extra.items() if v is not None}
