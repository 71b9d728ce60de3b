"""The thinker's prompt strings must match the released model's byte for byte (spec §5.2)."""

from __future__ import annotations

import pytest

from model import prompts
from model.prompts import generation_prompt, understanding_conversation, with_audio_marker, wrap, wrap_video
from model.tasks import Task

# Retyped from the spec, independently of model/prompts.py.
SPEC_SYSTEM_STRINGS = {
    "SYS_T2A": "You are a professional sound designer. Your task is to synthesize a high-fidelity audio "
    "clip based on the following text description.",
    "SYS_T2M": "You are a versatile music producer and composer. Your goal is to create a high-quality, "
    "original piece of music based on the user's request. Focus on melody, harmony, rhythm, and "
    "instrumentation to capture the desired mood.",
    "SYS_TTS": "Generate speech from the input text.",
    "SYS_V2A": "You are a professional foley artist. Understand this video and create the sounds for this video.",
    "SYS_V2M": "You are a versatile music producer. Create a high-quality background music track that fits "
    "the style, energy, and mood of this video.",
    "SYS_EDIT": "You are a professional sound engineer. Your task is to precisely edit the provided audio "
    "based on the user's instructions.",
    "SYS_UNDERSTANDING": "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
    "capable of perceiving auditory and visual inputs, as well as generating text and speech.",
    "SYS_ASR": "You are a speech recognition assistant. Transcribe the given audio accurately.",
    "ASR_INSTRUCTION": "Please transcribe the speech in this audio clip. Output only the transcription "
    "text, nothing else.",
}

HEAD = "<|im_start|>system\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", sorted(SPEC_SYSTEM_STRINGS))
def test_system_strings_match_spec(name):
    assert getattr(prompts, name) == SPEC_SYSTEM_STRINGS[name]


def test_wrappers():
    assert wrap("S", "U") == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU" + TAIL
    assert wrap_video("S", "U") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU\n<|vision_bos|><|VIDEO|><|vision_eos|>" + TAIL
    )


def test_text_to_audio_appends_a_period_even_after_one():
    text = generation_prompt(Task.TEXT_TO_AUDIO, prompt="A clock ticking.")
    assert text == (HEAD + SPEC_SYSTEM_STRINGS["SYS_T2A"] + "<|im_end|>\n<|im_start|>user\nA clock ticking.." + TAIL)
    assert text.endswith("A clock ticking..<|im_end|>\n<|im_start|>assistant\n")


def test_text_to_music():
    text = generation_prompt(Task.TEXT_TO_MUSIC, prompt="Calm piano")
    assert text == HEAD + SPEC_SYSTEM_STRINGS["SYS_T2M"] + "<|im_end|>\n<|im_start|>user\nCalm piano." + TAIL


@pytest.mark.parametrize("task", [Task.TTS, Task.VOICE_CONVERSION])
def test_speech_tasks_give_the_thinker_an_empty_user_turn(task):
    text = generation_prompt(task, prompt="this transcript is not for the thinker")
    assert text == HEAD + "Generate speech from the input text.<|im_end|>\n<|im_start|>user\n" + TAIL


def test_video_tasks():
    v2a = generation_prompt(Task.VIDEO_TO_AUDIO)
    assert v2a == (
        HEAD + SPEC_SYSTEM_STRINGS["SYS_V2A"] + "<|im_end|>\n<|im_start|>user\n"
        "\n<|vision_bos|><|VIDEO|><|vision_eos|>" + TAIL
    )
    v2m = generation_prompt(Task.VIDEO_TO_MUSIC, prompt="epic")
    assert v2m == (
        HEAD + SPEC_SYSTEM_STRINGS["SYS_V2M"] + "<|im_end|>\n<|im_start|>user\n"
        "epic\n<|vision_bos|><|VIDEO|><|vision_eos|>" + TAIL
    )


@pytest.mark.parametrize(
    ("task", "user"),
    [
        (Task.EDIT_ADD, "Add the sound of 'a dog barking' to the input audio."),
        (Task.EDIT_REMOVE, "Remove the sound of 'a dog barking' from the input audio."),
        (Task.EDIT_EXTRACT, "Extract the sound of 'a dog barking' from the input audio."),
    ],
)
def test_edit_templates(task, user):
    text = generation_prompt(task, prompt="a dog barking")
    assert text == HEAD + SPEC_SYSTEM_STRINGS["SYS_EDIT"] + "<|im_end|>\n<|im_start|>user\n" + user + TAIL


def test_style_transfer():
    text = generation_prompt(Task.EDIT_STYLE_TRANSFER, prompt="piano", edit_target="guitar")
    assert text == (
        HEAD + SPEC_SYSTEM_STRINGS["SYS_EDIT"] + "<|im_end|>\n<|im_start|>user\n"
        "Change the sound of 'piano' to 'guitar'." + TAIL
    )


def test_bad_generation_requests():
    with pytest.raises(ValueError, match="does not generate audio"):
        generation_prompt(Task.UNDERSTAND, prompt="what is this?")
    with pytest.raises(ValueError, match="edit_add"):
        generation_prompt(Task.EDIT_ADD, prompt="  ")
    with pytest.raises(ValueError, match="edit_target"):
        generation_prompt(Task.EDIT_STYLE_TRANSFER, prompt="piano")
    with pytest.raises(ValueError, match="unknown task"):
        generation_prompt("no_such_task")  # type: ignore[arg-type]


def test_understanding_conversation_orders_video_audio_text():
    conversation = understanding_conversation("What is it?", has_audio=True, has_video=True)
    assert conversation[0] == {
        "role": "system",
        "content": [{"type": "text", "text": SPEC_SYSTEM_STRINGS["SYS_UNDERSTANDING"]}],
    }
    assert conversation[1]["role"] == "user"
    assert [item["type"] for item in conversation[1]["content"]] == ["video", "audio", "text"]
    assert conversation[1]["content"][-1]["text"] == "What is it?"
    text_only = understanding_conversation("Hi", has_audio=False, has_video=False, system="S")
    assert text_only[1]["content"] == [{"type": "text", "text": "Hi"}]
    asr = prompts.asr_conversation()
    assert asr[0]["content"][0]["text"] == SPEC_SYSTEM_STRINGS["SYS_ASR"]
    assert asr[1]["content"] == [
        {"type": "audio"},
        {"type": "text", "text": SPEC_SYSTEM_STRINGS["ASR_INSTRUCTION"]},
    ]


def test_audio_marker_goes_before_the_assistant_turn():
    text = with_audio_marker(wrap("S", "U"))
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|audio_bos|><|AUDIO|><|audio_eos|>" + TAIL)
    with pytest.raises(ValueError, match="assistant turn"):
        with_audio_marker("no chat format")


# ---------------------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize("task", prompts.REASONING_TASKS)
def test_reasoning_question_asks_for_one_description_and_ends_with_the_request(task):
    question = prompts.reasoning_question(task, "  a storm at sea  ")
    assert question.endswith("\nRequest: a storm at sea")
    assert question.startswith("Rewrite the request below as one concrete ")
    assert "description only" in question and "no full stop at its end" in question
    assert len(question) <= prompts.MAX_PROMPT_CHARS
    # accepted by task name too
    assert prompts.reasoning_question(task.value, "a storm at sea") == question


def test_reasoning_question_differs_by_kind_of_output():
    t2a = prompts.reasoning_question(Task.TEXT_TO_AUDIO, "rain")
    t2m = prompts.reasoning_question(Task.TEXT_TO_MUSIC, "rain")
    edit = prompts.reasoning_question(Task.EDIT_REMOVE, "rain")
    assert "sound to generate" in t2a and "one sentence" in t2a
    assert "music to generate" in t2m and "tempo" in t2m
    assert "remove from a recording" in edit and "one phrase" in edit  # it is pasted into the edit template


@pytest.mark.parametrize("task", [Task.TTS, Task.VOICE_CONVERSION, Task.UNDERSTAND])
def test_reasoning_is_refused_where_the_prompt_is_not_a_description(task):
    with pytest.raises(ValueError, match=f"reasoning applies to tasks .* not {task.value}"):
        prompts.reasoning_question(task, "hello")


def test_reasoning_question_refuses_empty_and_over_long_requests():
    with pytest.raises(ValueError, match="non-empty prompt"):
        prompts.reasoning_question(Task.TEXT_TO_AUDIO, "   ")
    limit = prompts.MAX_REASONING_PROMPT_CHARS
    longest = max(
        len(prompts.reasoning_question(t, "x" * limit)) for t in prompts.REASONING_TASKS
    )  # the limit is tight: the longest instruction fills the question exactly
    assert longest == prompts.MAX_PROMPT_CHARS
    with pytest.raises(ValueError, match=f"{limit + 1} characters; with reasoning the limit is {limit}"):
        prompts.reasoning_question(Task.TEXT_TO_AUDIO, "x" * (limit + 1))
