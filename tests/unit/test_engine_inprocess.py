"""The engine without Ray: real jobs (tiny preset) through `InProcessPools`, a manifest source and a
local folder, with the engine's real seams (InputResolver, Storage.put_result, EngineMetrics)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from orchestrator.engine import Engine, EngineSettings, JobResult
from orchestrator.errors import Outcome
from orchestrator.jobs import JobStatus, derive_seed
from orchestrator.metrics import EngineMetrics
from orchestrator.sources import ManifestSource
from orchestrator.storage import InputPolicy, InputResolver, LocalStorage
from workers.app import InProcessPools
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)
T2A = {"task": "text_to_audio", "prompt": "wind", "duration_s": 1.0, "steps": 2}


@pytest.fixture(scope="module")
def pools() -> InProcessPools:
    return InProcessPools.build(SETTINGS)


def _wav(path: Path, seconds: float, rate: int) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    return path.name


def _run(
    tmp: Path,
    name: str,
    lines: list[dict],
    pools: InProcessPools,
    *,
    out: str | None = None,
    input_root: Path | None = None,
    **engine_kw: object,
):
    manifest = tmp / f"{name}.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    source = ManifestSource(manifest, max_attempts=1)
    storage = LocalStorage(tmp / (out or f"out-{name}"))
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=input_root or tmp))
    metrics = EngineMetrics()
    results: list[JobResult] = []
    lock = threading.Lock()

    def on_done(result: JobResult) -> None:
        with lock:
            results.append(result)

    engine = Engine(
        source,
        storage,
        inputs,
        pools,
        SETTINGS.load_config(),
        EngineSettings(claim_block_s=0.05, **engine_kw),  # type: ignore[arg-type]
        on_done=on_done,
        metrics=metrics,
    )
    engine.run(until_exhausted=True)
    return source, storage, metrics, results


def _path(uri: str | None) -> Path:
    assert uri is not None and uri.startswith("file://")
    return Path(uri[len("file://") :])


def test_real_jobs_run_through_in_process_pools(tmp_path: Path, pools: InProcessPools):
    clip = _wav(tmp_path / "clip.wav", 1.5, rate=22050)
    lines = [
        {**T2A, "seed": 3},
        {"task": "edit", "op": "remove", "prompt": "hum", "input_audio_uri": clip, "steps": 2, "seed": 4},
        {"task": "understand", "prompt": "what is this?", "input_audio_uri": clip},
        {"task": "tts", "transcript": "hi there", "voice_prompt_uri": clip, "steps": 2, "duration_s": 1.0},
        {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "missing.wav", "steps": 2},
    ]
    calls_before = dict(pools.calls)
    source, _, metrics, results = _run(tmp_path, "mixed", lines, pools, max_in_flight=3)
    ids = [f"{source.batch_id}-{i}" for i in range(len(lines))]
    statuses = [source.outcomes[j].status for j in ids]
    assert statuses == [JobStatus.SUCCEEDED] * 4 + [JobStatus.FAILED]
    assert "input not found" in (source.outcomes[ids[4]].error or "")
    assert "missing.wav" in (source.outcomes[ids[4]].error or "")

    # Every attempt reported once, in the one outcome vocabulary (metrics labels included).
    assert sorted(r.outcome for r in results) == sorted([Outcome.SUCCEEDED] * 4 + [Outcome.FAILED])
    assert all(isinstance(r.outcome, Outcome) for r in results)
    assert metrics.jobs.labels(status="succeeded")._value.get() == 4
    assert metrics.jobs.labels(status="failed")._value.get() == 1

    # The pools really ran: three generations (t2a, edit, tts) with their thinker passes, and one
    # answer (understanding needs no encode).
    delta = {k: pools.calls[k] - calls_before[k] for k in pools.calls}
    assert delta == {"encode": 3, "understand": 1, "sync_features": 0, "generate": 3}

    config = SETTINGS.load_config()
    for job_id, want_s in ((ids[0], 1.0), (ids[1], 1.5), (ids[3], None)):
        path = _path(source.outcomes[job_id].result_uri)
        info = sf.info(io.BytesIO(path.read_bytes()))
        assert info.samplerate == config.sample_rate and info.channels == 2
        if want_s is not None:
            assert abs(info.duration - want_s) < 1e-3
        meta = json.loads(path.with_suffix(".json").read_text())
        given = source.specs[job_id].seed
        assert meta["seed"] == (given if given is not None else derive_seed(job_id))
        assert meta["result_object"]["sha256"] and meta["timings_s"]["generate"] > 0
    answer = json.loads(_path(source.outcomes[ids[2]].result_uri).read_text())
    assert isinstance(answer["text"], str) and answer["result_object"] is None
    assert source.outcomes[ids[2]].extra["text"] == answer["text"]


def test_an_earlier_result_is_an_input_for_its_tenant(tmp_path: Path, pools: InProcessPools):
    """Editing a generated clip: the result's own file:// URI is read back under the tenant's prefix."""
    elsewhere = tmp_path / "inputs"  # the input root holds nothing: only the own-prefix rule applies
    first, _, _, _ = _run(tmp_path, "first", [{**T2A, "seed": 5}], pools, out="out", input_root=elsewhere)
    made = next(iter(first.outcomes.values())).result_uri
    assert made is not None
    edit = {"task": "edit", "op": "remove", "prompt": "wind", "input_audio_uri": made, "steps": 2, "seed": 6}
    second, _, _, _ = _run(tmp_path, "second", [edit], pools, out="out", input_root=elsewhere)
    outcome = next(iter(second.outcomes.values()))
    assert outcome.status is JobStatus.SUCCEEDED, outcome.error
    # Another tenant may not read it.
    theirs = {**edit, "tenant": "globex"}
    third, _, _, _ = _run(tmp_path, "third", [theirs], pools, out="out", input_root=elsewhere)
    refused = next(iter(third.outcomes.values()))
    assert refused.status is JobStatus.FAILED and "refused" in (refused.error or "")


def test_a_seed_gives_the_same_bytes_on_every_run(tmp_path: Path, pools: InProcessPools):
    a, _, _, _ = _run(tmp_path, "a", [{**T2A, "seed": 42}], pools)
    b, _, _, _ = _run(tmp_path, "b", [{**T2A, "seed": 42}, {**T2A, "seed": 43}], pools, max_in_flight=2)
    first = _path(next(iter(a.outcomes.values())).result_uri).read_bytes()
    again = _path(b.outcomes[f"{b.batch_id}-0"].result_uri).read_bytes()
    other = _path(b.outcomes[f"{b.batch_id}-1"].result_uri).read_bytes()
    assert first == again and first != other
