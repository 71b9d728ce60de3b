"""Rectified-flow Euler sampler and seeded noise: analytic checks and the reference 4-step run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.dit import DiffusionTransformer
from model.sampler import MAX_SEED, euler_sample, per_sample_noise, reference_noise, timesteps

DIT_PREFIX = "model.model."


@pytest.fixture(scope="module")
def tiny_dit(parity_dir: Path) -> DiffusionTransformer:
    config = json.loads((parity_dir / "tiny_config.json").read_text())["model"]["diffusion"]["config"]
    dit = DiffusionTransformer.from_config(config)
    state = load_file(parity_dir / "tiny_state_dict.safetensors")
    dit.load_state_dict(
        {k.removeprefix(DIT_PREFIX): v.float() for k, v in state.items() if k.startswith(DIT_PREFIX)},
        strict=True,
    )
    return dit.eval()


@pytest.fixture(scope="module")
def vectors(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "tiny_vectors.safetensors")


@pytest.fixture(scope="module")
def sampling_case(parity_dir: Path) -> dict:
    with safe_open(parity_dir / "tiny_vectors.safetensors", "pt") as f:
        return json.loads(f.metadata()["case"])["sampling"]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------- schedule and update


def test_timesteps_are_uniform_from_one_to_zero() -> None:
    grid = timesteps(4)
    assert grid.dtype == torch.float32
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert timesteps(1).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("steps", [0, -3, 2.0, True])
def test_timesteps_reject_bad_step_counts(steps) -> None:
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        timesteps(steps)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        euler_sample(lambda x, t: x, torch.zeros(1, 2, 3), steps)


def test_constant_velocity_moves_by_minus_v() -> None:
    noise = torch.randn(2, 3, 5)
    velocity = torch.randn(2, 3, 5)
    out = euler_sample(lambda x, t: velocity, noise, 8)
    # Integrating dt from 1 to 0 sums to -1 whatever the step count.
    assert max_err(out, noise - velocity) < 1e-6


def test_linear_velocity_matches_the_euler_product() -> None:
    noise = torch.randn(1, 2, 4, dtype=torch.float64)
    steps = 10
    out = euler_sample(lambda x, t: x * t[:, None, None], noise, steps)
    # x_{k+1} = x_k * (1 + dt * t_k) with dt = -1/steps and t_k = 1 - k/steps.
    factor = 1.0
    for k in range(steps):
        factor *= 1.0 - (1.0 - k / steps) / steps
    assert out.dtype == torch.float32
    assert max_err(out, noise * factor) < 1e-6


def test_on_step_sees_every_input_state_and_time() -> None:
    seen = []

    def record(k, t, x, v):
        seen.append((k, t.clone(), x.clone(), v.clone()))

    noise = torch.randn(3, 2, 4)
    out = euler_sample(lambda x, t: torch.full_like(x, 2.0), noise, 4, on_step=record)
    assert [k for k, *_ in seen] == [0, 1, 2, 3]
    for k, t, x, v in seen:
        assert t.shape == (3,) and torch.all(t == 1 - k / 4)
        assert max_err(x, noise - 2.0 * k / 4) < 1e-6
        assert torch.all(v == 2.0)
    assert max_err(out, noise - 2.0) < 1e-6


def test_half_precision_velocity_is_accumulated_in_float32() -> None:
    noise = torch.randn(1, 2, 8)
    out = euler_sample(lambda x, t: torch.ones_like(x, dtype=torch.float16), noise, 3)
    assert out.dtype == torch.float32
    assert max_err(out, noise - 1.0) < 1e-6


def test_velocity_of_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"velocity_fn must return shape \(1, 2, 3\)"):
        euler_sample(lambda x, t: x[:, :1], torch.zeros(1, 2, 3), 2)


# ----------------------------------------------------------------------------- noise


def test_reference_noise_matches_the_reference_draw(vectors, sampling_case) -> None:
    expected = vectors[sampling_case["noise_name"]]
    got = reference_noise(sampling_case["seed"], expected.shape[0], tuple(expected.shape[1:]))
    assert torch.equal(got, expected)


def test_per_sample_noise_is_independent_of_the_batch() -> None:
    shape = (4, 16)
    batched = per_sample_noise([7, 123456789, MAX_SEED], shape)
    assert batched.shape == (3, 4, 16) and batched.dtype == torch.float32
    for i, seed in enumerate([7, 123456789, MAX_SEED]):
        assert torch.equal(batched[i : i + 1], per_sample_noise([seed], shape))
    assert torch.equal(per_sample_noise([42], shape), reference_noise(42, 1, shape))
    assert not torch.equal(batched[0], batched[1])
    assert per_sample_noise([1], shape, dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 1.5, "3", True])
def test_seeds_out_of_range_are_rejected(seed) -> None:
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 9223372036854775807\]"):
        per_sample_noise([seed], (2, 3))
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 9223372036854775807\]"):
        reference_noise(seed, 1, (2, 3))


def test_bad_noise_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one seed"):
        per_sample_noise([], (2, 3))
    with pytest.raises(ValueError, match=r"shape must be \(channels, frames\)"):
        per_sample_noise([1], (2, 0))
    with pytest.raises(ValueError, match=r"shape must be \(channels, frames\)"):
        reference_noise(1, 1, (2, 3, 4))
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        reference_noise(1, 0, (2, 3))


# ----------------------------------------------------------------------------- with the DiT


def test_full_sampling_run_matches_reference(tiny_dit, vectors, sampling_case) -> None:
    cond = vectors["samp.cond.cross_attn_cond"]
    mask = vectors["samp.cond.cross_attn_mask"] != 0
    glob = vectors["samp.cond.global_cond"]
    expected_noise = vectors[sampling_case["noise_name"]]
    noise = reference_noise(sampling_case["seed"], expected_noise.shape[0], tuple(expected_noise.shape[1:]))
    steps = sampling_case["steps"]
    errors: dict[str, float] = {}

    def check(k, t, x, v):
        errors[f"samp.step{k}.t"] = max_err(t, vectors[f"samp.step{k}.t"])
        if k >= 1:
            errors[f"samp.step{k}.x"] = max_err(x, vectors[f"samp.step{k}.x"])
        errors[f"samp.step{k}.v_cfg"] = max_err(v, vectors[f"samp.step{k}.v_cfg"])

    def velocity(x, t):
        return tiny_dit.guided_velocity(
            x, t, cond, mask, glob, cfg_scale=sampling_case["cfg_scale"], scale_phi=sampling_case["scale_phi"]
        )

    with torch.no_grad():
        latent = euler_sample(velocity, noise, steps, on_step=check)
    errors["samp.out.latent"] = max_err(latent, vectors["samp.out.latent"])
    for name, err in errors.items():
        print(f"{name}: max abs err {err:.3g}")
    assert len(errors) == 3 * steps  # t and v every step, x from step 1, the final latent
    assert all(err < 1e-3 for err in errors.values()), errors


def test_batched_sampling_equals_one_item_at_a_time(tiny_dit, vectors) -> None:
    cond = vectors["samp.cond.cross_attn_cond"]
    mask = vectors["samp.cond.cross_attn_mask"] != 0
    glob = vectors["samp.cond.global_cond"]
    seeds, scales = [11, 2024], [6.0, 3.0]
    shape = (tiny_dit.io_channels, 64)

    def sample(items: slice, cfg):
        noise = per_sample_noise(seeds[items], shape)

        def velocity(x, t):
            return tiny_dit.guided_velocity(x, t, cond[items], mask[items], glob[items], cfg_scale=cfg)

        with torch.no_grad():
            return euler_sample(velocity, noise, 3)

    batched = sample(slice(0, 2), torch.tensor(scales))
    for i, scale in enumerate(scales):
        single = sample(slice(i, i + 1), scale)
        assert max_err(batched[i : i + 1], single) < 1e-5


def test_sampler_does_not_import_the_network() -> None:
    import subprocess
    import sys

    code = "import sys, model.sampler; assert 'model.dit' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
