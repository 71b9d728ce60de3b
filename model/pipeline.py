"""Per-task pipelines over the two model parts.

`plan_task` checks a task's inputs and turns them into what each part needs: the thinker prompt
(encoder part), the understanding requests of an `understand` task (one per `THINKER_WINDOW_S`
window of its audio, answers joined by `TaskPlan.join_answers`) and a `GenerationPlan` that yields
one `GenerationRequest` per segment and joins the segments' audio. A video task reads the video of
each segment's own span (`VIDEO_WINDOW_S` from the segment's start; spec 7.7): its thinker frames
(`TaskPlan.segment_prompt`) and its sync features (`GenerationPlan.video_span`, computed by the
caller and passed to `GenerationPlan.request`). The job engine runs those
stages on separate worker pools; `AudioOmniPipeline` runs them in-process for tests, benchmarks and
single-machine use. Tensors in, tensors out: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from model.conditioners.mel import fit_window
from model.config import AudioOmniConfig
from model.config.sync_extractor import SYNC_WINDOW_S
from model.limits import (
    MAX_CFG_SCALE,
    MAX_DURATION_S,
    MAX_INPUT_AUDIO_S,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_TRANSCRIPT_CHARS,
    MAX_VOICE_PROMPT_TEXT_CHARS,
    MIN_CFG_SCALE,
    MIN_STEPS,
    THINKER_WINDOW_S,
    VOICE_PROMPT_MAX_S,
)
from model.longform import continuation_window, crossfade_join, plan_segments
from model.mllm import QWEN_SAMPLE_RATE_HZ, MLLMEncoder, MLLMPrompt, UnderstandRequest
from model.parts import SamplerPart
from model.postprocess import peak_normalize, source_mask, trim_silence
from model.prompts import ASR_INSTRUCTION, SYS_ASR, SYS_UNDERSTANDING, generation_prompt
from model.requests import GenerationRequest
from model.sampler import MAX_SEED as MAX_NOISE_SEED
from model.tasks import EDIT_TASKS, VIDEO_TASKS, Task

OVERLAP_S = 1.0
# The span of video one generation window reads, from the window's start: the reference reads 10 s
# (50 thinker frames at the config's 5 fps, 250 Synchformer frames at 25 fps -> 240 sync tokens)
# and pads a shorter video with its last frame. Long video-to-music reads each segment's own span.
VIDEO_WINDOW_S = SYNC_WINDOW_S
VIDEO_FRAME_SIZE = 224  # the thinker's frames are squash-resized to 224 x 224, as the reference feeds them
KEEP_SOURCE_TASKS = frozenset({Task.EDIT_REMOVE, Task.EDIT_EXTRACT})  # the result is a part of the source
LONG_FORM_TASKS = frozenset({Task.TEXT_TO_AUDIO, Task.TEXT_TO_MUSIC, Task.VIDEO_TO_MUSIC, *EDIT_TASKS})
# Known instructions that come with their own system prompt (the question, stripped -> system).
INSTRUCTION_SYSTEMS = {ASR_INSTRUCTION: SYS_ASR}
TRANSCRIBING_SYSTEMS = frozenset({SYS_ASR})  # their window answers are joined as one running text


@dataclass
class TaskInputs:
    """Everything one task may use. Audio is mono float32; `audio`/`voice_prompt` at the model's rate
    (44.1 kHz), `audio_16k` at 16 kHz for the thinker (understanding, transcription included)."""

    task: Task
    prompt: str = ""  # description, edit description / style source, or the question
    edit_target: str | None = None  # style transfer target
    transcript: str | None = None  # text to speak (tts, voice_conversion)
    voice_prompt: torch.Tensor | None = None  # (N,) target voice (tts, voice_conversion)
    voice_prompt_text: str | None = None  # what the voice prompt says, if known
    audio: torch.Tensor | None = None  # (N,) edit source / speech to convert
    audio_16k: torch.Tensor | None = None  # (N16,) the question's audio at 16 kHz for the thinker (understand)
    video_frames: torch.Tensor | None = None  # (T, 3, H, W) uint8 at the config's video_fps, from t = 0
    sync_features: torch.Tensor | None = None  # (240, 768) Synchformer features of the first window
    sync_from_video: bool = False  # no sync_features: the caller computes each segment's from the video
    duration_s: float | None = None  # None: one window (generation) or the source length (edits)
    steps: int = 100
    cfg_scale: float = 7.0
    seed: int = 0
    keep_source: bool = False  # remove / extract: mask the source with the output (postprocess.source_mask)


@dataclass
class GenerationPlan:
    """The sampler-side work of one generating task: `num_segments` requests, run in order."""

    task: Task
    base: GenerationRequest  # mllm_features left empty until the encoder has run
    num_segments: int
    total_samples: int
    fade_samples: int
    hop_samples: int
    source: torch.Tensor | None = None  # edits: the whole source at the model rate
    drop_head_samples: int = 0  # TTS with a voice prompt: the prompt's own span at the start
    trim: bool = False  # TTS: trim leading/trailing silence
    window_samples: int = 0
    output_samples: int = 0
    keep_source: bool = False  # mask `source` with the output instead of returning the output itself
    band_hz: float | None = None  # the model's output carries nothing above this (config.output_band_hz)
    rate: int = 44100  # sample rate of `source` and the output
    video: bool = False  # a video task: each segment reads the video of its own span

    @property
    def video_per_segment(self) -> bool:
        """Whether segments after the first need their own thinker prompt and sync features."""
        return self.video and self.num_segments > 1

    def video_span(self, k: int) -> tuple[float, float]:
        """The span of video (seconds) segment k reads: `VIDEO_WINDOW_S` from the segment's start."""
        if not 0 <= k < self.num_segments:
            raise ValueError(f"segment index must be in [0, {self.num_segments}), got {k}")
        start = k * self.hop_samples / self.rate
        return start, start + VIDEO_WINDOW_S

    def request(
        self,
        k: int,
        features: torch.Tensor,
        previous: torch.Tensor | None,
        *,
        sync_features: torch.Tensor | None = None,
    ) -> GenerationRequest:
        """Request for segment k (0-based). `previous` is segment k-1's (C, N) audio for continuation;
        `sync_features` are the segment's own (those of `video_span(k)`; default: the base request's)."""
        if not 0 <= k < self.num_segments:
            raise ValueError(f"segment index must be in [0, {self.num_segments}), got {k}")
        req = replace(self.base, mllm_features=features, seed=(self.base.seed + k) % (MAX_NOISE_SEED + 1))
        if sync_features is not None:
            req.sync_features = sync_features
        if self.source is not None:  # edits: each segment edits its own part of the source
            start = k * self.hop_samples
            req.audio_window = fit_window(self.source[start : start + self.window_samples], self.window_samples)
        elif k > 0:
            if previous is None:
                raise ValueError(f"segment {k} continues segment {k - 1}: pass its audio as `previous`")
            req.audio_window = continuation_window(previous, self.window_samples)
        return req

    def finish(self, segments: Sequence[torch.Tensor], *, normalize: bool = True) -> torch.Tensor:
        """Join the segments' (C, N) audio, crop to the requested length and post-process."""
        if len(segments) != self.num_segments:
            raise ValueError(f"expected {self.num_segments} segments, got {len(segments)}")
        audio = crossfade_join(list(segments), self.fade_samples, self.total_samples + self.drop_head_samples)
        if self.drop_head_samples and audio.shape[-1] > self.drop_head_samples:
            audio = audio[..., self.drop_head_samples :]
        if self.trim:
            audio = trim_silence(audio)
        if self.keep_source and self.source is not None:
            # At the source's own level: a part of the source is not peak-normalised.
            masked = source_mask(audio, self.source[: audio.shape[-1]], band_hz=self.band_hz, sample_rate=self.rate)
            return masked.clamp(-1.0, 1.0)
        return peak_normalize(audio) if normalize else audio


@dataclass(frozen=True)
class UnderstandWindow:
    """One question to the thinker: about the span [start_s, end_s) of the task's audio, or about
    the whole input (start_s/end_s None) when it has no audio or its audio fits one window."""

    request: UnderstandRequest
    start_s: float | None = None
    end_s: float | None = None

    @property
    def label(self) -> str:
        """The span as the joined answer shows it, e.g. "[30-60 s]" ("" for a whole input)."""
        if self.start_s is None or self.end_s is None:
            return ""
        return f"[{_seconds(self.start_s)}-{_seconds(self.end_s)} s]"


def _seconds(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass
class TaskPlan:
    task: Task
    encode: MLLMPrompt | None = None  # thinker prompt whose hidden states condition generation
    understand_windows: list[UnderstandWindow] = field(default_factory=list)  # understand: the questions
    generation: GenerationPlan | None = None
    notes: list[str] = field(default_factory=list)
    video_frames: torch.Tensor | None = None  # a video task's thinker frames (all of them, from t = 0)
    video_fps: float = 5.0

    def segment_prompt(self, k: int) -> MLLMPrompt:
        """The thinker prompt of generation segment k: the job's prompt with the frames of the
        segment's own span (`GenerationPlan.video_span`)."""
        if self.encode is None or self.generation is None:
            raise ValueError(f"task {self.task.value} has no generation to prompt")
        if self.video_frames is None:
            return self.encode
        start, end = self.generation.video_span(k)
        return replace(self.encode, video=window_frames(self.video_frames, start, end, self.video_fps))

    def join_answers(self, answers: Sequence[str]) -> str:
        """The task's text answer from its windows' answers (in window order).

        One window: its answer. Several: each answer on its own line after its span, as
        "[0-30 s] ...\n[30-60 s] ..."; a transcription is one running text instead (the spans would
        end up in the transcript).
        """
        windows = self.understand_windows
        if len(answers) != len(windows):
            raise ValueError(f"expected {len(windows)} answers (one per window), got {len(answers)}")
        texts = [a.strip() for a in answers]
        if len(windows) == 1:
            return texts[0]
        if windows[0].request.system in TRANSCRIBING_SYSTEMS:
            return " ".join(t for t in texts if t)
        return "\n".join(f"{w.label} {t}".rstrip() for w, t in zip(windows, texts, strict=True))


# ---------------------------------------------------------------------------------------- checks


def _check_text(name: str, value: str | None, *, required: bool, limit: int = MAX_PROMPT_CHARS) -> None:
    if value is None or not value.strip():
        if required:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        return
    if len(value) > limit:
        raise ValueError(f"{name} has {len(value)} characters; the limit is {limit}")


def _check_audio(name: str, audio: torch.Tensor | None, *, required: bool, sample_rate: int) -> None:
    if audio is None:
        if required:
            raise ValueError(f"{name} is required for this task")
        return
    if audio.dim() != 1:
        raise ValueError(f"{name} must be mono (N,) samples, got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if not bool(torch.isfinite(audio).all()):
        raise ValueError(f"{name} contains NaN or Inf samples")
    if audio.numel() > MAX_INPUT_AUDIO_S * sample_rate:
        raise ValueError(f"{name} lasts {audio.numel() / sample_rate:.1f} s; the limit is {MAX_INPUT_AUDIO_S:g} s")


def check_inputs(config: AudioOmniConfig, x: TaskInputs) -> Task:
    """Validate `x` for its task; a bad value raises ValueError naming it and the allowed range."""
    task = x.task if isinstance(x.task, Task) else Task.parse(str(x.task))
    sr = config.sample_rate
    if not isinstance(x.steps, int) or not MIN_STEPS <= x.steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int in [{MIN_STEPS}, {MAX_STEPS}], got {x.steps!r}")
    if not (
        isinstance(x.cfg_scale, int | float)
        and math.isfinite(x.cfg_scale)
        and MIN_CFG_SCALE <= x.cfg_scale <= MAX_CFG_SCALE
    ):
        raise ValueError(f"cfg_scale must be a number in [{MIN_CFG_SCALE:g}, {MAX_CFG_SCALE:g}], got {x.cfg_scale!r}")
    if not isinstance(x.seed, int) or not 0 <= x.seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}], got {x.seed!r}")
    if x.duration_s is not None:
        limit = MAX_DURATION_S if task in LONG_FORM_TASKS else config.window_s
        if not (math.isfinite(x.duration_s) and 0 < x.duration_s <= limit):
            raise ValueError(f"duration_s for {task.value} must be in (0, {limit:g}] seconds, got {x.duration_s!r}")
    if x.keep_source and task not in KEEP_SOURCE_TASKS:
        raise ValueError(f"keep_source applies to {' and '.join(sorted(KEEP_SOURCE_TASKS))} only, not {task.value}")
    if task is Task.UNDERSTAND:
        _check_text("prompt (the question)", x.prompt, required=True)
        _check_audio("audio_16k", x.audio_16k, required=False, sample_rate=QWEN_SAMPLE_RATE_HZ)
    elif task in (Task.TEXT_TO_AUDIO, Task.TEXT_TO_MUSIC):
        _check_text("prompt", x.prompt, required=True)
    elif task is Task.TTS:
        _check_text("transcript", x.transcript, required=True, limit=MAX_TRANSCRIPT_CHARS)
        _check_audio("voice_prompt", x.voice_prompt, required=False, sample_rate=sr)
        _check_text("voice_prompt_text", x.voice_prompt_text, required=False, limit=MAX_VOICE_PROMPT_TEXT_CHARS)
    elif task is Task.VOICE_CONVERSION:
        # The speech to convert is transcribed first (an `understand` request with ASR_INSTRUCTION);
        # conversion speaks that transcript in the voice prompt's voice.
        _check_audio("voice_prompt", x.voice_prompt, required=True, sample_rate=sr)
        _check_text("transcript (of the speech to convert)", x.transcript, required=True, limit=MAX_TRANSCRIPT_CHARS)
    elif task in VIDEO_TASKS:
        _check_text("prompt", x.prompt, required=False)
        if x.sync_features is None and x.video_frames is None:
            raise ValueError(f"task {task.value} needs sync_features and/or video_frames")
    elif task in EDIT_TASKS:
        _check_text("prompt (the sound to edit)", x.prompt, required=True)
        if task is Task.EDIT_STYLE_TRANSFER:
            _check_text("edit_target", x.edit_target, required=True)
        _check_audio("audio (the source)", x.audio, required=True, sample_rate=sr)
    if x.sync_features is not None:
        want = (config.sync.seq_in, config.cond_dim)
        if tuple(x.sync_features.shape) != want:
            raise ValueError(f"sync_features must have shape {want}, got {tuple(x.sync_features.shape)}")
        if not bool(torch.isfinite(x.sync_features).all()):
            raise ValueError("sync_features contain NaN or Inf")
    if x.video_frames is not None and (x.video_frames.dim() != 4 or x.video_frames.shape[1] != 3):
        raise ValueError(f"video_frames must be (T, 3, H, W) uint8, got shape {tuple(x.video_frames.shape)}")
    return task


# ---------------------------------------------------------------------------------------- planning


def window_frames(frames: torch.Tensor, start_s: float, end_s: float, fps: float) -> torch.Tensor:
    """The frames of [start_s, end_s) of `frames` (sampled at `fps` from t = 0), as many as the span
    holds at `fps`; a span past the last frame repeats it (as the reference pads a short video)."""
    if frames.shape[0] == 0:
        raise ValueError("video_frames is empty (0 frames)")
    first, count = round(start_s * fps), max(1, round((end_s - start_s) * fps))
    part = frames[first : first + count]
    if part.shape[0] == 0:
        part = frames[-1:]
    if part.shape[0] < count:
        part = torch.cat([part, part[-1:].expand(count - part.shape[0], *part.shape[1:])])
    return part


def _speech_text(transcript: str, voice_prompt_text: str | None) -> str:
    """Voice-prompt text + transcript, joined with a sentence break as the released model was fed."""
    ref = (voice_prompt_text or "").strip()
    if not ref:
        return transcript.strip()
    if not (ref.endswith(". ") or ref.endswith("。")):
        ref = ref.rstrip(".") + ". "
    return ref + transcript.strip()


def understand_windows(
    question: str,
    audio_16k: torch.Tensor | None,
    video_frames: torch.Tensor | None = None,
    *,
    video_fps: float | None = None,
    window_s: float = THINKER_WINDOW_S,
) -> list[UnderstandWindow]:
    """The thinker questions of one understanding request: one per `window_s` span of its media.

    A known instruction (`INSTRUCTION_SYSTEMS`, e.g. the ASR one) gets its own system prompt. The
    media is cut into windows when its audio, or its video (at `video_fps`), is longer than one: each
    window asks about the audio and the video of its own span (a window past one's end asks about
    the other alone).
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0 seconds, got {window_s!r}")
    system = INSTRUCTION_SYSTEMS.get(question.strip(), SYS_UNDERSTANDING)
    window_n = round(window_s * QWEN_SAMPLE_RATE_HZ)
    audio_n = audio_16k.numel() if audio_16k is not None else 0
    video_s = video_frames.shape[0] / video_fps if video_frames is not None and video_fps and video_fps > 0 else 0.0
    if audio_n <= window_n and video_s <= window_s:
        return [
            UnderstandWindow(UnderstandRequest(question=question, audio=audio_16k, video=video_frames, system=system))
        ]
    if video_frames is not None and not (video_fps and video_fps > 0):
        raise ValueError(f"video_fps must be > 0 to cut the video into windows, got {video_fps!r}")
    windows = []
    total = max(audio_n, round(video_s * QWEN_SAMPLE_RATE_HZ))
    for start in range(0, total, window_n):
        end = min(start + window_n, total)
        start_s, end_s = start / QWEN_SAMPLE_RATE_HZ, end / QWEN_SAMPLE_RATE_HZ
        audio = audio_16k[start:end] if audio_16k is not None and start < audio_n else None
        video = None
        if video_frames is not None and video_fps:
            video = video_frames[math.floor(start_s * video_fps) : math.ceil(end_s * video_fps)]
            video = video if video.shape[0] > 0 else None
        request = UnderstandRequest(question=question, audio=audio, video=video, system=system)
        windows.append(UnderstandWindow(request, start_s, end_s))
    return windows


def plan_task(config: AudioOmniConfig, x: TaskInputs) -> TaskPlan:
    """Check `x` and split its work into encoder, understanding and sampler stages."""
    task = check_inputs(config, x)
    if task is Task.UNDERSTAND:
        windows = understand_windows(x.prompt, x.audio_16k, x.video_frames, video_fps=config.video_fps)
        plan = TaskPlan(task, understand_windows=windows)
        if len(windows) > 1:
            length_s = windows[-1].end_s or 0.0
            audio_n = x.audio_16k.numel() if x.audio_16k is not None else 0
            media = "audio" if audio_n >= round(length_s * QWEN_SAMPLE_RATE_HZ) else "video"
            plan.notes.append(
                f"{media} of {length_s:.1f} s asked in {len(windows)} windows of at most {THINKER_WINDOW_S:g} s"
            )
        return plan

    sr = config.sample_rate
    window = config.mel.window_samples
    out_n = config.output_samples
    base = GenerationRequest(
        mllm_features=torch.empty(0, config.mllm.hidden_size),
        seed=x.seed,
        steps=x.steps,
        cfg_scale=float(x.cfg_scale),
        sync_features=x.sync_features,
    )
    plan = TaskPlan(task)
    source = None
    drop = 0
    trim = False
    if task in EDIT_TASKS:
        source = x.audio.float()
        total = round(x.duration_s * sr) if x.duration_s is not None else source.numel()
        total = min(total, source.numel())
    else:
        total = round(x.duration_s * sr) if x.duration_s is not None else out_n
    if task in (Task.TTS, Task.VOICE_CONVERSION):
        trim = True
        if x.voice_prompt is not None:
            # Keep the last seconds of the voice (the released model saw <= 6 s prompts), pad to a window.
            keep = x.voice_prompt[-round(VOICE_PROMPT_MAX_S * sr) :].float()
            base.audio_window = fit_window(keep, window)
            drop = keep.numel()
            if x.voice_prompt.numel() > keep.numel():
                plan.notes.append(f"voice prompt cut to its last {VOICE_PROMPT_MAX_S:g} s")
        base.transcript = _speech_text(x.transcript or "", x.voice_prompt_text)
        total = min(total, out_n - drop) if drop else total
    if task in VIDEO_TASKS and x.sync_features is None and not x.sync_from_video:
        plan.notes.append("no sync features given: the video conditions the thinker only")

    seg = plan_segments(total + drop, out_n, round(OVERLAP_S * sr))
    if seg.num_segments > 1 and task not in LONG_FORM_TASKS:
        raise ValueError(f"{task.value} produces at most {config.window_s:.2f} s; got {total / sr:.2f} s")
    video = x.video_frames if task in VIDEO_TASKS else None
    if video is not None:
        plan.video_frames, plan.video_fps = video, float(config.video_fps)
        video = window_frames(video, 0.0, VIDEO_WINDOW_S, config.video_fps)
    plan.encode = MLLMPrompt(
        text=generation_prompt(task, prompt=x.prompt, edit_target=x.edit_target), audio=None, video=video
    )
    plan.generation = GenerationPlan(
        task=task,
        base=base,
        num_segments=seg.num_segments,
        total_samples=total,
        fade_samples=seg.fade_samples,
        hop_samples=seg.hop_samples,
        source=source,
        drop_head_samples=drop,
        trim=trim,
        window_samples=window,
        output_samples=out_n,
        keep_source=x.keep_source,
        band_hz=config.output_band_hz,
        rate=sr,
        video=task in VIDEO_TASKS,
    )
    return plan


# ---------------------------------------------------------------------------------------- in-process


@dataclass
class TaskOutput:
    task: Task
    audio: torch.Tensor | None = None  # (C, N) float32 in [-1, 1] at sample_rate
    sample_rate: int = 44100
    text: str | None = None  # understanding answer (windows joined)
    notes: list[str] = field(default_factory=list)


class AudioOmniPipeline:
    """Both parts in one process: check inputs, encode, (understand), sample, decode, post-process."""

    def __init__(
        self, config: AudioOmniConfig, encoder: MLLMEncoder, sampler: SamplerPart, *, max_new_tokens: int = 512
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.sampler = sampler
        self.max_new_tokens = max_new_tokens  # cap on understanding answers

    @torch.no_grad()
    def __call__(self, inputs: TaskInputs | Sequence[TaskInputs]) -> list[TaskOutput]:
        items = [inputs] if isinstance(inputs, TaskInputs) else list(inputs)
        # 1. check inputs and plan every item before any compute, so one bad item fails fast
        plans = [plan_task(self.config, x) for x in items]
        outputs = [TaskOutput(p.task, sample_rate=self.config.sample_rate, notes=list(p.notes)) for p in plans]
        # 2. understanding: every window of every item in one batch, answers joined per item
        asks = [(i, w.request) for i, p in enumerate(plans) for w in p.understand_windows]
        if asks:
            answers = self.encoder.understand([r for _, r in asks], max_new_tokens=self.max_new_tokens)
            for i, p in enumerate(plans):
                if p.understand_windows:
                    outputs[i].text = p.join_answers([a for (j, _), a in zip(asks, answers, strict=True) if j == i])
        # 3. encode the thinker prompts of generating items, batched
        gen = [i for i, p in enumerate(plans) if p.generation is not None]
        if not gen:
            return outputs
        features = dict(zip(gen, self.encoder.encode([plans[i].encode for i in gen]), strict=True))
        # 4. sample segment by segment; items at the same segment index share one batch; a long
        # video item's later segments are prompted with the frames of their own span
        segs: dict[int, list[torch.Tensor]] = {i: [] for i in gen}
        for k in range(max(plans[i].generation.num_segments for i in gen)):
            live = [i for i in gen if k < plans[i].generation.num_segments]
            own = [i for i in live if k > 0 and plans[i].generation.video_per_segment]
            if own:
                features.update(zip(own, self.encoder.encode([plans[i].segment_prompt(k) for i in own]), strict=True))
            reqs = [plans[i].generation.request(k, features[i], segs[i][-1] if segs[i] else None) for i in live]
            for key in sorted({r.batch_key for r in reqs}):
                idx = [j for j, r in enumerate(reqs) if r.batch_key == key]
                audio = self.sampler.generate([reqs[j] for j in idx])  # (b, C, N)
                for j, a in zip(idx, audio, strict=True):
                    segs[live[j]].append(a)
        # 5. join segments and post-process
        for i in gen:
            outputs[i].audio = plans[i].generation.finish(segs[i])
        return outputs
