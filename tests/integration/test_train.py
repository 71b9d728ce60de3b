"""Training on Ray Train (CPU) from a synthesised, precomputed dataset; resume equivalence."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.precompute import run_precompute
from training.shards import open_storage
from training.synth import SynthSettings, run_synth
from training.trainer import FINAL_WEIGHTS_KEY, LATEST_KEY, TrainSettings, run_training

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_cluster):
    spec = importlib.util.spec_from_file_location("make_sounds", REPO / "examples" / "sounds" / "make_sounds.py")
    make_sounds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sounds)
    sounds = tmp_path_factory.mktemp("sounds")
    make_sounds.generate(sounds, per_class=1, backgrounds_per_kind=1, seed=1, classes=("tone", "clicks"))
    out = tmp_path_factory.mktemp("data")
    settings = SynthSettings(
        foreground=str(sounds / "foreground"), background=str(sounds / "background"), pairs=2, shard_size=2
    )
    run_synth(settings, str(out), num_workers=1, progress=False)
    run_precompute(str(out), preset="tiny", num_workers=1, progress=False)
    return str(out)


def _settings(data, out, steps, **kw):
    return TrainSettings(
        data=data,
        out=str(out),
        steps=steps,
        batch_size=2,
        lr=2e-3,
        warmup_steps=0,
        cond_dropout=0.1,
        checkpoint_every=3,
        log_every=5,
        seed=3,
        **kw,
    )


def test_twenty_steps_on_ray_train_reduce_the_loss(data, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIO_OMNI_RAY_TRAIN_DIR", str(tmp_path / "ray"))
    result = run_training(_settings(data, tmp_path / "run", 20, kinds=("text_to_audio", "edit_extract")))
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    storage = open_storage(str(tmp_path / "run"))
    assert json.loads(storage.get(LATEST_KEY))["step"] == 20
    weights = tmp_path / "run" / FINAL_WEIGHTS_KEY
    assert any(k.startswith("model.model.") for k in load_file(weights))  # released key names


def test_resume_gives_the_same_next_steps(data, tmp_path):
    straight = run_training(_settings(data, tmp_path / "a", 6), in_process=True)["history"]
    run_training(_settings(data, tmp_path / "b", 3), in_process=True)
    resumed = run_training(_settings(data, tmp_path / "b", 6), in_process=True)["history"]
    assert [h["step"] for h in resumed] == [4, 5, 6]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in straight[3:]]
    a = load_file(tmp_path / "a" / FINAL_WEIGHTS_KEY)
    b = load_file(tmp_path / "b" / FINAL_WEIGHTS_KEY)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        TrainSettings(data="d", out="o", steps=0)
    with pytest.raises(ValueError, match="kinds"):
        TrainSettings(data="d", out="o", kinds=("edit_add", "dance"))


def test_kinds_flag_is_a_comma_list():
    from orchestrator.cli import build_parser
    from training.cli import TRAINING

    args = build_parser(TRAINING).parse_args(["train", "--data", "d", "--out", "o"])
    assert args.kinds == ("edit_add", "edit_remove", "edit_extract", "text_to_audio")
    args = build_parser(TRAINING).parse_args(
        ["train", "--data", "d", "--out", "o", "--kinds", "edit_add, text_to_audio,"]
    )
    assert args.kinds == ("edit_add", "text_to_audio")


def test_source_latents_come_from_the_precomputed_features(data, tmp_path, monkeypatch):
    """For a preset whose DiT reads the source's latent (input concat), training takes it from the
    stored features: the same latent the VAE encoder gives the source window, without a step encoding it."""
    from model.build import build_sampler
    from model.config import load_config
    from model.parts import SamplerPart
    from training.precompute import model_tag
    from training.trainer import EditPairData

    run_precompute(data, preset="small", num_workers=1, progress=False)
    kinds = ("edit_add", "edit_remove", "text_to_audio")
    pairs = EditPairData(open_storage(data), model_tag("small"), kinds)
    _, examples = pairs.batch(list(range(len(pairs))))
    part = build_sampler(load_config("small"))
    with_source = [e for e in examples if e.audio_window is not None]
    assert with_source and len(with_source) < len(examples)  # text-to-audio has none
    for e in examples:
        assert (e.source_latent is None) == (e.audio_window is None)
    for e in with_source:
        torch.testing.assert_close(e.source_latent, part.source_latents([e.audio_window])[0], atol=1e-5, rtol=0)

    def no_encoding(*args, **kwargs):
        raise AssertionError("a training step encoded a source")

    monkeypatch.setattr(SamplerPart, "encode_audio", no_encoding)  # in-process: the loop's part is one
    result = run_training(_settings(data, tmp_path / "s", 2, preset="small", kinds=kinds), in_process=True)
    assert len(result["history"]) == 2
