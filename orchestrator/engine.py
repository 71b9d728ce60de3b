"""The engine loop: claim, load inputs, understand, encode, generate, write, ack.

A short loop over narrow seams, each a `Protocol` below or in `orchestrator.sources`: a
`JobSource` (Redis queue or manifest file), an `InputReader` (the process's `InputResolver`), a
`ResultStore` (`Storage.put_result`), `Pools` offering `encode`, `understand`, `sync_features` and
`generate` one item per call (`workers.app.ServePools`, or `InProcessPools` without Ray), and optional
`EngineMetricsSink`. Each job runs in a worker thread; at most `max_in_flight` run at once
(backpressure: nothing more is claimed until one finishes). Many jobs calling the pools
concurrently is what lets Serve batch across jobs. A renewer thread keeps every running job's lease
alive; cancellation is checked between stages; stage timings are recorded. A workflow step's
references are filled from the outputs of the steps it uses (`JobSource.step_outputs`,
`orchestrator.workflows.resolve_step`) when it loads; its metadata records `workflow_id`, `step`
and `resolved` (the fields after substitution).

A video task whose `video_uri` names a video file computes its sync features from the video (stage
`sync`, one `Pools.sync_features` call per window of video) unless `sync_feature_uri` gives them; a
long video-to-music job prompts and syncs each segment with the video of its own span; with
`output_format: "mp4"` the result is the input's video stream (copied) with the audio as its track.

Outcomes are exceptions (orchestrator.errors): a bad input fails the job alone with its reason, a
transient fault retries it, a cancellation ends it `cancelled`, a lost lease drops it silently.
torch is imported lazily (inside functions) so importing the orchestrator stays light.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from model.limits import MAX_INPUT_AUDIO_S, MAX_INPUT_VIDEO_S
from orchestrator.audio_io import encode_audio
from orchestrator.errors import JobCancelled, LeaseLost, Outcome, PermanentError, RetryableError, outcome_of
from orchestrator.jobs import OutputFormat
from orchestrator.logging import get_logger
from orchestrator.model_inputs import MAX_INPUT_BYTES, InputLimits, InputReader, load_inputs
from orchestrator.sources import ClaimedJob, JobSource
from orchestrator.storage import Data, ResultLocation
from orchestrator.workflows import resolve_step

if TYPE_CHECKING:
    import torch
    from structlog.typing import FilteringBoundLogger

    from model.config import AudioOmniConfig
    from model.mllm import MLLMPrompt, UnderstandRequest
    from model.pipeline import GenerationPlan, UnderstandWindow
    from model.requests import GenerationRequest
    from orchestrator.jobs import WorkflowLink
    from orchestrator.video_io import VideoClip

__all__ = [
    "Engine",
    "EngineMetricsSink",
    "EngineSettings",
    "JobResult",
    "Pools",
    "ResultStore",
    "segment_keep_samples",
]

A = TypeVar("A")
T = TypeVar("T")

# Stages after which a generating job still has to reach the sampler pool.
_BEFORE_SAMPLER = frozenset({"load", "understand", "sync", "encode"})
# Understanding windows of one job in flight at once (300 s of audio is 10 windows of 30 s).
_MAX_CONCURRENT_WINDOWS = 8
# How long an outcome is retried while the source is unreachable (a Redis restart), and the pause
# between claims then; past it the job is left to its lease, which lapses and hands it on.
_RECORD_RETRY_S = 120.0
_SOURCE_RETRY_S = 1.0


# --------------------------------------------------------------------------- seams


class Pools(Protocol):
    """The model pools, one item per call, safe to call from many threads."""

    def encode(self, prompt: MLLMPrompt) -> torch.Tensor:
        """The thinker's hidden states (L, D) for one prompt."""
        ...

    def understand(self, request: UnderstandRequest) -> str:
        """The thinker's text answer to one request."""
        ...

    def sync_features(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """Synchformer features (tokens, D) of uint8 frames (T, 3, 224, 224) at 25 fps."""
        ...

    def generate(self, request: GenerationRequest, keep_samples: int | None = None) -> torch.Tensor:
        """(C, N) float32 audio of one segment; only its first `keep_samples` samples when given
        (the pool cuts them, so a short job's unused rest of the window is never sent back)."""
        ...


class ResultStore(Protocol):
    """Where a finished job's result and its metadata JSON go (`Storage.put_result`)."""

    def put_result(
        self,
        *,
        tenant: str,
        job_id: str,
        metadata: Mapping[str, Any],
        data: Data | None = None,
        ext: str = "wav",
        batch_id: str | None = None,
    ) -> ResultLocation: ...


class EngineMetricsSink(Protocol):
    """What the engine reports (`orchestrator.metrics.EngineMetrics`)."""

    def job_claimed(self, job: ClaimedJob) -> None: ...

    def job_finished(self, result: JobResult) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    max_in_flight: int = 8
    renew_every_s: float = 10.0
    claim_block_s: float = 1.0
    max_input_bytes: int = MAX_INPUT_BYTES
    max_input_audio_s: float = MAX_INPUT_AUDIO_S
    max_input_video_s: float = MAX_INPUT_VIDEO_S
    model_version: str = "tiny-random"

    def __post_init__(self) -> None:
        if not 1 <= self.max_in_flight <= 1024:
            raise ValueError(f"max_in_flight {self.max_in_flight} is invalid: expected an integer in [1, 1024]")
        if not self.renew_every_s > 0:
            raise ValueError(f"renew_every_s {self.renew_every_s} is invalid: expected seconds > 0")
        self.input_limits  # noqa: B018 (checks each limit, naming its range)

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(self.max_input_bytes, self.max_input_audio_s, self.max_input_video_s)


@dataclass
class JobResult:
    """How one attempt of one job ended (`outcome` is None only while it runs)."""

    job_id: str
    outcome: Outcome | None = None
    error: str | None = None
    result_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _short_error(exc: BaseException, limit: int = 500) -> str:
    """The last line of an error (a Ray task error carries the remote traceback before it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _step_metadata(link: WorkflowLink | None, resolved: dict[str, Any]) -> dict[str, Any]:
    """A workflow step's place in its workflow and its fields after substitution (`resolved`); for a
    built-in chain's step, the fields as the client gave them (e.g. `original_prompt` of a
    `reasoning: true` job, whose generation uses the thinker's rewrite)."""
    if link is None:
        return {}
    meta: dict[str, Any] = {"workflow_id": link.workflow_id, "step": link.step, "resolved": resolved}
    for name, value in link.original.items():
        meta[f"original_{name}"] = value
    return meta


class _Unrecorded(Exception):
    """An outcome could not be recorded: the source stayed unreachable past `_RECORD_RETRY_S`."""


class _PoolError(RetryableError):
    """A pool call failed (replica died, model raised): transient from the job's point of view."""


def segment_keep_samples(gen: GenerationPlan, k: int) -> int | None:
    """How many samples of segment k's audio `gen.finish` uses (None: all of them).

    Every segment but the last is used whole (crossfaded into the next one, and the next one's
    continuation window is its end). The last one starts at k * hop in the joined audio, which is
    cut to total + drop samples, so only its first total + drop - k * hop samples reach the result:
    for a 1 s job about a tenth of the window the model renders. That count is always more than
    the crossfade, so the join is the same with the segment cut or whole.
    """
    if not 0 <= k < gen.num_segments:
        raise ValueError(f"segment index must be in [0, {gen.num_segments}), got {k}")
    if k < gen.num_segments - 1:
        return None
    return gen.total_samples + gen.drop_head_samples - k * gen.hop_samples


def _call(stage: str, fn: Callable[[A], T], arg: A) -> T:
    try:
        return fn(arg)
    except Exception as exc:
        raise _PoolError(f"{stage} failed: {_short_error(exc)}") from exc


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)


# --------------------------------------------------------------------------- the engine


class Engine:
    """Runs claimed jobs through the pools and records their outcome on the source.

    `results`: where results are written (the `Storage`). `inputs`: reads job inputs under every
    input rule (the process's `InputResolver`, the same one the API checks with). `config`: the
    model's config (sample rate of the output, windows, limits the planner checks).
    """

    def __init__(
        self,
        source: JobSource,
        results: ResultStore,
        inputs: InputReader,
        pools: Pools,
        config: AudioOmniConfig,
        settings: EngineSettings | None = None,
        *,
        on_done: Callable[[JobResult], None] | None = None,
        metrics: EngineMetricsSink | None = None,
    ) -> None:
        self.source = source
        self.results = results
        self.inputs = inputs
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
            "sampler": sum(1 for job, stage in jobs if stage in _BEFORE_SAMPLER and job.spec.generates_audio),
        }

    def run(self, *, until_exhausted: bool = False) -> None:
        """Claim and run jobs until `stop()` (or, with `until_exhausted`, until the source is empty)."""
        renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
        renewer.start()
        futures: set[Future[JobResult]] = set()
        with ThreadPoolExecutor(self.settings.max_in_flight, thread_name_prefix="job") as pool:
            while not self._stop.is_set():
                free = self.settings.max_in_flight - len(futures)
                if free > 0:
                    block = self.settings.claim_block_s if not futures else 0.0
                    for job in self._claim(free, block):
                        with self._lock:
                            self._running[job.job_id] = job
                            self._stages[job.job_id] = "load"
                        if self.metrics is not None:
                            self.metrics.job_claimed(job)
                        futures.add(pool.submit(self._run_job, job))
                if futures:
                    done, not_done = wait(futures, timeout=0.05, return_when=FIRST_COMPLETED)
                    futures = set(not_done)
                    for f in done:
                        f.result()  # _run_job never raises; surface bugs in the loop itself
                elif until_exhausted and self._exhausted():
                    break
            wait(futures)
        self._stop.set()
        renewer.join(timeout=5)

    def _claim(self, free: int, block_s: float) -> list[ClaimedJob]:
        """New jobs, or none while the source is unreachable (the jobs in flight carry on)."""
        try:
            return self.source.claim(free, block_s)
        except Exception as exc:
            self.log.warning("claim failed; trying again", error=_short_error(exc))
            self._stop.wait(_SOURCE_RETRY_S)
            return []

    def _exhausted(self) -> bool:
        try:
            return self.source.exhausted()
        except Exception as exc:  # unknown while the source is unreachable: not exhausted
            self.log.warning("could not ask the source whether work remains", error=_short_error(exc))
            self._stop.wait(_SOURCE_RETRY_S)
            return False

    def _record(self, log: FilteringBoundLogger, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Record an outcome on the source, retried with backoff while the source is unreachable.

        `LeaseLost` and contract errors (ValueError, TypeError) pass at once; past `_RECORD_RETRY_S`
        it raises `_Unrecorded` (nothing was recorded; the job's lease lapses and it runs again).
        """
        deadline = time.monotonic() + _RECORD_RETRY_S
        delay = 0.25
        while True:
            try:
                fn(*args, **kwargs)
                return
            except (LeaseLost, ValueError, TypeError):
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise _Unrecorded(f"could not record the outcome: {_short_error(exc)}") from exc
                log.warning("recording the outcome failed; retrying", error=_short_error(exc))
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

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
        result = JobResult(job.job_id)
        try:
            location, extra = self._execute(job, timer, log)
            self._record(log, self.source.ack_success, job, result_uri=location, timings=timer.timings, extra=extra)
            result.outcome, result.result_uri = Outcome.SUCCEEDED, location
            log.info("job succeeded", stage="done", timings=timer.timings)
        except _Unrecorded as exc:
            result.outcome, result.error = Outcome.ABANDONED, str(exc)
            log.error("job outcome not recorded; its lease will lapse and it runs again", error=result.error)
        except Exception as exc:  # every outcome is recorded, none swallowed
            outcome = outcome_of(exc)
            result.error = _short_error(exc)
            try:
                if outcome is Outcome.CANCELLED:
                    self._record(log, self.source.cancel, job)
                elif outcome is not Outcome.ABANDONED:
                    self._record(log, self.source.fail, job, exc, retry=outcome is Outcome.RETRY, timings=timer.timings)
                result.outcome = outcome
            except LeaseLost:
                result.outcome = Outcome.ABANDONED
            except _Unrecorded as unrecorded:
                result.outcome = Outcome.ABANDONED
                log.error("job outcome not recorded; its lease will lapse and it runs again", error=str(unrecorded))
            log.warning(
                "job did not succeed",
                outcome=str(result.outcome),
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
        """Record that the job entered `stage` (here, and on the source)."""
        with self._lock:
            self._stages[job.job_id] = stage
        self.source.set_stage(job, stage, timer.timings)

    @contextmanager
    def _enter(self, job: ClaimedJob, timer: _Timer, stage: str) -> Iterator[None]:
        """`_mark` the stage and time it."""
        self._mark(job, timer, stage)
        with timer.stage(stage):
            yield

    def _ask(self, windows: Sequence[UnderstandWindow]) -> list[str]:
        """The thinker's answer to each window, asked at once so the encoder pool can batch them.

        Each request first passes the thinker's own input checks here: one that fails them is a bad
        input (PermanentError, never retried) and never reaches a batch it would fail for everyone.
        """
        from model.mllm import check_understand_request

        for window in windows:
            try:
                check_understand_request(window.request, f"question {window.label or 'about the input'}")
            except ValueError as exc:
                raise PermanentError(str(exc)) from exc
        if len(windows) == 1:
            return [_call("understand", self.pools.understand, windows[0].request)]
        with ThreadPoolExecutor(min(len(windows), _MAX_CONCURRENT_WINDOWS), thread_name_prefix="window") as pool:
            return list(pool.map(lambda w: _call("understand", self.pools.understand, w.request), windows))

    def _sync(self, video: VideoClip, gen: GenerationPlan, k: int) -> torch.Tensor:
        """Sync features of generation segment k: the Synchformer frames (25 fps, 224 x 224) of the
        segment's video span through the encoder pool."""
        from model.sync import SYNC_FPS, SYNC_SIZE

        start_s, end_s = gen.video_span(k)
        # round(span * 25) frames, the count the extractor reads for the span (`sync_frame_count`);
        # a span past the video's end repeats its last frame
        frames = video.frames(start_s, end_s, fps=SYNC_FPS, size=SYNC_SIZE)
        try:
            features = self.pools.sync_features(frames)
        except ValueError as exc:  # the pool refused these frames, or has no extractor to run: not transient
            raise PermanentError(f"sync features: {_short_error(exc)}") from exc
        except Exception as exc:
            raise _PoolError(f"sync failed: {_short_error(exc)}") from exc
        want = (self.config.sync.seq_in, self.config.cond_dim)
        if tuple(features.shape) != want:  # a deployment whose extractor does not fit the model
            raise RuntimeError(
                f"the sync extractor gave features of shape {tuple(features.shape)}; the model takes {want}"
            )
        return features.float()

    def _execute(self, job: ClaimedJob, timer: _Timer, log: FilteringBoundLogger) -> tuple[str, dict[str, Any]]:
        from model.pipeline import plan_task

        spec = job.spec
        with self._enter(job, timer, "load"):
            step_meta: dict[str, Any] = {}
            if spec.workflow is not None:  # a workflow step: the used steps' outputs fill its references
                spec, resolved = resolve_step(spec, self.source.step_outputs(job))
                step_meta = _step_metadata(spec.workflow, resolved)
            log.debug("loading inputs", stage="load")
            loaded = load_inputs(
                spec,
                seed=job.seed,
                tenant=job.tenant,
                inputs=self.inputs,
                config=self.config,
                limits=self.settings.input_limits,
            )
            inputs, video = loaded.inputs, loaded.video
            if spec.output_format is OutputFormat.MP4 and video is None:
                raise PermanentError(
                    "output_format 'mp4' needs video_uri to name a video file (the result is that video with "
                    "the generated audio as its track); pre-decoded frames have no video stream to return"
                )
            try:
                plan = plan_task(self.config, inputs)
            except ValueError as exc:  # the model's own input checks: a bad input, not a fault
                raise PermanentError(str(exc)) from exc
        text = None
        if plan.understand_windows:  # one question per thinker window of the audio, answers joined
            self._check_cancel(job)
            with self._enter(job, timer, "understand"):
                text = plan.join_answers(self._ask(plan.understand_windows))
        audio_bytes = None
        audio_meta: dict[str, Any] = {}
        if plan.generation is not None:
            self._check_cancel(job)
            if plan.encode is None:  # the planner always pairs a generation with its thinker prompt
                raise PermanentError(f"task {plan.task.value} planned a generation without a thinker prompt")
            gen = plan.generation
            own_sync = video is not None and gen.video and inputs.sync_from_video
            sync = None
            if own_sync and video is not None:
                with self._enter(job, timer, "sync"):
                    sync = self._sync(video, gen, 0)
            with self._enter(job, timer, "encode"):
                features = _call("encode", self.pools.encode, plan.encode)
            segments: list[torch.Tensor] = []
            self._mark(job, timer, "generate")  # once, not per segment: one source write per stage
            for k in range(gen.num_segments):
                self._check_cancel(job)
                if k > 0 and gen.video_per_segment:  # this segment's own span of the video
                    if own_sync and video is not None:
                        with timer.stage("sync"):
                            sync = self._sync(video, gen, k)
                    with timer.stage("encode"):
                        features = _call("encode", self.pools.encode, plan.segment_prompt(k))
                with timer.stage("generate"):
                    request = gen.request(k, features, segments[-1] if segments else None, sync_features=sync)
                    keep = segment_keep_samples(gen, k)
                    segments.append(_call("generate", partial(self.pools.generate, keep_samples=keep), request))
            with self._enter(job, timer, "encode_audio"):
                audio = gen.finish(segments)  # (C, N)
                duration_s = audio.shape[-1] / self.config.sample_rate
                if spec.output_format is OutputFormat.MP4 and video is not None:
                    from orchestrator.video_mux import mux_soundtrack

                    audio_bytes = mux_soundtrack(video.data, audio.numpy(), self.config.sample_rate, what="input video")
                    duration_s = video.info.duration_s  # the track is fitted to the video
                else:
                    audio_bytes = encode_audio(audio.numpy(), self.config.sample_rate, spec.output_format.value)
            audio_meta = {
                "sample_rate": self.config.sample_rate,
                "channels": int(audio.shape[0]),
                "duration_s": round(duration_s, 6),
            }
        self._check_cancel(job)
        metadata = {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "tenant": job.tenant,
            "task": plan.task.value,
            "spec": job.spec.model_dump(mode="json", exclude_none=True),  # as submitted
            **step_meta,
            "seed": job.seed,
            "attempt": job.attempt,
            "model_version": self.settings.model_version,
            "timings_s": dict(timer.timings),
            "text": text,
            "notes": list(plan.notes),
            **audio_meta,
        }
        if video is not None:
            metadata["video"] = video.info.summary()
        with self._enter(job, timer, "write"):
            loc = self.results.put_result(
                tenant=job.tenant,
                job_id=job.job_id,
                batch_id=job.batch_id,
                metadata=metadata,
                data=audio_bytes,
                ext=spec.output_format.value,
            )
        uri = loc.result_uri or loc.metadata_uri
        extra = {"text": text, "metadata_uri": loc.metadata_uri, **audio_meta}
        return uri, {k: v for k, v in extra.items() if v is not None}
