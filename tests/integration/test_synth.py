"""Edit-pair synthesis on a local Ray from tiny generated sound folders."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import filters
from training.filters import EnergyFilter, VoiceActivityFilter, make_semantic_filter
from training.shards import decode_shard, open_storage, shard_key
from training.synth import Sources, SynthSettings, fit_background, load_mono, run_synth, synth_pair

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FRAME = 2048
LSB = 1 / 32767


def _vowels(sr: int, seconds: float) -> np.ndarray:
    """Speech-like sound: a gliding 110 Hz pulse train through three formant resonators, a new vowel
    every 0.2 s (silero-vad calls it speech; a steady tone it does not)."""
    n, seg = round(sr * seconds), round(0.2 * sr)
    f0 = 110 + 20 * np.sin(2 * np.pi * 0.7 * np.arange(n) / sr)
    pulses = (np.diff(np.floor(np.cumsum(f0 / sr)), prepend=0) > 0).astype(np.float64)
    out = np.zeros(n)
    for k, start in enumerate(range(0, n - seg + 1, seg)):
        formants = [(700, 1220, 2600), (300, 2300, 3000), (500, 900, 2400), (400, 1900, 2500)][k % 4]
        y = np.zeros(seg)
        for j, f in enumerate(formants):
            r = np.exp(-np.pi * (80 + 40 * j) / sr)
            a1, a2, y1, y2 = -2 * r * np.cos(2 * np.pi * f / sr), r * r, 0.0, 0.0
            for i, x in enumerate(pulses[start : start + seg]):
                y1, y2 = (1 - r) * x - a1 * y1 - a2 * y2, y1
                y[i] += y1
        out[start : start + seg] = y * np.hanning(seg)
    return (0.6 * out / np.abs(out).max()).astype(np.float32)


def _tone(sr: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(round(sr * seconds)) / sr)).astype(np.float32)


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
    speech = root / "foreground" / "speech"  # a speech class: its events must hold speech
    speech.mkdir()
    sf.write(speech / "vowels.wav", _vowels(22050, 1.6), 22050)
    sf.write(speech / "hum.wav", _tone(22050, 1.6), 22050)  # loud, but no speech: dropped
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
            assert pair["foreground"] != "speech/hum.wav"  # the voice-activity filter dropped it
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


def test_voice_activity_filter_keeps_speech_classes_speech(sound_dirs):
    vad = VoiceActivityFilter(0.2)
    kept, ratio = vad.keep(_vowels(44100, 1.6), 44100)
    assert kept and ratio > 0.8, ratio
    for name, x in (("tone", _tone(44100, 1.6)), ("noise", np.random.default_rng(0).normal(0, 0.1, 44100))):
        kept, ratio = vad.keep(x.astype(np.float32), 44100)
        assert not kept and ratio < 0.2, (name, ratio)
    assert vad.speech_ratio(np.zeros(0, dtype=np.float32), 44100) == 0.0
    with pytest.raises(ValueError, match="min_speech_ratio"):
        VoiceActivityFilter(0.0)

    base = {"foreground": str(sound_dirs / "foreground"), "background": str(sound_dirs / "background"), "pairs": 40}
    sources = Sources.scan(SynthSettings(**base))
    energy = EnergyFilter(-45)
    picked, rejected = set(), []
    for i in range(40):
        _, _, _, p = synth_pair(i, sources, energy, None, vad)
        picked.add(p["foreground"])
        rejected += p["rejected"]
    assert "speech/vowels.wav" in picked and "speech/hum.wav" not in picked
    assert any(r.startswith("speech/hum.wav: voice activity") for r in rejected), rejected
    # Only the classes named as speech are checked: tones elsewhere are kept.
    assert any(f.startswith("tone/") for f in picked)
    # With no speech classes the hum is an ordinary (loud) event and gets drawn.
    sources = Sources.scan(SynthSettings(**base, speech_labels=()))
    drawn = {synth_pair(i, sources, energy, None, vad)[3]["foreground"] for i in range(40)}
    assert "speech/hum.wav" in drawn
    with pytest.raises(ValueError, match="speech_labels"):
        SynthSettings(**base, speech_labels=("a/b",))
    roundtrip = SynthSettings.from_json(SynthSettings(**base, speech_labels=("speech", "talk")).to_json())
    assert roundtrip.speech_labels == ("speech", "talk")
    new_keys = ("speech_labels", "min_speech_ratio")
    legacy = {k: v for k, v in SynthSettings(**base).to_json().items() if k not in new_keys}
    assert SynthSettings.from_json(legacy) == SynthSettings(**base)  # an older settings.json still resumes


def test_cli_arguments_give_the_settings(capsys):
    from orchestrator.cli import build_parser
    from training.cli import TRAINING, main
    from training.commands.dataset import synth_settings

    def parse(argv: list[str]):
        return build_parser(TRAINING).parse_args(argv)

    base = ["synth", "--foreground", "fg", "--background", "bg", "--pairs", "3", "--out", "o"]
    args = parse(base)
    assert synth_settings(args) == SynthSettings(foreground="fg", background="bg", pairs=3)
    args = parse([*base, "--speech-labels", "speech, talk", "--min-speech-ratio", "0.5"])
    assert synth_settings(args).speech_labels == ("speech", "talk") and synth_settings(args).min_speech_ratio == 0.5
    assert synth_settings(parse([*base, "--speech-labels", ""])).speech_labels == ()
    assert main([*base, "--min-speech-ratio", "0"]) != 0  # refused with a message, nothing started
    assert "min_speech_ratio must be in (0, 1]" in capsys.readouterr().err


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
