"""The engine on local Ray with both Serve pools (tiny preset): manifest source, folder sink."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from orchestrator.jobs import derive_seed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pools(ray_cluster):
    from workers.app import deploy, shutdown
    from workers.settings import PoolSettings, WorkerSettings

    settings = WorkerSettings(
        preset="tiny",  # the system under test, not the model: the fastest preset
        app_name="test-engine",
        understand_max_new_tokens=4,
        encoder=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.1),
        sampler=PoolSettings(num_cpus=0.5, max_batch_size=4, batch_wait_timeout_s=0.3),
    )
    handle = deploy(settings)
    yield settings, handle
    shutdown(settings)


def _run(tmp: Path, name: str, lines: list[dict], pools, **engine_kw):
    from orchestrator.engine import Engine, EngineSettings
    from orchestrator.sources import ManifestSource
    from orchestrator.storage import InputPolicy, InputResolver, LocalStorage

    settings, handle = pools
    manifest = tmp / f"{name}.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    source = ManifestSource(manifest, max_attempts=1)
    storage = LocalStorage(tmp / f"out-{name}")
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=tmp))
    engine = Engine(source, storage, inputs, handle, settings.load_config(), EngineSettings(**engine_kw))
    engine.run(until_exhausted=True)
    return source, storage


def _wav_file(path: Path, seconds: float, rate: int = 44100) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    return path.name


T2A = {"task": "text_to_audio", "prompt": "wind", "duration_s": 1.0, "steps": 2}


def test_mixed_batch_bad_inputs_fail_alone(tmp_path, pools):
    source_wav = _wav_file(tmp_path / "src.wav", 1.5, rate=22050)
    long_wav = _wav_file(tmp_path / "long.wav", 7.0)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 20)
    lines = [
        {"task": "understand", "prompt": "what is this?", "input_audio_uri": source_wav},
        {**T2A, "seed": 1, "output_format": "flac"},
        {
            "task": "edit",
            "op": "remove",
            "prompt": "hum",
            "input_audio_uri": source_wav,
            "steps": 2,
            "seed": 2,
        },
        {
            "task": "tts",
            "transcript": "hi there",
            "voice_prompt_uri": source_wav,
            "steps": 2,
            "duration_s": 1.0,
        },
        {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "corrupt.wav", "steps": 2},
        {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": long_wav, "steps": 2},
        {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "missing.wav", "steps": 2},
        {"task": "text_to_audio", "steps": 2},  # no prompt: invalid spec
    ]
    source, _ = _run(tmp_path, "mixed", lines, pools, max_in_flight=8, max_input_audio_s=5.0)
    outcomes = [source.outcomes[f"{source.batch_id}-{i}"] for i in range(len(lines))]
    assert [o.status.value for o in outcomes] == ["succeeded"] * 4 + ["failed"] * 4
    assert "input audio" in outcomes[4].error and "0x" not in outcomes[4].error
    assert "lasts 7.0 s; the limit is 5 s" in outcomes[5].error
    assert "missing.wav" in outcomes[6].error
    assert "prompt" in outcomes[7].error
    # understanding: metadata only, with the answer
    meta0 = json.loads(Path(outcomes[0].result_uri[len("file://") :]).read_text())
    assert isinstance(meta0["text"], str) and meta0["result_object"] is None
    for o, want_s, fmt in ((outcomes[1], 1.0, "FLAC"), (outcomes[2], 1.5, "WAV"), (outcomes[3], None, "WAV")):
        path = Path(o.result_uri[len("file://") :])
        info = sf.info(io.BytesIO(path.read_bytes()))
        assert info.samplerate == 44100 and info.format == fmt and info.channels == 2
        if want_s is not None:
            assert abs(info.duration - want_s) < 1e-3
        meta = json.loads(path.with_suffix(".json").read_text())
        # The seed sampled with: the spec's own, else the one derived from the job id (the tts line).
        given = source.specs[o.job_id].seed
        assert meta["seed"] == (given if given is not None else derive_seed(o.job_id))
        assert meta["model_version"] and meta["timings_s"]["generate"] > 0
        assert meta["spec"]["task"] in ("text_to_audio", "edit", "tts")


def _delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """Sampling loops by batch size run between two cumulative snapshots."""
    return {size: n - before.get(size, 0) for size, n in after.items() if n - before.get(size, 0) > 0}


def test_same_seed_same_bytes_alone_or_batched(tmp_path, pools):
    _, handle = pools
    alone, _ = _run(tmp_path, "alone", [{**T2A, "seed": 42}], pools, max_in_flight=1)
    a = Path(next(iter(alone.outcomes.values())).result_uri[len("file://") :]).read_bytes()
    mixed_lines = [{**T2A, "seed": s, "prompt": p} for s, p in ((7, "rain"), (42, "wind"), (9, "birds"), (11, "sea"))]
    # The sampler's histogram is cumulative and the pools outlive this test: measure the loops this
    # run added. A run where no loop had size 1 proves that every request of it, the seed-42 one
    # included, was sampled in a shared batch. Batching is timing-dependent, so allow a few runs.
    shared = None
    for attempt in range(3):
        before = handle.sampler_stats()
        batched, _ = _run(tmp_path, f"batched-{attempt}", mixed_lines, pools, max_in_flight=4)
        loops = _delta(before, handle.sampler_stats())
        assert sum(size * n for size, n in loops.items()) == len(mixed_lines), loops  # this run's requests only
        if 1 not in loops:
            shared = batched
            break
    assert shared is not None, f"the seed-42 job never shared a sampling batch in 3 runs (last: {loops})"
    b = Path(shared.outcomes[f"{shared.batch_id}-1"].result_uri[len("file://") :]).read_bytes()
    assert a == b
