"""Understanding through the job system (no Ray): audio longer than the thinker's window is asked
window by window and answered as one job; audio over the input limit fails at once, never retried.
Real tiny-preset jobs through Engine, InProcessPools, a manifest source and a local folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.limits import MAX_INPUT_AUDIO_S, THINKER_WINDOW_S
from model.mllm import UnderstandRequest
from model.pipeline import UnderstandWindow
from orchestrator.engine import Engine, EngineSettings
from orchestrator.errors import PermanentError
from orchestrator.jobs import JobStatus
from orchestrator.sources import ManifestSource
from orchestrator.storage import InputPolicy, InputResolver, LocalStorage
from workers.app import InProcessPools
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)
SPAN = re.compile(r"^\[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) s\]")


@pytest.fixture(scope="module")
def pools() -> InProcessPools:
    return InProcessPools.build(SETTINGS)


def _wav(path: Path, seconds: float, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path.name


def _engine(
    tmp: Path, lines: list[dict], pools: InProcessPools, *, max_attempts: int = 3
) -> tuple[Engine, ManifestSource]:
    manifest = tmp / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    source = ManifestSource(manifest, max_attempts=max_attempts)
    storage = LocalStorage(tmp / "out")
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=tmp))
    engine = Engine(source, storage, inputs, pools, SETTINGS.load_config(), EngineSettings(claim_block_s=0.05))
    return engine, source


def test_long_audio_is_understood_window_by_window_as_one_job(tmp_path: Path, pools: InProcessPools):
    clip = _wav(tmp_path / "long.wav", 70.0)
    engine, source = _engine(
        tmp_path, [{"task": "understand", "prompt": "What do you hear?", "input_audio_uri": clip}], pools
    )
    before = pools.calls["understand"]
    engine.run(until_exhausted=True)

    (outcome,) = source.outcomes.values()
    assert outcome.status is JobStatus.SUCCEEDED, outcome.error
    assert outcome.attempts == 1
    assert pools.calls["understand"] - before == 3  # 0-30, 30-60, 60-70 s
    lines = outcome.extra["text"].split("\n")
    assert [SPAN.match(line).groups() for line in lines] == [("0", "30"), ("30", "60"), ("60", "70")]
    meta = json.loads(Path(outcome.result_uri.removeprefix("file://")).read_text())
    assert meta["text"] == outcome.extra["text"]
    assert meta["notes"] == [f"audio of 70.0 s asked in 3 windows of at most {THINKER_WINDOW_S:g} s"]
    assert meta["timings_s"]["understand"] > 0


def test_audio_over_the_input_limit_fails_at_once(tmp_path: Path, pools: InProcessPools):
    clip = _wav(tmp_path / "too_long.wav", MAX_INPUT_AUDIO_S + 100, rate=8000)  # 400 s
    lines = [
        {"task": "understand", "prompt": "What do you hear?", "input_audio_uri": clip},
        {"task": "understand", "prompt": "And here?", "input_audio_uri": _wav(tmp_path / "ok.wav", 45.0)},
    ]
    engine, source = _engine(tmp_path, lines, pools, max_attempts=3)
    before = pools.calls["understand"]
    engine.run(until_exhausted=True)

    refused = source.outcomes[f"{source.batch_id}-0"]
    assert refused.status is JobStatus.FAILED and refused.attempts == 1  # a bad input: never retried
    assert "400.0 s" in (refused.error or "") and f"{MAX_INPUT_AUDIO_S:g} s" in (refused.error or "")
    # 45 s (retried until dead before windows existed) now succeeds: two windows
    ok = source.outcomes[f"{source.batch_id}-1"]
    assert ok.status is JobStatus.SUCCEEDED and ok.attempts == 1, ok.error
    assert pools.calls["understand"] - before == 2


def test_a_request_over_the_thinkers_limit_is_a_permanent_error_before_any_pool_call(
    tmp_path: Path, pools: InProcessPools
):
    """The engine runs the thinker's own input checks per request before asking the pool, so a bad
    request fails its job alone (PermanentError) and never fails a batch of other jobs' requests."""
    engine, _ = _engine(tmp_path, [], pools)
    fine = UnderstandWindow(UnderstandRequest("q", audio=np.zeros(16000, np.float32)), 0.0, 1.0)
    over = UnderstandWindow(UnderstandRequest("q", audio=np.zeros(31 * 16000, np.float32)), 1.0, 32.0)
    before = pools.calls["understand"]
    with pytest.raises(PermanentError, match=r"question \[1-32 s\]\.audio has 496000 samples \(31\.0 s at 16 kHz\)"):
        engine._ask([fine, over])
    with pytest.raises(PermanentError, match=r"question about the input\.question must be a non-empty string"):
        engine._ask([UnderstandWindow(UnderstandRequest("  "))])
    assert pools.calls["understand"] == before
