"""Per-task planning and the in-process pipeline on the tiny preset."""

from __future__ import annotations

import math

import pytest
import torch

from model.build import build_pipeline
from model.config import get_preset
from model.limits import THINKER_WINDOW_S
from model.longform import continuation_window, crossfade_join, plan_segments
from model.mllm import QWEN_MAX_AUDIO_S, check_understand_request
from model.pipeline import TaskInputs, plan_task
from model.prompts import ASR_INSTRUCTION, SYS_ASR, SYS_UNDERSTANDING
from model.tasks import Task

CFG = get_preset("tiny")
SR = CFG.sample_rate


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = build_pipeline(CFG, cache_dir=tmp_path_factory.mktemp("cache"))
    pipe.max_new_tokens = 8  # random weights never stop on their own
    return pipe


def _audio(seconds: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(round(seconds * SR), generator=torch.Generator().manual_seed(seed)) * 0.1


# ------------------------------------------------------------------------------------------ planning


def test_text_to_audio_plan_uses_the_released_prompt():
    plan = plan_task(CFG, TaskInputs(Task.TEXT_TO_AUDIO, prompt="A clock ticking."))
    assert plan.encode.text.endswith("A clock ticking..<|im_end|>\n<|im_start|>assistant\n")
    assert plan.generation.num_segments == 1 and plan.understand_windows == []
    assert plan.generation.total_samples == CFG.output_samples


def test_long_text_to_music_is_segmented_with_continuation():
    plan = plan_task(CFG, TaskInputs(Task.TEXT_TO_MUSIC, prompt="piano", duration_s=25.0, seed=7))
    gen = plan.generation
    assert gen.num_segments == math.ceil((25 * SR - CFG.output_samples) / (CFG.output_samples - SR)) + 1
    feats = torch.zeros(3, CFG.mllm.hidden_size)
    first = gen.request(0, feats, None)
    assert first.audio_window is None and first.seed == 7
    prev = torch.stack([torch.arange(CFG.output_samples, dtype=torch.float32)] * 2)
    second = gen.request(1, feats, prev)
    assert second.seed == 8
    # the continuation window is the END of the previous segment (the reference used its start)
    assert torch.equal(second.audio_window, prev[0, -CFG.mel.window_samples :])
    with pytest.raises(ValueError, match="previous"):
        gen.request(1, feats, None)


def test_edit_windows_follow_the_source_and_keep_its_length():
    src = _audio(14.0)
    plan = plan_task(CFG, TaskInputs(Task.EDIT_REMOVE, prompt="dog", audio=src))
    gen = plan.generation
    assert gen.total_samples == src.numel() and gen.num_segments == 2
    feats = torch.zeros(3, CFG.mllm.hidden_size)
    w1 = gen.request(1, feats, None).audio_window
    assert torch.equal(w1[: src.numel() - gen.hop_samples], src[gen.hop_samples :])
    assert "Remove the sound of 'dog' from the input audio." in plan.encode.text


def test_keep_source_masks_the_source_at_its_own_level():
    src = 0.25 * _audio(4.0)
    plan = plan_task(CFG, TaskInputs(Task.EDIT_EXTRACT, prompt="dog", audio=src, keep_source=True))
    gen = plan.generation
    assert gen.keep_source and gen.num_segments == 1
    window = torch.zeros(CFG.vae.io_channels, CFG.output_samples)
    window[:, : src.numel()] = src  # a model output equal to its source keeps all of it
    out = gen.finish([window])
    assert out.shape == (CFG.vae.io_channels, src.numel())
    assert torch.allclose(out[0], src, atol=1e-4)  # not peak-normalised
    # without keep_source the same output is peak-normalised
    plain = plan_task(CFG, TaskInputs(Task.EDIT_EXTRACT, prompt="dog", audio=src)).generation.finish([window])
    assert float(plain.abs().max()) == pytest.approx(1.0)


def test_voice_conversion_speaks_its_transcript_in_the_voice_prompts_voice():
    plan = plan_task(CFG, TaskInputs(Task.VOICE_CONVERSION, voice_prompt=_audio(8.0), transcript="  hello there "))
    assert plan.generation.base.transcript == "hello there" and plan.understand_windows == []
    # the voice prompt keeps its last 6 s, dropped from the output afterwards
    assert plan.generation.drop_head_samples == 6 * SR
    assert plan.notes == ["voice prompt cut to its last 6 s"]
    # without a transcript it is refused: the job system transcribes the speech in a step before
    with pytest.raises(ValueError, match=r"transcript \(of the speech to convert\) must be a non-empty string"):
        plan_task(CFG, TaskInputs(Task.VOICE_CONVERSION, voice_prompt=_audio(8.0), audio_16k=torch.randn(16000)))


# ------------------------------------------------------------------------------------------ understanding


def _speech_16k(seconds: float) -> torch.Tensor:
    return torch.randn(round(seconds * 16000), generator=torch.Generator().manual_seed(3)) * 0.1


def test_the_window_is_the_thinkers_own_limit():
    assert THINKER_WINDOW_S <= QWEN_MAX_AUDIO_S


@pytest.mark.parametrize("seconds", [0.5, THINKER_WINDOW_S])
def test_understanding_audio_within_the_window_is_one_question(seconds):
    audio = _speech_16k(seconds)
    plan = plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt="What is this?", audio_16k=audio))
    (window,) = plan.understand_windows
    assert window.request.audio is audio and window.request.system == SYS_UNDERSTANDING
    assert window.label == "" and plan.notes == [] and plan.generation is None and plan.encode is None
    assert plan.join_answers(["  A dog.  "]) == "A dog."


def test_long_understanding_asks_one_question_per_window_and_joins_with_spans():
    audio = _speech_16k(70.0)
    plan = plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt="What is this?", audio_16k=audio))
    windows = plan.understand_windows
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 70.0)]
    assert [w.label for w in windows] == ["[0-30 s]", "[30-60 s]", "[60-70 s]"]
    assert torch.equal(torch.cat([w.request.audio for w in windows]), audio)  # every sample, once, in order
    for w in windows:
        assert w.request.question == "What is this?"
        check_understand_request(w.request)  # each passes the thinker's own input checks
    assert plan.notes == ["audio of 70.0 s asked in 3 windows of at most 30 s"]
    assert plan.join_answers(["rain ", "thunder", ""]) == "[0-30 s] rain\n[30-60 s] thunder\n[60-70 s]"
    with pytest.raises(ValueError, match="expected 3 answers"):
        plan.join_answers(["rain"])


def test_odd_lengths_show_their_span_to_the_hundredth():
    plan = plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt="q", audio_16k=_speech_16k(30.5)))
    assert [w.label for w in plan.understand_windows] == ["[0-30 s]", "[30-30.5 s]"]


def test_the_asr_instruction_gets_its_system_prompt_and_one_running_transcript():
    plan = plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt=ASR_INSTRUCTION + " ", audio_16k=_speech_16k(45.0)))
    assert {w.request.system for w in plan.understand_windows} == {SYS_ASR}
    assert plan.join_answers(["hello there,", "general"]) == "hello there, general"
    short = plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt=ASR_INSTRUCTION, audio_16k=_speech_16k(2.0)))
    assert short.understand_windows[0].request.system == SYS_ASR


def test_a_video_beside_long_audio_is_cut_to_each_window():
    fps = CFG.video_fps
    video = torch.randint(0, 256, (40 * fps, 3, 8, 8), dtype=torch.uint8)  # 40 s of frames
    plan = plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt="q", audio_16k=_speech_16k(70.0), video_frames=video))
    first, second, third = (w.request.video for w in plan.understand_windows)
    assert torch.equal(first, video[: 30 * fps]) and torch.equal(second, video[30 * fps :])
    assert third is None  # the video ended before this window


def test_understanding_audio_over_the_input_limit_is_refused():
    with pytest.raises(ValueError, match=r"audio_16k lasts 300\.5 s; the limit is 300 s"):
        plan_task(CFG, TaskInputs(Task.UNDERSTAND, prompt="q", audio_16k=torch.zeros(round(300.5 * 16000))))


def test_tts_with_voice_prompt_text_joins_sentences():
    plan = plan_task(
        CFG, TaskInputs(Task.TTS, transcript="How are you?", voice_prompt=_audio(2.0), voice_prompt_text="Hi.")
    )
    assert plan.generation.base.transcript == "Hi. How are you?"


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt=""), "prompt must be a non-empty string"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="x" * 2001), "limit is 2000"),
        (TaskInputs(Task.TTS, transcript="x" * 2001), "transcript has 2001 characters; the limit is 2000"),
        (
            TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", duration_s=0),
            r"duration_s for text_to_audio must be in \(0, 300\]",
        ),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", duration_s=301), "must be in"),
        (TaskInputs(Task.TTS, transcript="hi", duration_s=30), r"duration_s for tts must be in \(0, 10\.03"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", steps=0), r"steps must be an int in \[1, 1000\]"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", cfg_scale=float("nan")), "cfg_scale"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", cfg_scale=0.5), r"cfg_scale must be a number in \[1, 30\]"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", cfg_scale=31.0), r"cfg_scale must be a number in \[1, 30\]"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", seed=-1), "seed must be an int"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", seed=2**32), r"seed must be an int in \[0, 4294967295\]"),
        (TaskInputs(Task.TTS, transcript="  "), "transcript must be a non-empty string"),
        (TaskInputs(Task.EDIT_ADD, prompt="dog"), r"audio \(the source\) is required"),
        (TaskInputs(Task.EDIT_ADD, prompt="dog", audio=torch.zeros(0)), "empty"),
        (TaskInputs(Task.EDIT_ADD, prompt="dog", audio=torch.full((100,), float("nan"))), "NaN or Inf"),
        (TaskInputs(Task.EDIT_ADD, prompt="dog", audio=torch.zeros(2, 100)), r"must be mono \(N,\)"),
        (TaskInputs(Task.EDIT_STYLE_TRANSFER, prompt="piano", audio=torch.zeros(100)), "edit_target"),
        (TaskInputs(Task.VIDEO_TO_AUDIO), "needs sync_features and/or video_frames"),
        (
            TaskInputs(Task.VIDEO_TO_AUDIO, sync_features=torch.zeros(10, 768)),
            r"sync_features must have shape \(240, 768\)",
        ),
        (TaskInputs(Task.UNDERSTAND, prompt=""), "question"),
        (TaskInputs(Task.VOICE_CONVERSION), "voice_prompt is required"),
        (TaskInputs(Task.VOICE_CONVERSION, voice_prompt=torch.zeros(100)), r"transcript \(of the speech to convert\)"),
        (TaskInputs(Task.EDIT_ADD, prompt="dog", audio=torch.zeros(100), keep_source=True), "keep_source applies"),
        (TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", keep_source=True), "edit_extract and edit_remove only"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(inputs, match):
    with pytest.raises(ValueError, match=match):
        plan_task(CFG, inputs)


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="known tasks: understand, text_to_audio"):
        Task.parse("karaoke")


# ------------------------------------------------------------------------------------------ long form


def test_crossfade_join_is_linear_and_exact_length():
    a, b = torch.ones(1, 10), torch.zeros(1, 10)
    out = crossfade_join([a, b], 4, 16)
    assert out.shape == (1, 16)
    torch.testing.assert_close(out[0, 6:10], torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    plan = plan_segments(25, 10, 2)
    assert plan.num_segments == 3 and plan.hop_samples == 8
    with pytest.raises(ValueError, match="overlap_samples"):
        plan_segments(25, 10, 10)
    assert continuation_window(torch.ones(2, 3), 5).tolist() == [0, 0, 1, 1, 1]


# ------------------------------------------------------------------------------------------ end to end


def test_pipeline_runs_every_task_family(pipe):
    items = [
        TaskInputs(Task.TEXT_TO_AUDIO, prompt="rain", steps=2, seed=1, duration_s=3.0),
        TaskInputs(Task.TEXT_TO_MUSIC, prompt="piano", steps=2, seed=2, duration_s=12.5),
        TaskInputs(Task.TTS, transcript="hello world", steps=2, seed=3),
        TaskInputs(Task.EDIT_EXTRACT, prompt="dog", audio=_audio(4.0), steps=2, seed=4),
        TaskInputs(Task.VIDEO_TO_MUSIC, sync_features=torch.randn(240, 768), steps=2, seed=5, duration_s=2.0),
    ]
    outs = pipe(items)
    assert [o.audio.shape[-1] for o in outs[:2]] == [3 * SR, round(12.5 * SR)]
    assert outs[3].audio.shape == (2, 4 * SR)
    for o in outs:
        assert o.audio.shape[0] == 2 and torch.isfinite(o.audio).all() and o.audio.abs().max() <= 1.0
    # a job's audio does not depend on what it was batched with (fixed-shape batches give bytes)
    alone = pipe(items[0])[0].audio
    torch.testing.assert_close(alone, outs[0].audio, atol=1e-5, rtol=0)


def test_understanding_returns_text_without_the_prompt(pipe):
    out = pipe(TaskInputs(Task.UNDERSTAND, prompt="What do you hear?", audio_16k=torch.randn(16000) * 0.1))[0]
    assert out.audio is None and isinstance(out.text, str) and "What do you hear?" not in out.text


def test_long_understanding_runs_every_window_in_one_batch(pipe):
    items = [
        TaskInputs(Task.UNDERSTAND, prompt="What do you hear?", audio_16k=_speech_16k(65.0)),
        TaskInputs(Task.UNDERSTAND, prompt="What do you hear?", audio_16k=_speech_16k(1.0)),
    ]
    long, short = pipe(items)
    lines = long.text.split("\n")
    assert [line.split(" s]")[0] + " s]" for line in lines] == ["[0-30 s]", "[30-60 s]", "[60-65 s]"]
    assert not short.text.startswith("[") and long.notes == ["audio of 65.0 s asked in 3 windows of at most 30 s"]
