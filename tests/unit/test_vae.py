"""VAE on diffusers' AutoencoderOobleck: released key map, parity with the tiny vectors, presets."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.config import AudioOmniConfig, VAEConfig, get_preset
from model.vae import (
    RELEASED_PREFIX,
    build_vae,
    decode,
    diffusers_to_released,
    encode_moments,
    encode_raw,
    encode_sample,
    fold_weight_norm,
    load_released_vae_state,
    released_to_diffusers,
    released_vae_state,
)


@pytest.fixture(scope="module")
def released_tiny_vae_sd(parity_dir: Path) -> dict[str, torch.Tensor]:
    sd = load_file(parity_dir / "tiny_state_dict.safetensors")
    return {k: v.float() for k, v in sd.items() if k.startswith(RELEASED_PREFIX)}


@pytest.fixture(scope="module")
def tiny_vae(parity_dir: Path, released_tiny_vae_sd):
    cfg = AudioOmniConfig.from_json(parity_dir / "tiny_config.json")
    vae = build_vae(cfg.vae, sample_rate=cfg.sample_rate)
    load_released_vae_state(vae, released_tiny_vae_sd)
    return vae


@pytest.fixture(scope="module")
def vectors(parity_dir: Path):
    path = parity_dir / "tiny_vectors.safetensors"
    with safe_open(path, "pt") as fh:
        case = json.loads(fh.metadata()["case"])
    return load_file(path), case


@pytest.mark.parametrize(
    ("released", "diffusers"),
    [
        ("encoder.layers.0.weight_v", "encoder.conv1.weight_v"),
        ("encoder.layers.1.layers.0.layers.1.weight_g", "encoder.block.0.res_unit1.conv1.weight_g"),
        ("encoder.layers.5.layers.2.layers.2.alpha", "encoder.block.4.res_unit3.snake2.alpha"),
        ("encoder.layers.3.layers.3.beta", "encoder.block.2.snake1.beta"),
        ("encoder.layers.5.layers.4.bias", "encoder.block.4.conv1.bias"),
        ("encoder.layers.6.alpha", "encoder.snake1.alpha"),
        ("encoder.layers.7.weight_v", "encoder.conv2.weight_v"),
        ("decoder.layers.0.bias", "decoder.conv1.bias"),
        ("decoder.layers.1.layers.0.alpha", "decoder.block.0.snake1.alpha"),
        ("decoder.layers.2.layers.1.weight_v", "decoder.block.1.conv_t1.weight_v"),
        ("decoder.layers.5.layers.4.layers.3.bias", "decoder.block.4.res_unit3.conv2.bias"),
        ("decoder.layers.6.beta", "decoder.snake1.beta"),
        ("decoder.layers.7.weight_g", "decoder.conv2.weight_g"),
    ],
)
def test_key_map_matches_the_spec_table(released: str, diffusers: str):
    assert released_to_diffusers(released) == diffusers
    assert diffusers_to_released(diffusers, num_stages=5) == released


@pytest.mark.parametrize(
    "key",
    [
        "encoder.layers.0.alpha",
        "encoder.layers.1.layers.5.alpha",
        "decoder.layers.1.layers.2.layers.4.bias",
        "encoder.layers.1.layers.4.gamma",
        "bottleneck.foo",
    ],
)
def test_bad_released_keys_raise(key: str):
    with pytest.raises(ValueError, match=re.escape(key)):
        released_to_diffusers(key)


def test_full_vae_on_meta_matches_the_released_shapes(parity_dir: Path):
    expected: dict[str, list[int]] = {}
    for line in (parity_dir / "full_param_shapes.tsv").read_text().splitlines()[1:]:
        name, shape, _kind = line.split("\t")
        if name.startswith(RELEASED_PREFIX):
            expected[name.removeprefix(RELEASED_PREFIX)] = [int(s) for s in shape.split("x")]
    assert len(expected) == 365
    with torch.device("meta"):
        vae = build_vae(get_preset("full").vae)
    got = {k: list(v.shape) for k, v in released_vae_state(vae).items()}
    assert got == expected


def test_state_round_trip_is_exact(tiny_vae, released_tiny_vae_sd):
    back = released_vae_state(tiny_vae)
    assert {RELEASED_PREFIX + k for k in back} == set(released_tiny_vae_sd)
    for k, v in back.items():
        assert torch.equal(v, released_tiny_vae_sd[RELEASED_PREFIX + k]), k


def test_strict_load_names_missing_and_unexpected(parity_dir: Path, released_tiny_vae_sd):
    cfg = AudioOmniConfig.from_json(parity_dir / "tiny_config.json")
    vae = build_vae(cfg.vae)
    sd = dict(released_tiny_vae_sd)
    dropped = "pretransform.model.decoder.layers.4.weight_g"
    del sd[dropped]
    sd["pretransform.model.encoder.layers.9.layers.0.alpha"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_released_vae_state(vae, sd)
    msg = str(err.value)
    assert "decoder.conv2.weight_g" in msg  # missing, in diffusers names
    assert "encoder.layers.9.layers.0.alpha" in msg
    sd = dict(released_tiny_vae_sd)
    sd["pretransform.model.decoder.layers.0.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_released_vae_state(vae, sd)


def test_encoder_parity(tiny_vae, vectors):
    vec, case = vectors
    wav = vec["vae.in.wav"]  # (1, 2, 4096)
    with torch.inference_mode():
        raw = encode_raw(tiny_vae, wav)
        mean, std = encode_moments(tiny_vae, wav)
        sampled = encode_sample(tiny_vae, wav, vec[case["vae"]["eps_name"]])
    errors = {
        "pre_bottleneck": (raw - vec["vae.enc.pre_bottleneck"]).abs().max().item(),
        "mean": (mean - vec["vae.enc.mean"]).abs().max().item(),
        "scale_raw": (raw[:, mean.shape[1] :] - vec["vae.enc.scale_raw"]).abs().max().item(),
        "std": (std - vec["vae.enc.std"]).abs().max().item(),
        "latent_sampled": (sampled - vec["vae.enc.latent_sampled"]).abs().max().item(),
    }
    print("VAE encode max abs errors:", errors)
    for name, err in errors.items():
        assert err < 1e-4, (name, err)


def test_decoder_parity(tiny_vae, vectors):
    vec, _ = vectors
    with torch.inference_mode():
        from_mean = decode(tiny_vae, vec["vae.enc.mean"])
        from_sampled = decode(tiny_vae, vec["vae.enc.latent_sampled"])
    assert from_mean.shape == (1, 2, 4096) and from_mean.dtype == torch.float32
    errors = {
        "from_mean": (from_mean - vec["vae.dec.from_mean"]).abs().max().item(),
        "from_sampled": (from_sampled - vec["vae.dec.from_sampled"]).abs().max().item(),
    }
    print("VAE decode max abs errors:", errors)
    for name, err in errors.items():
        assert err < 2e-3, (name, err)


def test_fold_weight_norm_and_chunking_keep_outputs(parity_dir: Path, released_tiny_vae_sd, vectors):
    vec, _ = vectors
    cfg = AudioOmniConfig.from_json(parity_dir / "tiny_config.json")
    vae = build_vae(cfg.vae)
    load_released_vae_state(vae, released_tiny_vae_sd)
    z = vec["samp.out.latent"]  # (2, 8, 512)
    with torch.inference_mode():
        before = decode(vae, z)
        fold_weight_norm(vae)
        after = decode(vae, z)
        chunked = decode(vae, z, batch_chunk=1)
    assert not any(k.endswith(("weight_g", "weight_v")) for k in vae.state_dict())
    assert torch.equal(after, before)  # folding does the hook's arithmetic once: bit-exact
    # Per-item convolutions may sum in another order: float32 rounding only (absmax about 30).
    torch.testing.assert_close(chunked, before, rtol=0, atol=5e-4)
    with pytest.raises(ValueError, match="folded"):
        released_vae_state(vae)


def test_bad_inputs_raise(tiny_vae):
    with pytest.raises(ValueError, match=r"\(B, 8, T\)"):
        decode(tiny_vae, torch.zeros(1, 4, 10))
    with pytest.raises(ValueError, match="multiple of 8"):
        encode_raw(tiny_vae, torch.zeros(1, 2, 4095))
    with pytest.raises(ValueError, match="eps"):
        encode_sample(tiny_vae, torch.zeros(1, 2, 64), torch.zeros(1, 8, 7))
    with pytest.raises(ValueError, match="float32"):
        decode(build_vae(get_preset("tiny").vae).to(torch.bfloat16), torch.zeros(1, 8, 4))


def test_tiny_preset_decodes_ten_seconds_of_stereo():
    cfg = get_preset("tiny")
    vae = fold_weight_norm(build_vae(cfg.vae, sample_rate=cfg.sample_rate))
    latents = torch.randn(1, cfg.vae.latent_dim, cfg.latent_length, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        decode(vae, latents)  # warm-up: the first call at a new length picks conv kernels
        start = time.perf_counter()
        audio = decode(vae, latents)
        elapsed_s = time.perf_counter() - start
    print(f"tiny VAE decode of {cfg.latent_length} latents -> {audio.shape[-1]} samples in {elapsed_s:.3f} s")
    assert audio.shape == (1, 2, cfg.output_samples)
    assert audio.shape[-1] >= 10 * cfg.sample_rate
    assert torch.isfinite(audio).all()


def test_encoder_output_width_may_differ_from_its_first_width():
    """The released schema lets the encoder's latent_dim differ from its channels; diffusers ties them."""
    cfg = VAEConfig(
        encoder_channels=8,
        decoder_channels=12,
        c_mults=(1, 2),
        strides=(2, 4),
        encoder_latent_dim=16,
        latent_dim=8,
        downsampling_ratio=8,
        io_channels=2,
    )
    vae = build_vae(cfg)
    wav = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0))
    assert encode_raw(vae, wav).shape == (1, 16, 8)
    sd = released_vae_state(vae)
    # the closing conv keeps its released name (layers.N+2 for N stages), 16 outputs from 8 * 2 inputs
    assert sd["encoder.layers.4.weight_v"].shape == (16, 16, 3)
    assert sd["encoder.layers.0.weight_v"].shape == (8, 2, 7)
    other = build_vae(cfg)
    load_released_vae_state(other, sd)
    assert torch.equal(encode_raw(other, wav), encode_raw(vae, wav))
