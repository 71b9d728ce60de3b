"""The text the frozen MLLM (Qwen2.5-Omni thinker) reads, per task.

The system strings and user templates below are data: the DiT was trained on the thinker's hidden
states for exactly these strings, so they must match the released model byte for byte (spec §5.2).
Generating tasks hand the thinker an already chat-formatted string (`generation_prompt`); the
understanding path instead builds a message list for the processor's chat template
(`understanding_conversation`).
"""

from __future__ import annotations

from typing import Any

from model.limits import MAX_PROMPT_CHARS
from model.tasks import Task

SYS_T2A = (
    "You are a professional sound designer. Your task is to synthesize a high-fidelity audio clip "
    "based on the following text description."
)
SYS_T2M = (
    "You are a versatile music producer and composer. Your goal is to create a high-quality, original "
    "piece of music based on the user's request. Focus on melody, harmony, rhythm, and instrumentation "
    "to capture the desired mood."
)
SYS_TTS = "Generate speech from the input text."
SYS_V2A = "You are a professional foley artist. Understand this video and create the sounds for this video."
SYS_V2M = (
    "You are a versatile music producer. Create a high-quality background music track that fits the "
    "style, energy, and mood of this video."
)
SYS_EDIT = (
    "You are a professional sound engineer. Your task is to precisely edit the provided audio based on "
    "the user's instructions."
)
SYS_UNDERSTANDING = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)

EDIT_ADD_TEMPLATE = "Add the sound of '{desc}' to the input audio."
EDIT_REMOVE_TEMPLATE = "Remove the sound of '{desc}' from the input audio."
EDIT_EXTRACT_TEMPLATE = "Extract the sound of '{desc}' from the input audio."
EDIT_STYLE_TRANSFER_TEMPLATE = "Change the sound of '{source}' to '{target}'."

# Transcribing a voice prompt that came without its text (spec §5.3, gradio path).
SYS_ASR = "You are a speech recognition assistant. Transcribe the given audio accurately."
ASR_INSTRUCTION = "Please transcribe the speech in this audio clip. Output only the transcription text, nothing else."
ASR_MAX_NEW_TOKENS = 256

# Knowledge-augmented generation (`reasoning: true`): before generating, the thinker rewrites the
# request into one concrete description, and that answer becomes the generating step's prompt. These
# strings are this system's own (the released model was not trained on them): what to describe per
# task, then what the answer must look like, then the request.
_REASONING_WHAT = {
    Task.TEXT_TO_AUDIO: (
        "one concrete description of the sound to generate. Name the sound sources (voices included), "
        "what they do, and the place and distance they are heard from"
    ),
    Task.TEXT_TO_MUSIC: (
        "one concrete description of the music to generate. Name the genre, the instruments or voices, "
        "the tempo, and the mood"
    ),
    Task.VIDEO_TO_AUDIO: (
        "one concrete description of the sound that should accompany the video. Name the sound "
        "sources (voices included), what they do, and the place they are heard in"
    ),
    Task.VIDEO_TO_MUSIC: (
        "one concrete description of the background music for the video. Name the genre, the "
        "instruments, the tempo, and the mood"
    ),
}
_REASONING_SOUND = (
    "one concrete name of {sound}, as a short phrase such as 'a dog barking nearby'. Name the source and what it does"
)
# An edit's `prompt` names the sound to add / remove / extract, or a style transfer's target (the
# job's `prompt`; its `source_prompt` is not rewritten).
_REASONING_EDIT_SOUNDS = {
    Task.EDIT_ADD: "the sound to add to a recording",
    Task.EDIT_REMOVE: "the sound to remove from a recording",
    Task.EDIT_EXTRACT: "the sound to extract from a recording",
    Task.EDIT_STYLE_TRANSFER: "the sound that a sound in a recording should be changed into",
}
REASONING_TASKS = (*_REASONING_WHAT, *_REASONING_EDIT_SOUNDS)  # the tasks `reasoning: true` applies to
_REASONING_FORM = {
    "sentence": "one sentence of at most 40 words, with no full stop at its end",
    "phrase": "one phrase of at most 12 words, with no full stop at its end",
}
REASONING_TEMPLATE = (
    "Rewrite the request below as {what}. Use what you know about how such things really sound, and "
    "keep every detail the request gives. Answer in English with the description only: {form}, "
    "without quotation marks, preamble or explanation.\nRequest: {request}"
)


def _reasoning_parts(task: Task) -> tuple[str, str]:
    if task in _REASONING_WHAT:
        return _REASONING_WHAT[task], _REASONING_FORM["sentence"]
    if task in _REASONING_EDIT_SOUNDS:
        return _REASONING_SOUND.format(sound=_REASONING_EDIT_SOUNDS[task]), _REASONING_FORM["phrase"]
    allowed = ", ".join(t.value for t in REASONING_TASKS)
    raise ValueError(f"reasoning applies to tasks whose prompt describes a sound ({allowed}), not {task.value}")


def reasoning_question(task: Task | str, prompt: str) -> str:
    """The question the thinker answers before a `reasoning: true` generation (an `understand` step
    without media): rewrite `prompt`, the request of a `task` job, into one concrete description.
    The answer is used as the generating step's prompt.

    Refused (ValueError) for a task whose prompt the thinker does not read as a description (TTS and
    voice conversion speak a transcript; understanding generates nothing), for an empty prompt, and
    for a prompt over MAX_REASONING_PROMPT_CHARS (the question must stay a valid understanding prompt).
    """
    if not isinstance(task, Task):
        task = Task.parse(str(task))
    what, form = _reasoning_parts(task)
    request = prompt.strip() if isinstance(prompt, str) else ""
    if not request:
        raise ValueError(f"reasoning on {task.value} needs a non-empty prompt to rewrite")
    if len(request) > MAX_REASONING_PROMPT_CHARS:
        raise ValueError(
            f"prompt has {len(request)} characters; with reasoning the limit is {MAX_REASONING_PROMPT_CHARS} "
            "(the rewrite instruction shares the question's limit)"
        )
    return REASONING_TEMPLATE.format(what=what, form=form, request=request)


# The longest instruction around the request; the whole question stays within MAX_PROMPT_CHARS.
MAX_REASONING_PROMPT_CHARS = MAX_PROMPT_CHARS - max(
    len(REASONING_TEMPLATE.format(what=what, form=form, request=""))
    for what, form in (_reasoning_parts(t) for t in REASONING_TASKS)
)

# Markers of the Qwen2.5-Omni chat format; the processor expands the media tokens to one token per
# media frame before tokenizing.
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VIDEO_MARKER = "<|vision_bos|><|VIDEO|><|vision_eos|>"
AUDIO_MARKER = "<|audio_bos|><|AUDIO|><|audio_eos|>"

_EDIT_TEMPLATES = {
    Task.EDIT_ADD: EDIT_ADD_TEMPLATE,
    Task.EDIT_REMOVE: EDIT_REMOVE_TEMPLATE,
    Task.EDIT_EXTRACT: EDIT_EXTRACT_TEMPLATE,
}


def wrap(system: str, user: str) -> str:
    """One system turn, one user turn, then the opened assistant turn (the thinker reads no answer)."""
    return f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


def wrap_video(system: str, user: str) -> str:
    """Like `wrap`, with the video markers on a new line after the user text (even an empty one)."""
    return f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user}\n{VIDEO_MARKER}{IM_END}\n{IM_START}assistant\n"


def generation_prompt(task: Task, *, prompt: str = "", edit_target: str | None = None) -> str:
    """The chat-formatted thinker text that conditions a generating task (spec §5.1).

    `prompt` is the description (T2A, T2M, V2A, V2M), the sound to add / remove / extract (edits), or
    the source sound of a style transfer, whose target is `edit_target`. TTS and voice conversion give
    the thinker an empty user turn: the transcript goes to the speech conditioner instead.
    """
    if not isinstance(task, Task):
        task = Task.parse(str(task))
    if task is Task.TEXT_TO_AUDIO:
        return wrap(SYS_T2A, prompt + ".")  # the reference always appends "." (spec §8 item 12)
    if task is Task.TEXT_TO_MUSIC:
        return wrap(SYS_T2M, prompt + ".")
    if task in (Task.TTS, Task.VOICE_CONVERSION):
        return wrap(SYS_TTS, "")
    if task is Task.VIDEO_TO_AUDIO:
        return wrap_video(SYS_V2A, prompt)
    if task is Task.VIDEO_TO_MUSIC:
        return wrap_video(SYS_V2M, prompt)
    if task in _EDIT_TEMPLATES:
        if not prompt.strip():
            raise ValueError(f"task {task.value} needs a non-empty sound description, got {prompt!r}")
        return wrap(SYS_EDIT, _EDIT_TEMPLATES[task].format(desc=prompt))
    if task is Task.EDIT_STYLE_TRANSFER:
        if not prompt.strip() or edit_target is None or not edit_target.strip():
            raise ValueError(
                "task edit_style_transfer needs a non-empty source (prompt) and target (edit_target), "
                f"got prompt={prompt!r}, edit_target={edit_target!r}"
            )
        return wrap(SYS_EDIT, EDIT_STYLE_TRANSFER_TEMPLATE.format(source=prompt, target=edit_target))
    generating = ", ".join(t.value for t in Task if t.generates_audio)
    raise ValueError(f"task {task.value!r} does not generate audio; generating tasks: {generating}")


def understanding_conversation(
    question: str, *, has_audio: bool, has_video: bool, system: str = SYS_UNDERSTANDING
) -> list[dict[str, Any]]:
    """The message list for the processor's chat template (spec §5.6).

    The user turn holds the video, then the audio, then the question (only those given, in that
    order). Media items carry no data: the template only places their markers, and the media go to
    the processor call separately.
    """
    content: list[dict[str, Any]] = []
    if has_video:
        content.append({"type": "video"})
    if has_audio:
        content.append({"type": "audio"})
    content.append({"type": "text", "text": question})
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": content},
    ]


def asr_conversation() -> list[dict[str, Any]]:
    """The message list that asks the thinker to transcribe one audio clip (a voice prompt)."""
    return understanding_conversation(ASR_INSTRUCTION, has_audio=True, has_video=False, system=SYS_ASR)


def with_audio_marker(text: str) -> str:
    """Put the audio markers at the end of the user turn of a `wrap`/`wrap_video` text, where the
    reference UI puts them when it gives the thinker an audio (spec §5.1)."""
    tail = f"{IM_END}\n{IM_START}assistant\n"
    if not text.endswith(tail):
        raise ValueError(f"text must end with the opened assistant turn {tail!r}, got ...{text[-40:]!r}")
    return text[: -len(tail)] + AUDIO_MARKER + tail
