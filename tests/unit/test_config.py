"""Config: the released schema, path resolution, presets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from model.config import (
    MLLM_PATH_ENV,
    PACKAGED_VOCAB,
    PRESETS,
    RELEASED_CONFIG,
    AudioOmniConfig,
    get_preset,
    load_config,
)


@pytest.fixture(autouse=True)
def _no_mllm_env(monkeypatch):
    monkeypatch.delenv(MLLM_PATH_ENV, raising=False)


def _released() -> dict:
    return copy.deepcopy(RELEASED_CONFIG)


def test_tiny_config_parses_with_derived_values(parity_dir: Path):
    cfg = AudioOmniConfig.from_json(parity_dir / "tiny_config.json")
    assert cfg.sample_size == 4096
    assert cfg.latent_length == 512
    assert cfg.output_samples == 4096
    assert cfg.window_s == pytest.approx(4096 / 44100)
    v = cfg.vae
    assert (v.encoder_channels, v.decoder_channels, v.c_mults, v.strides) == (16, 16, (1, 2), (2, 4))
    assert (v.encoder_latent_dim, v.latent_dim, v.downsampling_ratio, v.io_channels) == (16, 8, 8, 2)
    assert (cfg.dit.io_channels, cfg.dit.embed_dim, cfg.dit.depth, cfg.dit.num_heads) == (8, 128, 2, 2)
    assert cfg.dit.head_dim == 64
    assert (cfg.sync.seq_in, cfg.sync.seq_out) == (240, 8)
    assert (cfg.speech.seq_len, cfg.speech.proj_seq_len) == (32, 8)
    assert cfg.mel.seq_len == 8 and cfg.mel.num_frames == 1723 and cfg.mel.window_samples == 441000
    assert cfg.high_level_cond_ids == ("omni_prompt", "speech_prompt")
    assert cfg.low_level_cond_ids == ("sync_feature", "audio_input_prompt")
    # The relative MLLM name is a folder beside the config; its thinker is 64 wide.
    assert Path(cfg.mllm.model_name_or_path) == (parity_dir / "tiny_qwen").resolve()
    assert cfg.mllm.hidden_size == 64
    assert (cfg.mllm.pad_length, cfg.mllm.layer_idx) == (32, -2)
    # The reference's cwd-relative vocabulary path means the packaged copy.
    assert cfg.speech.vocab_file == PACKAGED_VOCAB


def test_tiny_config_round_trips_to_the_released_schema(parity_dir: Path):
    path = parity_dir / "tiny_config.json"
    cfg = AudioOmniConfig.from_json(path)
    assert cfg.to_dict(relative_to=parity_dir) == json.loads(path.read_text())
    assert AudioOmniConfig.from_dict(cfg.to_dict()) == cfg


def test_full_preset_is_the_released_config():
    cfg = get_preset("full")
    assert cfg.to_dict() == RELEASED_CONFIG
    assert (cfg.latent_length, cfg.output_samples) == (236, 483328)
    assert cfg.window_s == pytest.approx(10.9598, abs=1e-4)
    assert cfg.mllm.model_name_or_path == "Qwen/Qwen2.5-Omni-3B"  # hub id kept without the env var
    assert cfg.mllm.hidden_size == 2048
    assert (cfg.mllm.pad_length, cfg.speech.seq_len, cfg.speech.proj_seq_len) == (2048, 2584, 256)
    assert (cfg.sync.seq_out, cfg.mel.seq_len) == (128, 236)
    assert (cfg.dit.embed_dim, cfg.dit.depth, cfg.dit.num_heads, cfg.dit.io_channels) == (2048, 36, 32, 64)
    assert AudioOmniConfig.from_dict(cfg.to_dict()) == cfg


def test_tiny_preset_makes_ten_seconds_of_stereo():
    cfg = get_preset("tiny")
    assert cfg.output_samples >= 10 * cfg.sample_rate
    assert cfg.vae.io_channels == 2 and cfg.sample_rate == 44100
    assert cfg.dit.io_channels == cfg.vae.latent_dim
    assert cfg.mllm.model_name_or_path == "builtin:tiny"
    assert AudioOmniConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError) as err:
        get_preset("huge")
    for name in PRESETS:
        assert name in str(err.value)


def test_load_config_takes_a_preset_or_a_path(parity_dir: Path):
    assert load_config("tiny") == get_preset("tiny")
    assert load_config(parity_dir / "tiny_config.json").latent_length == 512
    with pytest.raises(ValueError, match="neither a model preset"):
        load_config("no-such-preset")
    with pytest.raises(FileNotFoundError):
        load_config(parity_dir / "missing.json")


def test_env_var_replaces_a_hub_id(tmp_path: Path, monkeypatch):
    local = tmp_path / "qwen3b"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"thinker_config": {"text_config": {"hidden_size": 96}}}))
    monkeypatch.setenv(MLLM_PATH_ENV, str(local))
    cfg = AudioOmniConfig.from_dict(_released())
    assert cfg.mllm.model_name_or_path == str(local.resolve())
    assert cfg.mllm.hidden_size == 96
    monkeypatch.setenv(MLLM_PATH_ENV, str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=MLLM_PATH_ENV):
        AudioOmniConfig.from_dict(_released())


def test_vocab_file_resolution(tmp_path: Path):
    d = _released()
    speech = d["model"]["conditioning"]["configs"][2]["config"]
    speech["vocab_file"] = "my_vocab.txt"
    assert AudioOmniConfig.from_dict(d, base_dir=tmp_path).speech.vocab_file == PACKAGED_VOCAB  # missing
    (tmp_path / "my_vocab.txt").write_text("a\n")
    assert AudioOmniConfig.from_dict(d, base_dir=tmp_path).speech.vocab_file == tmp_path / "my_vocab.txt"


def test_unknown_conditioner_type_is_rejected():
    d = _released()
    d["model"]["conditioning"]["configs"][1]["type"] = "clap_text"
    with pytest.raises(ValueError, match="unknown conditioner type 'clap_text'"):
        AudioOmniConfig.from_dict(d)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"]["diffusion"]["config"].update(io_channels=32), "io_channels"),
        (lambda d: d["model"]["pretransform"]["config"].update(downsampling_ratio=1024), "product"),
        (lambda d: d["model"]["diffusion"].update(diffusion_objective="v"), "diffusion_objective"),
        (lambda d: d["model"]["diffusion"]["config"].update(embed_dim=2000), "divisible"),
        (lambda d: d["model"].update(extra=1), "unknown field"),
        (lambda d: d.update(sample_size=100), "shorter than one latent frame"),
        (lambda d: d["model"]["conditioning"]["configs"][3]["config"].update(num_frames=0), "mel.num_frames"),
        (lambda d: d["model"]["conditioning"]["configs"].pop(1), "lacks conditioner"),
        (lambda d: d["model"]["diffusion"].update(low_level_cond_ids=["omni_prompt"]), "once"),
    ],
)
def test_bad_configs_raise_naming_the_value(edit, message):
    d = _released()
    edit(d)
    with pytest.raises(ValueError, match=message):
        AudioOmniConfig.from_dict(d)


def test_input_concat_is_the_source_latent_or_nothing():
    d = _released()
    d["model"]["diffusion"]["config"]["input_concat_dim"] = 64
    cfg = AudioOmniConfig.from_dict(d)
    assert cfg.dit.input_concat_dim == 64
    assert AudioOmniConfig.from_dict(cfg.to_dict()) == cfg
    assert "input_concat_dim" not in _released()["model"]["diffusion"]["config"]  # released: absent = 0
    d["model"]["diffusion"]["config"]["input_concat_dim"] = 16
    with pytest.raises(ValueError, match=r"input_concat_dim = 16 must be 0 or dit\.io_channels = 64"):
        AudioOmniConfig.from_dict(d)


def test_invalid_json_file(tmp_path: Path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AudioOmniConfig.from_json(p)


def test_schema_sizes_the_release_does_not_use_load():
    d = _released()
    d["model"]["pretransform"]["config"]["encoder"]["config"]["channels"] = 64  # output stays 128
    mel = d["model"]["conditioning"]["configs"][3]["config"]
    mel.update(target_sample_rate=16000, hop_length=160, num_frames=1001)
    cfg = AudioOmniConfig.from_dict(d)
    assert (cfg.vae.encoder_channels, cfg.vae.encoder_latent_dim) == (64, 128)
    assert (cfg.mel.sample_rate, cfg.mel.hop_length, cfg.mel.num_frames) == (16000, 160, 1001)
    assert cfg.mel.window_samples == 160000 and cfg.mel.window_s == 10.0
    assert AudioOmniConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"target_sample_rate = 16000 differs from the model's sample_rate = 44100"):
        cfg.require_job_support()
    get_preset("full").require_job_support()  # the release runs jobs


def test_mel_window_gives_exactly_the_frame_count():
    d = _released()
    d["model"]["conditioning"]["configs"][3]["config"]["hop_length"] = 512  # frame count stays 1723
    mel = AudioOmniConfig.from_dict(d).mel
    assert mel.num_frames == 1723 and mel.window_samples == 1722 * 512  # nearest to 10 s that gives 1723
    assert mel.window_samples // mel.hop_length + 1 == mel.num_frames
    assert "num_frames" not in AudioOmniConfig.from_dict(d).to_dict()["model"]["conditioning"]["configs"][3]["config"]
