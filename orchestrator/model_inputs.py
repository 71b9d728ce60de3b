"""From a job spec to the model's inputs: the one adapter between the job vocabulary and the model's.

- The task vocabulary is mapped here and only here: the job schema says `edit` + `op`, the model
  says `edit_add`, `edit_remove`, ...; every other task has the same name on both sides.
- Inputs are read through the process's `InputReader` (the `InputResolver`, which owns every rule
  about who may read what), decoded by `orchestrator.audio_io.decode_audio` (the decoder and limits
  the upload route uses too) at the rates the model expects: `config.sample_rate` for audio the
  model generates from, the thinker's own rate for audio it listens to.
- `video_uri` names a video file (`.mp4`, `.mov`, `.mkv`, `.webm`, `.m4v`: probed and decoded by
  `orchestrator.video_io`, the checks the upload route runs) or pre-decoded frames (`.npy` /
  `.safetensors`, uint8 (T, 3, H, W) at the config's `video_fps`). A video file's thinker frames are
  sampled at `video_fps`, 224 x 224; the file itself stays open (`LoadedInputs.video`) so the engine
  can sample each segment's frames for sync features and mux the result.
- Limits come from `model.limits`; a bad input is a `PermanentError` naming the input and the rule.

torch and the model's torch modules are imported inside `load_inputs`, so importing this module
stays light.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from model.limits import MAX_INPUT_AUDIO_S, MAX_INPUT_VIDEO_S
from model.tasks import VIDEO_TASKS, Task
from orchestrator.audio_io import decode_audio
from orchestrator.errors import PermanentError
from orchestrator.jobs import EditOp, JobSpec, OutputFormat, TaskName
from orchestrator.task_inputs import VIDEO_EXTENSIONS, VIDEO_FRAMES_EXTENSIONS
from orchestrator.video_io import VideoClip, is_video_name
from orchestrator.video_mux import check_muxable

if TYPE_CHECKING:
    import torch

    from model.config import AudioOmniConfig
    from model.pipeline import TaskInputs

__all__ = [
    "EDIT_TASKS",
    "MAX_INPUT_BYTES",
    "InputLimits",
    "InputReader",
    "LoadedInputs",
    "load_inputs",
    "model_task",
]

MAX_INPUT_BYTES = 256 * 1024 * 1024  # one input file, before decoding

# The job schema's edit operations -> the model's edit tasks.
EDIT_TASKS: dict[EditOp, Task] = {
    EditOp.ADD: Task.EDIT_ADD,
    EditOp.REMOVE: Task.EDIT_REMOVE,
    EditOp.EXTRACT: Task.EDIT_EXTRACT,
    EditOp.STYLE_TRANSFER: Task.EDIT_STYLE_TRANSFER,
}


class InputReader(Protocol):
    """Reads one input URI for a tenant, enforcing every input rule (`InputResolver`)."""

    def read(self, uri: str, *, tenant: str, max_bytes: int) -> bytes: ...


@dataclass(frozen=True)
class InputLimits:
    """How much input one job may bring: bytes per file, and seconds per audio or video input."""

    max_bytes: int = MAX_INPUT_BYTES
    max_audio_s: float = MAX_INPUT_AUDIO_S
    max_video_s: float = MAX_INPUT_VIDEO_S

    def __post_init__(self) -> None:
        if not 1 <= self.max_bytes <= 4 * 1024**3:
            raise ValueError(f"max_input_bytes {self.max_bytes} is invalid: expected an integer in [1, 4 GiB]")
        if not 0 < self.max_audio_s <= MAX_INPUT_AUDIO_S:
            raise ValueError(
                f"max_input_audio_s {self.max_audio_s:g} is invalid: expected seconds in (0, {MAX_INPUT_AUDIO_S:g}]"
            )
        if not 0 < self.max_video_s <= MAX_INPUT_VIDEO_S:
            raise ValueError(
                f"max_input_video_s {self.max_video_s:g} is invalid: expected seconds in (0, {MAX_INPUT_VIDEO_S:g}]"
            )


@dataclass(frozen=True)
class LoadedInputs:
    """A job's model inputs, and its input video file when `video_uri` named one."""

    inputs: TaskInputs
    video: VideoClip | None = None


def model_task(spec: JobSpec) -> Task:
    """The model task a spec asks for (`edit` + `op` -> `edit_<op>`; the rest keep their name)."""
    if spec.task is TaskName.EDIT:
        if spec.op is None:  # the schema requires an op for edits; a hand-built spec may lack it
            raise PermanentError("an edit needs op: one of " + ", ".join(op.value for op in EditOp))
        return EDIT_TASKS[spec.op]
    return Task(spec.task.value)


def load_inputs(
    spec: JobSpec,
    *,
    seed: int,
    tenant: str,
    inputs: InputReader,
    config: AudioOmniConfig,
    limits: InputLimits | None = None,
) -> LoadedInputs:
    """Read and decode a job's inputs into `model.pipeline.TaskInputs` (a bad input: PermanentError).

    `seed` is the job's effective seed (the spec's, or one derived from the job id); `tenant` is
    whose rules apply to the input URIs.
    """
    import torch

    from model.mllm import QWEN_SAMPLE_RATE_HZ
    from model.pipeline import VIDEO_FRAME_SIZE, VIDEO_WINDOW_S, TaskInputs

    limits = limits or InputLimits()

    def read(uri: str) -> bytes:
        return inputs.read(uri, tenant=tenant, max_bytes=limits.max_bytes)

    def audio(uri: str, rate: int, what: str) -> torch.Tensor:
        samples = decode_audio(read(uri), sample_rate=rate, max_duration_s=limits.max_audio_s, what=what)
        return torch.from_numpy(samples)

    task = model_task(spec)
    x = TaskInputs(
        task=task, steps=spec.steps, cfg_scale=float(spec.cfg_scale), seed=seed, keep_source=spec.keep_source
    )
    x.prompt = spec.prompt or ""
    if task is not Task.UNDERSTAND:
        x.duration_s = spec.duration_s
    if task is Task.EDIT_STYLE_TRANSFER:
        x.prompt, x.edit_target = spec.source_prompt or "", spec.prompt
    x.transcript = spec.transcript
    x.voice_prompt_text = spec.voice_prompt_text
    if spec.input_audio_uri:
        if task is Task.UNDERSTAND:
            x.audio_16k = audio(spec.input_audio_uri, QWEN_SAMPLE_RATE_HZ, "input audio")
        else:
            x.audio = audio(spec.input_audio_uri, config.sample_rate, "input audio")
    if spec.voice_prompt_uri:
        x.voice_prompt = audio(spec.voice_prompt_uri, config.sample_rate, "voice prompt")
    clip = None
    if spec.video_uri and is_video_name(spec.video_uri):
        clip = VideoClip.open(read(spec.video_uri), max_duration_s=limits.max_video_s, what="input video")
        if spec.output_format is OutputFormat.MP4:
            check_muxable(clip.info.codec, "input video")
        # The thinker's frames: the whole video to understand; what the generation's windows read.
        end_s = clip.info.duration_s
        if x.duration_s is not None:
            end_s = min(end_s, x.duration_s + VIDEO_WINDOW_S)
        x.video_frames = clip.frames(0.0, end_s, fps=config.video_fps, size=VIDEO_FRAME_SIZE)
        x.sync_from_video = task in VIDEO_TASKS and not spec.sync_feature_uri
    elif spec.video_uri:
        if not spec.video_uri.lower().endswith(VIDEO_FRAMES_EXTENSIONS):
            videos = ", ".join(VIDEO_EXTENSIONS)
            raise PermanentError(
                f"video {spec.video_uri}: expected a video file ({videos}) or frames in a .npy or .safetensors file"
            )
        frames = _load_array(read(spec.video_uri), spec.video_uri, "video frames")
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise PermanentError(
                f"video {spec.video_uri} must be uint8 frames (T, 3, H, W), "
                f"got {str(frames.dtype).removeprefix('torch.')} {tuple(frames.shape)}"
            )
        x.video_frames = frames
    if spec.sync_feature_uri:
        x.sync_features = _load_array(read(spec.sync_feature_uri), spec.sync_feature_uri, "sync features").float()
    return LoadedInputs(x, clip)


def _load_array(data: bytes, uri: str, what: str) -> torch.Tensor:
    """A tensor from `.npy` or `.safetensors` bytes (the first tensor in the file)."""
    import numpy as np
    import torch

    try:
        ending = uri.lower()
        if ending.endswith(".safetensors"):
            from safetensors.torch import load as load_st

            tensors = load_st(data)
            if not tensors:
                raise PermanentError(f"{what} {uri} holds no tensors")
            return next(iter(tensors.values()))
        if ending.endswith(".npy"):
            return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
    except PermanentError:
        raise
    except Exception as exc:
        raise PermanentError(f"{what} {uri} is not a readable tensor file: {_reason(exc)}") from None
    raise PermanentError(f"{what} {uri}: expected a .npy or .safetensors file")


def _reason(exc: Exception) -> str:
    """The exception's message without anything that looks like a Python object repr."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if " object at 0x" not in text else type(exc).__name__
