"""Checkpoint names, the encoder/sampler split, strict loading and conversion."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.checkpoint import (
    PREFIX_MAP,
    CheckpointMismatchError,
    convert_checkpoint,
    file_sha256,
    internal_to_released,
    load_into,
    load_part_state_dict,
    load_state_dict,
    part_of,
    released_to_internal,
    split_parts,
)
from model.config import AudioOmniConfig
from model.vae import build_vae, released_vae_state

THINKER = "conditioner.conditioners.omni_prompt.model.thinker."


@pytest.fixture(scope="module")
def tiny_sd(parity_dir: Path) -> dict[str, torch.Tensor]:
    """The tiny released state dict as stored: parameters float16, buffers float32."""
    return load_file(parity_dir / "tiny_state_dict.safetensors")


@pytest.fixture(scope="module")
def tiny_cfg(parity_dir: Path) -> AudioOmniConfig:
    return AudioOmniConfig.from_json(parity_dir / "tiny_config.json")


def _tree(shapes: dict[str, tuple[torch.Size, bool]]) -> torch.nn.Module:
    """A module whose state-dict names are exactly `shapes` (name -> (shape, is_buffer))."""
    root = torch.nn.Module()
    for name, (shape, is_buffer) in shapes.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if part not in mod._modules:
                mod.add_module(part, torch.nn.Module())
            mod = mod._modules[part]
        if is_buffer:
            mod.register_buffer(leaf, torch.zeros(shape))
        else:
            mod.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape)))
    return root


def _sampler_module(tiny_sd, tiny_cfg) -> torch.nn.Module:
    """Stand-in for the sampler module: the small parts by released leaf names, the real VAE."""
    shapes = {
        released_to_internal(k): (v.shape, v.dtype == torch.float32)  # buffers are the float32 tensors
        for k, v in tiny_sd.items()
        if part_of(k) == "sampler" and not k.startswith("pretransform.")
    }
    module = _tree(shapes)
    module.add_module("vae", build_vae(tiny_cfg.vae))
    return module


def test_prefix_table_maps_every_released_prefix():
    assert released_to_internal("model.model.transformer.rotary_pos_emb.inv_freq") == (
        "dit.transformer.rotary_pos_emb.inv_freq"
    )
    assert released_to_internal(THINKER + "model.embed_tokens.weight") == "thinker.model.embed_tokens.weight"
    assert released_to_internal("conditioner.conditioners.omni_prompt.proj_features.bias") == (
        "omni_proj.proj_features.bias"
    )
    assert released_to_internal("conditioner.conditioners.sync_feature.proj.weight") == "sync.proj.weight"
    assert released_to_internal("conditioner.conditioners.speech_prompt.empty_speech_feat") == (
        "speech.empty_speech_feat"
    )
    assert released_to_internal("conditioner.conditioners.audio_input_prompt.proj_features.weight") == (
        "mel.proj_features.weight"
    )
    assert released_to_internal("pretransform.model.decoder.layers.0.bias") == "vae.decoder.conv1.bias"
    assert part_of(THINKER + "lm_head.weight") == "encoder"
    assert part_of("conditioner.conditioners.omni_prompt.proj_features.weight") == "sampler"
    assert part_of("vfeat_extractor.blocks.0.attn.qkv.weight") == "sync"  # the Synchformer's own file
    assert {internal for _, internal, _ in PREFIX_MAP} == {
        "thinker.", "omni_proj.", "sync.", "speech.", "mel.", "dit.", "vae.", "vfeat_extractor.",
    }  # fmt: skip
    with pytest.raises(ValueError, match="known prefixes"):
        part_of("conditioner.conditioners.clap.weight")
    with pytest.raises(ValueError, match="vae_num_stages"):
        internal_to_released("vae.decoder.conv2.weight_g")


def test_names_round_trip_for_every_tiny_key(tiny_sd):
    for key in tiny_sd:
        assert internal_to_released(released_to_internal(key), vae_num_stages=2) == key


def test_split_puts_every_key_in_one_part(tiny_sd):
    parts = split_parts(tiny_sd)
    assert set(parts) == {"encoder", "sampler"}
    assert len(parts["encoder"]) == 88
    assert all(k.startswith(THINKER) for k in parts["encoder"])
    assert not any(k.startswith(THINKER) for k in parts["sampler"])
    assert len(parts["encoder"]) + len(parts["sampler"]) == len(tiny_sd) == 346
    assert set(parts["encoder"]) | set(parts["sampler"]) == set(tiny_sd)


def test_ckpt_loads_with_weights_only(tmp_path: Path, tiny_sd):
    p = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_sd, "other": 1}, p)
    sd = load_state_dict(p)
    assert set(sd) == set(tiny_sd)
    assert all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in tiny_sd.items())
    flat = tmp_path / "flat.pt"
    torch.save(dict(list(tiny_sd.items())[:3]), flat)  # a bare state dict works too
    assert len(load_state_dict(flat)) == 3
    legacy = tmp_path / "legacy.pth"  # pre-zip torch.save format: cannot be memory-mapped
    torch.save({"state_dict": dict(list(tiny_sd.items())[:2])}, legacy, _use_new_zipfile_serialization=False)
    assert len(load_state_dict(legacy)) == 2


def test_safetensors_loads(tmp_path: Path, tiny_sd, parity_dir: Path):
    sd = load_state_dict(parity_dir / "tiny_state_dict.safetensors")
    assert set(sd) == set(tiny_sd)
    assert set(load_part_state_dict(parity_dir / "tiny_state_dict.safetensors", "encoder")) == {
        k for k in tiny_sd if k.startswith(THINKER)
    }


class _NotATensor:
    pass


def test_bad_checkpoint_files_raise(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "absent.ckpt")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path)  # a folder without part files
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        load_state_dict(tmp_path / "w.bin")
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"junk\.ckpt"):
        load_state_dict(tmp_path / "junk.ckpt")
    with open(tmp_path / "obj.ckpt", "wb") as fh:
        pickle.dump({"state_dict": {"a": _NotATensor()}}, fh, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict(tmp_path / "obj.ckpt")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "int.ckpt")
    with pytest.raises(ValueError, match="not a tensor"):
        load_state_dict(tmp_path / "int.ckpt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="safetensors"):
        load_state_dict(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="known parts"):
        load_part_state_dict(tmp_path, "decoder")


def test_load_into_sampler_maps_names_and_buffers(tiny_sd, tiny_cfg):
    module = _sampler_module(tiny_sd, tiny_cfg)
    load_into(module, tiny_sd, part="sampler")  # encoder keys are ignored
    state = module.state_dict()
    for key, value in tiny_sd.items():
        if part_of(key) == "sampler" and not key.startswith("pretransform."):
            got = state[released_to_internal(key)]
            assert got.dtype == torch.float32
            assert torch.equal(got, value.float()), key
    inv_freq = state["dit.transformer.rotary_pos_emb.inv_freq"]
    assert inv_freq.abs().sum() > 0  # a buffer, loaded like a parameter
    vae = released_vae_state(module.vae)
    for key, value in vae.items():
        assert torch.equal(value, tiny_sd["pretransform.model." + key].float()), key


def test_load_into_meta_module_and_dtype(tiny_sd, tiny_cfg):
    with torch.device("meta"):
        module = _sampler_module(tiny_sd, tiny_cfg)
    load_into(module, tiny_sd, part="sampler")
    assert not any(t.is_meta for t in module.state_dict().values())
    assert module.sync.proj.weight.dtype == torch.float32
    assert torch.equal(module.sync.proj.weight, tiny_sd["conditioner.conditioners.sync_feature.proj.weight"].float())
    real = _sampler_module(tiny_sd, tiny_cfg)
    load_into(real, tiny_sd, part="sampler", dtype=torch.bfloat16)
    assert real.dit.timestep_features.weight.dtype == torch.bfloat16


def test_load_into_encoder_takes_the_thinker(tiny_sd, parity_dir: Path):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerForConditionalGeneration

    config = Qwen2_5OmniConfig.from_pretrained(parity_dir / "tiny_qwen")
    encoder = torch.nn.Module()
    encoder.add_module("thinker", Qwen2_5OmniThinkerForConditionalGeneration(config.thinker_config))
    load_into(encoder, tiny_sd, part="encoder")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(encoder.thinker.get_parameter(key), tiny_sd[THINKER + key].float())


def test_strict_mismatch_names_missing_unexpected_and_shapes(tiny_sd, tiny_cfg):
    module = _sampler_module(tiny_sd, tiny_cfg)
    sd = dict(tiny_sd)
    del sd["model.model.to_cond_embed.0.weight"]
    del sd["pretransform.model.decoder.layers.4.weight_g"]
    sd["model.model.transformer.bogus.weight"] = torch.zeros(2)
    sd["conditioner.conditioners.sync_feature.proj.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as err:
        load_into(module, sd, part="sampler")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "2 missing" in msg and "model.model.to_cond_embed.0.weight" in msg
    assert "pretransform.model.decoder.layers.4.weight_g" in msg  # VAE names reported as released
    assert "1 unexpected" in msg and "model.model.transformer.bogus.weight" in msg
    assert "conditioner.conditioners.sync_feature.proj.bias: checkpoint [5] vs module [768]" in msg
    assert err.value.missing and err.value.unexpected and err.value.shape_mismatches
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_into(module, split_parts(tiny_sd)["encoder"], part="sampler")  # wrong part file


def test_convert_round_trip(tmp_path: Path, tiny_sd):
    sd = dict(tiny_sd)
    # Tie two thinker tensors so the pickle shares storage, as a tied checkpoint would.
    sd[THINKER + "lm_head.weight"] = sd[THINKER + "model.embed_tokens.weight"]
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, src)
    paths = convert_checkpoint(src, tmp_path / "converted")
    assert set(paths) == {"encoder", "sampler"}
    assert paths["encoder"].name == "encoder.safetensors" and paths["sampler"].name == "sampler.safetensors"
    sha = file_sha256(src)
    for part, path in paths.items():
        with safe_open(path, "pt") as fh:
            meta = fh.metadata()
        assert meta["part"] == part and meta["source_sha256"] == sha and meta["source_name"] == "model.ckpt"
    back = load_state_dict(tmp_path / "converted")
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    encoder_only = load_part_state_dict(tmp_path / "converted", "encoder")
    assert len(encoder_only) == 88
    # A safetensors source converts the same way.
    st = tmp_path / "model.safetensors"
    save_file(dict(tiny_sd), st)
    paths2 = convert_checkpoint(st, tmp_path / "converted2")
    assert load_file(paths2["sampler"]).keys() == split_parts(tiny_sd)["sampler"].keys()
    with pytest.raises(ValueError, match="labelled part"):
        (tmp_path / "mixed").mkdir()
        paths2["sampler"].rename(tmp_path / "mixed" / "encoder.safetensors")
        load_state_dict(tmp_path / "mixed")
