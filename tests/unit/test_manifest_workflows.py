"""Workflow lines in a manifest (`audio-omni batch`'s embedded mode): `ManifestSource` holds a step
until the steps it uses have succeeded, hands their outputs to the engine, and ends the rest of a
workflow when a step fails; and real two- and three-step workflows run through the engine with the
tiny preset in-process (no Ray), each step reading the previous step's stored result."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from orchestrator.engine import Engine, EngineSettings, JobResult
from orchestrator.errors import PermanentError, RetryableError
from orchestrator.jobs import JobStatus
from orchestrator.sources import ClaimedJob, ManifestSource
from orchestrator.storage import InputPolicy, InputResolver, LocalStorage
from workers.app import InProcessPools
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)

DESCRIBE_THEN_SCORE = {
    "steps": [
        {"id": "describe", "task": "understand", "prompt": "What do you hear?", "input_audio_uri": "clip.wav"},
        {
            "id": "score",
            "task": "text_to_audio",
            "prompt": "A soundtrack for: {{describe.text}}",
            "duration_s": 1.0,
            "steps": 2,
        },
    ]
}


def _write(tmp: Path, name: str, lines: list[object]) -> Path:
    path = tmp / f"{name}.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def _clip(path: Path, seconds: float = 1.5, rate: int = 22050) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)


def _ids(jobs: list[ClaimedJob]) -> list[str]:
    return sorted(j.job_id for j in jobs)


# --------------------------------------------------------------------------- the source on its own


def test_a_step_is_held_until_the_step_it_uses_succeeds(tmp_path: Path):
    plain = {"task": "text_to_audio", "prompt": "wind"}
    source = ManifestSource(_write(tmp_path, "m", [plain, DESCRIBE_THEN_SCORE]), max_attempts=1)
    job_id, wf_id = f"{source.batch_id}-0", f"{source.batch_id}-1"
    describe, score = f"{wf_id}-describe", f"{wf_id}-score"
    assert source.total == 3 and source.workflows == {wf_id: [describe, score]}
    assert source.specs[score].workflow is not None and source.specs[score].workflow.uses == {"describe": describe}
    # The relative input path is the manifest folder's; the reference is left alone.
    assert source.specs[describe].input_audio_uri == str((tmp_path / "clip.wav").resolve())
    assert source.local_inputs() == [(tmp_path / "clip.wav").resolve()]

    first = source.claim(10, 0)
    assert _ids(first) == sorted([job_id, describe]) and source.claim(10, 0) == []
    assert not source.exhausted()
    held = {j.job_id: j for j in first}
    source.ack_success(held[job_id], result_uri="file:///r/0.wav", timings={}, extra={})
    source.ack_success(held[describe], result_uri="file:///r/d.json", timings={}, extra={"text": "a busy street"})

    (second,) = source.claim(10, 0)
    assert second.job_id == score
    outputs = source.step_outputs(second)
    assert outputs["describe"].text == "a busy street"
    assert outputs["describe"].audio_uri is None  # an understanding step's result is its metadata JSON
    source.ack_success(second, result_uri="file:///r/s.wav", timings={}, extra={})
    assert source.exhausted()
    assert {o.status for o in source.outcomes.values()} == {JobStatus.SUCCEEDED}


def test_a_failed_step_ends_the_rest_of_its_workflow(tmp_path: Path):
    source = ManifestSource(_write(tmp_path, "m", [DESCRIBE_THEN_SCORE]), max_attempts=1)
    (first,) = source.claim(10, 0)
    source.fail(first, PermanentError("the input is silent"), retry=False, timings={})
    score = f"{source.batch_id}-0-score"
    assert source.outcomes[first.job_id].status is JobStatus.FAILED
    assert source.outcomes[score].status is JobStatus.CANCELLED
    assert source.outcomes[score].error == "not run: step 'describe' failed"
    assert source.claim(10, 0) == [] and source.exhausted()


def test_a_dead_step_stops_its_running_sibling_and_cancels_the_waiting_join(tmp_path: Path):
    dag = {
        "steps": [
            {"id": "a", "task": "text_to_audio", "prompt": "wind"},
            {"id": "b", "task": "text_to_audio", "prompt": "waves"},
            {"id": "c", "task": "edit", "op": "add", "prompt": "gulls", "input_audio_uri": "{{a.audio}}"},
        ]
    }
    source = ManifestSource(_write(tmp_path, "m", [dag]), max_attempts=1)
    held = {j.job_id.rsplit("-", 1)[-1]: j for j in source.claim(10, 0)}
    assert sorted(held) == ["a", "b"]
    source.fail(held["b"], RetryableError("replica restarting"), retry=True, timings={})  # out of attempts
    assert source.outcomes[held["b"].job_id].status is JobStatus.DEAD
    assert source.is_cancel_requested(held["a"]) and not source.exhausted()
    source.cancel(held["a"])  # the engine saw the request between stages
    c = f"{source.batch_id}-0-c"
    assert source.outcomes[c].status is JobStatus.CANCELLED and source.outcomes[c].error == "not run: step 'b' dead"
    assert source.exhausted()


def test_built_in_chains_in_a_manifest_are_workflows(tmp_path: Path):
    _clip(tmp_path / "speech.wav")
    lines = [
        {"task": "text_to_music", "prompt": "a calm evening", "reasoning": True, "steps": 8},
        {"task": "voice_conversion", "input_audio_uri": "speech.wav", "voice_prompt_uri": "speech.wav"},
    ]
    source = ManifestSource(_write(tmp_path, "m", lines))
    reasoning, vc = f"{source.batch_id}-0", f"{source.batch_id}-1"
    assert source.total == 4 and not source.invalid
    generate = source.specs[f"{reasoning}-generate"]
    assert generate.prompt == "{{reason.text}}" and generate.steps == 8 and not generate.reasoning
    assert generate.workflow is not None and generate.workflow.original == {"prompt": "a calm evening"}
    transcribe, convert = source.specs[f"{vc}-transcribe"], source.specs[f"{vc}-convert"]
    assert transcribe.input_audio_uri == str((tmp_path / "speech.wav").resolve())
    assert convert.transcript == "{{transcribe.text}}" and convert.input_audio_uri is None
    assert _ids(source.claim(10, 0)) == sorted([f"{reasoning}-reason", f"{vc}-transcribe"])


def test_an_invalid_workflow_line_fails_alone_naming_the_step(tmp_path: Path):
    bad = {"steps": [{"id": "late", "task": "text_to_audio", "prompt": "{{later.text}}"}]}
    source = ManifestSource(_write(tmp_path, "m", [bad, {"task": "text_to_audio", "prompt": "wind"}]))
    bad_id = f"{source.batch_id}-0"
    assert source.total == 2 and list(source.invalid) == [bad_id]
    reason = source.outcomes[bad_id].error or ""
    assert reason.startswith("line 1: invalid workflow: steps[0].prompt: step 'late'") and "'later'" in reason
    assert _ids(source.claim(10, 0)) == [f"{source.batch_id}-1"]


# --------------------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def pools() -> InProcessPools:
    return InProcessPools.build(SETTINGS)


def _run(tmp: Path, manifest: Path, pools: InProcessPools) -> tuple[ManifestSource, list[JobResult]]:
    source = ManifestSource(manifest, max_attempts=1)
    storage = LocalStorage(tmp / "out")
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=tmp))
    results: list[JobResult] = []
    lock = threading.Lock()

    def on_done(result: JobResult) -> None:
        with lock:
            results.append(result)

    engine = Engine(
        source, storage, inputs, pools, SETTINGS.load_config(), EngineSettings(claim_block_s=0.05), on_done=on_done
    )
    engine.run(until_exhausted=True)
    return source, results


def _metadata(uri: str | None) -> dict:
    assert uri is not None and uri.startswith("file://")
    path = Path(uri[len("file://") :])
    return json.loads(path.with_suffix(".json").read_text())


def test_workflow_lines_run_through_the_engine(tmp_path: Path, pools: InProcessPools):
    _clip(tmp_path / "clip.wav")
    chain = {
        "steps": [
            {"id": "first", "task": "edit", "op": "remove", "prompt": "hum", "input_audio_uri": "clip.wav", "steps": 2},
            {
                "id": "second",
                "task": "edit",
                "op": "add",
                "prompt": "rain",
                "input_audio_uri": "{{first.audio}}",
                "steps": 2,
            },
            {"id": "third", "task": "understand", "prompt": "What is this?", "input_audio_uri": "{{second.audio}}"},
        ]
    }
    reasoning = {"task": "text_to_audio", "prompt": "a dog far away", "reasoning": True, "duration_s": 1.0, "steps": 2}
    lines = [DESCRIBE_THEN_SCORE, chain, reasoning]
    source, results = _run(tmp_path, _write(tmp_path, "wf", lines), pools)
    statuses = {job_id: o.status for job_id, o in source.outcomes.items()}
    assert set(statuses.values()) == {JobStatus.SUCCEEDED}, {j: o.error for j, o in source.outcomes.items()}
    assert len(statuses) == source.total == 7 and len(results) == 7  # one attempt per step

    # understand -> text_to_audio: the generation's metadata shows the substituted prompt.
    wf = f"{source.batch_id}-0"
    answer = source.outcomes[f"{wf}-describe"].extra.get("text")
    assert isinstance(answer, str)
    meta = _metadata(source.outcomes[f"{wf}-score"].result_uri)
    assert (meta["workflow_id"], meta["step"]) == (wf, "score")
    assert meta["resolved"]["prompt"].startswith("A soundtrack for: ")
    assert meta["spec"]["prompt"] == "A soundtrack for: {{describe.text}}"  # as submitted

    # edit -> edit -> understand: each step read the previous step's stored result.
    wf = f"{source.batch_id}-1"
    first_uri = source.outcomes[f"{wf}-first"].result_uri
    second_uri = source.outcomes[f"{wf}-second"].result_uri
    assert _metadata(second_uri)["resolved"] == {"input_audio_uri": first_uri}
    third = json.loads(Path((source.outcomes[f"{wf}-third"].result_uri or "")[len("file://") :]).read_text())
    assert third["resolved"] == {"input_audio_uri": second_uri} and third["step"] == "third"

    # `reasoning: true` ran as its built-in chain: the thinker's rewrite is the generation's prompt,
    # and the metadata keeps the prompt as the client gave it.
    wf = f"{source.batch_id}-2"
    assert source.workflows[wf] == [f"{wf}-reason", f"{wf}-generate"]
    rewrite = source.outcomes[f"{wf}-reason"].extra.get("text")
    meta = _metadata(source.outcomes[f"{wf}-generate"].result_uri)
    assert isinstance(rewrite, str) and meta["resolved"]["prompt"] == rewrite.strip()
    assert meta["original_prompt"] == "a dog far away" and meta["spec"]["prompt"] == "{{reason.text}}"
