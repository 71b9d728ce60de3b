"""What each task takes: the inputs a job spec must and may give for its task (and edit op), and
the built-in chains (`reasoning: true`, voice conversion from speech) that change those rules.

Split out of `orchestrator.jobs` (which re-exports `TaskName`, `EditOp`, `BuiltinChain`); every
problem is reported against its own field as a pydantic `InitErrorDetails`, so `JobSpec` can merge
them with its field errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic_core import InitErrorDetails, PydanticCustomError

from model.prompts import MAX_REASONING_PROMPT_CHARS, REASONING_TASKS

__all__ = [
    "KEEP_SOURCE_OPS",
    "TASK_FIELDS",
    "TEXT_FIELDS",
    "URI_FIELDS",
    "VIDEO_EXTENSIONS",
    "VIDEO_FRAMES_EXTENSIONS",
    "BuiltinChain",
    "EditOp",
    "TaskName",
    "input_problem",
    "present",
    "task_input_problems",
]

# --------------------------------------------------------------------------- enums


class TaskName(StrEnum):
    UNDERSTAND = "understand"
    TEXT_TO_AUDIO = "text_to_audio"
    TEXT_TO_MUSIC = "text_to_music"
    TTS = "tts"
    VIDEO_TO_AUDIO = "video_to_audio"
    VIDEO_TO_MUSIC = "video_to_music"
    EDIT = "edit"
    VOICE_CONVERSION = "voice_conversion"


class EditOp(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    EXTRACT = "extract"
    STYLE_TRANSFER = "style_transfer"


# Edits whose result is a part of their source, so `keep_source` can apply.
KEEP_SOURCE_OPS = frozenset({EditOp.REMOVE, EditOp.EXTRACT})


# --------------------------------------------------------------------------- per-task inputs

TEXT_FIELDS = ("prompt", "source_prompt", "transcript", "voice_prompt_text")
URI_FIELDS = ("input_audio_uri", "voice_prompt_uri", "video_uri", "sync_feature_uri")
# What `video_uri` may name, by its ending (case-insensitive): a video file (decoded by
# `orchestrator.video_io`), or frames already decoded, uint8 (T, 3, H, W) in a tensor file.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".m4v")
VIDEO_FRAMES_EXTENSIONS = (".npy", ".safetensors")
# Fields whose presence depends on the task (checked field by field, so errors name the field).
TASK_FIELDS = ("op", *TEXT_FIELDS, *URI_FIELDS)

# task -> (required inputs, optional inputs); anything else given for that task is refused.
_TASK_INPUTS: dict[TaskName, tuple[frozenset[str], frozenset[str]]] = {
    TaskName.UNDERSTAND: (frozenset({"prompt"}), frozenset({"input_audio_uri", "video_uri"})),
    TaskName.TEXT_TO_AUDIO: (frozenset({"prompt"}), frozenset()),
    TaskName.TEXT_TO_MUSIC: (frozenset({"prompt"}), frozenset()),
    TaskName.TTS: (frozenset({"transcript"}), frozenset({"voice_prompt_uri", "voice_prompt_text"})),
    TaskName.VIDEO_TO_AUDIO: (frozenset({"video_uri"}), frozenset({"prompt", "sync_feature_uri"})),
    TaskName.VIDEO_TO_MUSIC: (frozenset({"video_uri"}), frozenset({"prompt", "sync_feature_uri"})),
    TaskName.EDIT: (frozenset({"op", "prompt", "input_audio_uri"}), frozenset()),
    # Voice conversion is the TTS path conditioned on a voice prompt: the prompt is required.
    TaskName.VOICE_CONVERSION: (
        frozenset({"transcript", "voice_prompt_uri"}),
        frozenset({"voice_prompt_text"}),
    ),
}


# Voice conversion without a transcript: the speech in `input_audio_uri` is transcribed first, as
# a built-in workflow (`orchestrator.workflows.expand_job`).
_VC_FROM_SPEECH_INPUTS = (frozenset({"input_audio_uri", "voice_prompt_uri"}), frozenset({"voice_prompt_text"}))
# `reasoning: true` applies to the tasks whose prompt describes a sound (`model.prompts`).
_REASONING_TASK_NAMES = frozenset(t.value for t in REASONING_TASKS)


class BuiltinChain(StrEnum):
    """A job spec that runs as a workflow of the system's own making (`JobSpec.chain`)."""

    REASONING = "reasoning"  # the thinker rewrites the prompt, then the generation uses it
    VOICE_CONVERSION_FROM_SPEECH = "voice_conversion_from_speech"  # transcribe, then speak


def _model_task_name(task: TaskName, op: EditOp | None) -> str:
    """The model's task name (`model.tasks.Task` value): edits are one task per op."""
    return f"edit_{op.value}" if task is TaskName.EDIT and op is not None else task.value


def _task_inputs(values: Mapping[str, Any], task: TaskName, op: EditOp | None) -> tuple[frozenset[str], frozenset[str]]:
    required, optional = _TASK_INPUTS[task]
    if task is TaskName.EDIT and op is EditOp.STYLE_TRANSFER:
        # "Change the sound of '{source_prompt}' to '{prompt}'."
        required = required | {"source_prompt"}
    speech = present(values.get("input_audio_uri")) and not present(values.get("transcript"))
    if task is TaskName.VOICE_CONVERSION and speech:
        required, optional = _VC_FROM_SPEECH_INPUTS
    if values.get("reasoning") is True:
        required = required | {"prompt"}  # the thinker rewrites it
    return required, optional


def present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def task_input_problems(values: Mapping[str, Any]) -> list[InitErrorDetails]:
    """Per-field errors for inputs the task needs but lacks, or gets but does not use.

    `values` is a validated spec's fields, or the raw input when other fields failed (then an
    unknown task or op simply skips the checks that depend on it)."""
    try:
        task = TaskName(str(values.get("task")))
    except ValueError:
        return []
    try:
        op = EditOp(values["op"]) if values.get("op") is not None else None
    except ValueError:
        op = EditOp.ADD  # an invalid op is reported on its own; check the rest as a plain edit
    required, optional = _task_inputs(values, task, op)
    problems: list[InitErrorDetails] = []
    for name in TASK_FIELDS:
        value = values.get(name)
        if not present(value):
            if name in required:
                message = f"required for task {task.value!r}"
                if name == "prompt" and values.get("reasoning") is True:
                    message += " with reasoning (it is the request the thinker rewrites)"
                problems.append(input_problem(name, message, None))
        elif name not in required and name not in optional:
            takes = ", ".join(sorted(required | optional))
            message = f"not used by task {task.value!r} (it takes: {takes})"
            if task is TaskName.VOICE_CONVERSION and name == "input_audio_uri":
                message = (
                    "not used by task 'voice_conversion' when a transcript is given (without a transcript, "
                    "the speech in input_audio_uri is transcribed first)"
                )
            problems.append(input_problem(name, message, value))
    video_uri = values.get("video_uri")
    known_ending = isinstance(video_uri, str) and video_uri.lower().endswith(VIDEO_EXTENSIONS + VIDEO_FRAMES_EXTENSIONS)
    if present(video_uri) and "video_uri" in required | optional and not known_ending:
        message = (
            f"must name a video file ({', '.join(VIDEO_EXTENSIONS)}) "
            f"or decoded frames ({', '.join(VIDEO_FRAMES_EXTENSIONS)})"
        )
        problems.append(input_problem("video_uri", message, video_uri))
    if values.get("reasoning") is True:
        problems.extend(_reasoning_problems(values, task, op))
    if values.get("keep_source") is True and not (task is TaskName.EDIT and op in KEEP_SOURCE_OPS):
        message = "keep_source applies to edits with op 'remove' or 'extract' (their result is a part of the source)"
        problems.append(input_problem("keep_source", message, True))
    return problems


def _reasoning_problems(values: Mapping[str, Any], task: TaskName, op: EditOp | None) -> list[InitErrorDetails]:
    if _model_task_name(task, op) not in _REASONING_TASK_NAMES:
        allowed = ", ".join(
            sorted({name.split("_")[0] if name.startswith("edit_") else name for name in _REASONING_TASK_NAMES})
        )
        message = f"reasoning applies to tasks whose prompt describes a sound ({allowed}), not {task.value!r}"
        return [input_problem("reasoning", message, True)]
    prompt = values.get("prompt")
    if isinstance(prompt, str) and len(prompt.strip()) > MAX_REASONING_PROMPT_CHARS:
        message = (
            f"has {len(prompt.strip())} characters; with reasoning the limit is {MAX_REASONING_PROMPT_CHARS} "
            "(the thinker's rewrite instruction shares the question's limit)"
        )
        return [input_problem("prompt", message, None)]
    return []


def input_problem(field: str, message: str, value: Any) -> InitErrorDetails:
    # The message goes in as a context value so that braces in it are never read as placeholders.
    error = PydanticCustomError("task_input", "{message}", {"message": message})
    return InitErrorDetails(type=error, loc=(field,), input=value)
