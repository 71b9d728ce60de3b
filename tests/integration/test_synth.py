"""Edit-pair synthesis on a local Ray from tiny generated sound folders."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from orchestrator.dataset import filters
from orchestrator.dataset.filters import EnergyFilter, make_semantic_filter
from orchestrator.dataset.shards import decode_shard, open_storage, shard_key
from orchestrator.dataset.synth import SynthSettings, fit_background, load_mono, run_synth

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FRAME = 2048
LSB = 1 / 32767


def _make_sounds():
    spec = importlib.util.spec_from_file_location("make_sounds", REPO / "examples" / "sounds" / "make_sounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sound_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sounds")
    _make_sounds().generate(root, per_class=2, backgrounds_per_kind=1, seed=0, classes=("tone", "clicks", "chord"))
    silent = root / "foreground" / "silence"
    silent.mkdir()
    for i in range(2):
        sf.write(silent / f"s{i}.wav", np.zeros(22050, dtype=np.float32), 22050)
    return root


@pytest.fixture(scope="module")
def dataset(sound_dirs, tmp_path_factory, ray_cluster):
    settings = SynthSettings(
        foreground=str(sound_dirs / "foreground"),
        background=str(sound_dirs / "background"),
        pairs=6,
        shard_size=3,
        seed=7,
    )
    out = tmp_path_factory.mktemp("ds")
    manifest = run_synth(settings, str(out), num_workers=2, progress=False)
    return settings, out, manifest


def test_pairs_have_the_drawn_properties(dataset):
    settings, out, manifest = dataset
    assert manifest["pairs"] == 6 and manifest["pairs_this_run"] == 6
    storage = open_storage(str(out))
    n = settings.clip_samples
    seen = 0
    for k in range(settings.num_shards):
        shard = decode_shard(storage.get(shard_key(k)))
        for p, pair in enumerate(shard.pairs):
            seen += 1
            bg, mix, ev = shard.background[p], shard.mixture[p], shard.event[p]
            assert bg.shape == mix.shape == ev.shape == (n,)  # lengths exact
            assert pair["label"] != "silence"  # the energy filter dropped silent events
            onset, length = pair["onset_samples"], pair["event_samples"]
            # add target = source + event, to int16 rounding
            assert np.abs(mix - bg - ev).max() <= 3 * LSB
            # event present in the add target at the drawn onset, within one frame
            diff = np.abs(mix - bg)
            first = int(np.argmax(diff > 20 * LSB))
            assert onset <= first < onset + FRAME, (first, onset)
            assert np.abs(ev[:onset]).max(initial=0) == 0 and np.abs(ev[onset + length :]).max(initial=0) == 0
            # remove target = the background crop itself: the event is absent from it
            source = load_mono((Path(settings.background) / pair["background"]).read_bytes(), settings.sample_rate)
            crop, _ = fit_background(source, n, np.random.default_rng(0))
            start = pair["background_offset_samples"]
            expected = source[start : start + n] * pair["scale"] if source.size >= n else crop * pair["scale"]
            assert np.abs(bg - expected).max() <= 2 * LSB
            # SNR over the event's span is the drawn one, inside 0..3 dB
            span = slice(onset, onset + length)
            snr = 10 * np.log10(np.mean(ev[span] ** 2) / np.mean(bg[span] ** 2))
            assert settings.snr_db[0] - 0.05 <= snr <= settings.snr_db[1] + 0.05
            assert abs(snr - pair["snr_db"]) < 0.05
            assert settings.pitch_semitones[0] <= pair["pitch_semitones"] <= settings.pitch_semitones[1]
            assert settings.stretch_rate[0] <= pair["stretch_rate"] <= settings.stretch_rate[1]
    assert seen == 6


def test_rerun_is_deterministic_and_resumes(dataset):
    settings, out, _ = dataset
    storage = open_storage(str(out))
    before = storage.get(shard_key(1))
    storage.delete(shard_key(1))
    manifest = run_synth(settings, str(out), num_workers=1, progress=False)
    assert manifest["pairs_this_run"] == 3  # only the missing shard was rebuilt
    assert storage.get(shard_key(1)) == before
    other = SynthSettings(
        **{**settings.to_json(), "snr_db": (0.0, 1.0), "pitch_semitones": (-3, 3), "stretch_rate": (0.8, 1.2)}
    )
    with pytest.raises(ValueError, match="other settings"):
        run_synth(other, str(out), progress=False)


def test_filters_and_validation(caplog):
    assert not EnergyFilter(-45).keep(np.zeros(4096, dtype=np.float32))
    assert EnergyFilter(-45).keep(0.1 * np.ones(4096, dtype=np.float32))
    filters._skip_logged = False  # logged once per process; an earlier run here may have logged it
    with caplog.at_level(logging.WARNING):
        assert make_semantic_filter(None) is None
    assert "CLAP" in caplog.text and "skipped" in caplog.text
    with pytest.raises(ValueError, match="pairs"):
        SynthSettings(foreground="a", background="b", pairs=0)
    with pytest.raises(ValueError, match="snr_db"):
        SynthSettings(foreground="a", background="b", pairs=1, snr_db=(3.0, 0.0))
