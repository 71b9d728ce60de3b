"""The built-in chains through the job system (no Ray): a `reasoning: true` job and a voice
conversion from speech, each a plain manifest line that runs as a two-step workflow through Engine,
InProcessPools, a manifest source and a local folder (tiny preset, real model calls)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.prompts import ASR_INSTRUCTION, reasoning_question
from model.tasks import Task
from orchestrator.engine import Engine, EngineSettings
from orchestrator.jobs import JobStatus
from orchestrator.sources import JobOutcome, ManifestSource
from orchestrator.storage import InputPolicy, InputResolver, LocalStorage
from orchestrator.workflows import step_job_id
from workers.app import InProcessPools
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)


@pytest.fixture(scope="module")
def pools() -> InProcessPools:
    return InProcessPools.build(SETTINGS)


def _wav(path: Path, seconds: float, rate: int) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path.name


def _run(tmp: Path, line: dict, pools: InProcessPools) -> tuple[ManifestSource, dict[str, int], str]:
    """Run one manifest line to the end; the pools' call counts it caused and its workflow id."""
    manifest = tmp / "jobs.jsonl"
    manifest.write_text(json.dumps(line) + "\n")
    source = ManifestSource(manifest, max_attempts=1)
    storage = LocalStorage(tmp / "out")
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=tmp))
    engine = Engine(source, storage, inputs, pools, SETTINGS.load_config(), EngineSettings(claim_block_s=0.05))
    before = dict(pools.calls)
    engine.run(until_exhausted=True)
    (workflow_id,) = source.workflows
    return source, {k: pools.calls[k] - before[k] for k in pools.calls}, workflow_id


def _metadata(outcome: JobOutcome) -> dict:
    uri = outcome.extra["metadata_uri"]
    assert uri.startswith("file://")
    return json.loads(Path(uri.removeprefix("file://")).read_text())


def _succeeded(source: ManifestSource, job_id: str) -> JobOutcome:
    outcome = source.outcomes[job_id]
    assert outcome.status is JobStatus.SUCCEEDED and outcome.attempts == 1, outcome.error
    return outcome


def test_reasoning_job_runs_as_reason_then_generate(tmp_path: Path, pools: InProcessPools):
    line = {"task": "text_to_audio", "prompt": "a haunted house", "reasoning": True, "duration_s": 1.0, "steps": 2}
    source, calls, wid = _run(tmp_path, {**line, "seed": 3}, pools)

    reason_id, generate_id = step_job_id(wid, "reason"), step_job_id(wid, "generate")
    assert source.workflows[wid] == [reason_id, generate_id]
    # the rewrite, then one generation
    assert calls == {"understand": 1, "encode": 1, "sync_features": 0, "generate": 1}

    reason = _succeeded(source, reason_id)
    assert source.specs[reason_id].prompt == reasoning_question(Task.TEXT_TO_AUDIO, "a haunted house")
    rewritten = reason.extra["text"]
    assert rewritten.strip()

    generate = _succeeded(source, generate_id)
    meta = _metadata(generate)
    assert meta["workflow_id"] == wid and meta["step"] == "generate"
    assert meta["original_prompt"] == "a haunted house"  # as submitted
    assert meta["resolved"]["prompt"] == rewritten.strip()  # what conditioned the generation
    assert meta["spec"]["prompt"] == "{{reason.text}}" and not meta["spec"].get("reasoning")  # the step as planned
    audio = sf.info(io.BytesIO(Path(generate.result_uri.removeprefix("file://")).read_bytes()))
    assert audio.channels == 2 and abs(audio.duration - 1.0) < 1e-3


def test_voice_conversion_from_speech_transcribes_then_speaks(tmp_path: Path, pools: InProcessPools):
    """45 s of speech: the transcription is asked in two thinker windows and comes back as one
    running text (no span labels in a transcript); the conversion speaks it in the target voice."""
    line = {
        "task": "voice_conversion",
        "input_audio_uri": _wav(tmp_path / "speech.wav", 45.0, rate=16000),
        "voice_prompt_uri": _wav(tmp_path / "voice.wav", 2.0, rate=22050),
        "duration_s": 1.0,
        "steps": 2,
        "seed": 4,
    }
    source, calls, wid = _run(tmp_path, line, pools)

    transcribe_id, convert_id = step_job_id(wid, "transcribe"), step_job_id(wid, "convert")
    assert source.workflows[wid] == [transcribe_id, convert_id]
    assert calls == {"understand": 2, "encode": 1, "sync_features": 0, "generate": 1}

    transcribe = _succeeded(source, transcribe_id)
    spec = source.specs[transcribe_id]
    assert spec.task == "understand" and spec.prompt == ASR_INSTRUCTION and spec.input_audio_uri
    transcript = transcribe.extra["text"]
    assert transcript.strip() and "[0-30 s]" not in transcript
    assert _metadata(transcribe)["notes"] == ["audio of 45.0 s asked in 2 windows of at most 30 s"]

    convert = _succeeded(source, convert_id)
    meta = _metadata(convert)
    assert meta["step"] == "convert" and meta["resolved"]["transcript"] == transcript.strip()
    assert meta["spec"]["transcript"] == "{{transcribe.text}}" and "input_audio_uri" not in meta["spec"]
    audio = sf.info(io.BytesIO(Path(convert.result_uri.removeprefix("file://")).read_bytes()))
    assert audio.channels == 2 and audio.duration > 0
