"""Precision settings, fixed-shape batches and the memory model on the tiny preset (CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import get_preset
from model.dit import DiffusionTransformer
from model.fastpath import batch_buckets, bucket_for, pad_batch, plan_batches
from model.memory import (
    LiveTensorTracker,
    ParameterCounts,
    activation_bytes,
    plan_replicas,
    sequence_lengths,
    weight_bytes,
)
from model.precision import Precision, apply_precision, cast_dit, dit_autocast, policy
from model.sampler import euler_sample, per_sample_noise

CONFIG = get_preset("tiny")
STEPS = 4
# ||bf16 - fp32|| / ||fp32|| of the sampled latents: bf16 keeps 8 mantissa bits (~4e-3 per op); over
# 4 guided steps through 2 blocks the measured error is ~1e-2. fp16 keeps 11 bits.
REL_TOL = {Precision.FP32: 1e-6, Precision.BF16: 3e-2, Precision.FP16: 5e-3}
# Batched vs one-at-a-time: rows never mix, only kernel choices differ with the row count.
BATCH_TOL = {Precision.FP32: 1e-5, Precision.BF16: 2e-2, Precision.FP16: 3e-3}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def build_dit() -> DiffusionTransformer:
    d = CONFIG.dit
    torch.manual_seed(0)
    dit = DiffusionTransformer(
        io_channels=d.io_channels,
        embed_dim=d.embed_dim,
        depth=d.depth,
        num_heads=d.num_heads,
        cond_token_dim=d.cond_token_dim,
        global_cond_dim=d.global_cond_dim,
    )
    return dit.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def dits() -> dict[Precision, DiffusionTransformer]:
    fp32 = build_dit()
    return {
        Precision.FP32: fp32,
        Precision.BF16: cast_dit(build_dit(), Precision.BF16),
        Precision.FP16: fp32,  # fp16 is autocast over float32 weights
    }


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    latent, prefix, context = sequence_lengths(CONFIG)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(3, context, dtype=torch.bool)
    mask[1, context // 2 :] = False  # rows with different key masks
    return {
        "cross": torch.randn(3, context, CONFIG.cond_dim, generator=g),
        "mask": mask,
        "prefix": torch.randn(3, prefix, CONFIG.cond_dim, generator=g),
        "noise": per_sample_noise([5, 6, 7], (CONFIG.dit.io_channels, latent)),
        "scales": torch.tensor([6.0, 1.0, 3.0]),
    }


def sample(dit, precision, inputs, rows=slice(None)) -> torch.Tensor:
    def velocity(x, t):
        with dit_autocast(precision, "cpu"):
            return dit.guided_velocity(
                x,
                t,
                inputs["cross"][rows],
                inputs["mask"][rows],
                inputs["prefix"][rows],
                inputs["scales"][rows],
            )

    with torch.inference_mode():
        return euler_sample(velocity, inputs["noise"][rows], STEPS)


# ----------------------------------------------------------------------------- precision


def test_parse_accepts_names_and_rejects_others() -> None:
    assert Precision.parse("BF16") is Precision.BF16
    assert Precision.parse(Precision.FP16) is Precision.FP16
    with pytest.raises(ValueError, match=r"'int8'.*\['fp32', 'bf16', 'fp16'\]"):
        Precision.parse("int8")


def test_policies() -> None:
    assert policy("bf16").dit_param_dtype == torch.bfloat16 and policy("bf16").dit_autocast_dtype is None
    assert policy("fp16").dit_param_dtype == torch.float32 and policy("fp16").compute_dtype == torch.float16
    assert policy("fp32").compute_dtype == torch.float32


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.FP16])
def test_low_precision_sampling_stays_close_to_fp32(dits, inputs, precision) -> None:
    reference = sample(dits[Precision.FP32], Precision.FP32, inputs)
    low = sample(dits[precision], precision, inputs)
    assert low.dtype == torch.float32  # the Euler state is accumulated in float32
    assert torch.isfinite(low).all()
    err = rel_err(low, reference)
    assert 0 < err < REL_TOL[precision], err


@pytest.mark.parametrize("precision", list(Precision))
def test_batched_equals_unbatched(dits, inputs, precision) -> None:
    batched = sample(dits[precision], precision, inputs)
    for i in range(3):
        single = sample(dits[precision], precision, inputs, slice(i, i + 1))
        assert rel_err(batched[i : i + 1], single) < BATCH_TOL[precision], (i, precision)


def test_apply_precision_keeps_vae_and_mel_in_float32() -> None:
    part = nn.Module()
    part.dit, part.vae, part.mel = nn.Linear(4, 4), nn.Conv1d(2, 2, 3), nn.Linear(3, 3)
    part.autocast_dtype = None
    part.vae.to(torch.bfloat16)  # even if someone cast it, it goes back to float32
    assert apply_precision(part, "bf16") is Precision.BF16
    assert part.dit.weight.dtype == torch.bfloat16 and part.autocast_dtype is None
    assert part.vae.weight.dtype == torch.float32 and part.mel.weight.dtype == torch.float32
    apply_precision(part, "fp16")
    assert part.dit.weight.dtype == torch.float32 and part.autocast_dtype == torch.float16


# ----------------------------------------------------------------------------- fixed-shape batches


def test_buckets_and_batch_plan() -> None:
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert bucket_for(3, batch_buckets(16)) == 4
    with pytest.raises(ValueError, match="exceeds the largest bucket 16"):
        bucket_for(17, batch_buckets(16))
    # step counts 100/25 interleaved; long-audio segments are just more requests with their steps
    assert plan_batches([100, 25, 100, 100, 25], max_batch=2) == [[0, 2], [1, 4], [3]]
    with pytest.raises(ValueError, match="max_batch"):
        plan_batches([1], max_batch=0)


def test_padded_batch_gives_the_unpadded_rows(dits, inputs) -> None:
    dit = dits[Precision.FP32]
    padded = pad_batch(inputs["cross"], inputs["mask"], inputs["prefix"], inputs["noise"], inputs["scales"])
    assert padded.noise.shape[0] == 4 and padded.num_real == 3
    as_inputs = {
        "cross": padded.cross,
        "mask": padded.cross_mask,
        "prefix": padded.prefix,
        "noise": padded.noise,
        "scales": padded.cfg_scale,
    }
    out = sample(dit, Precision.FP32, as_inputs)[: padded.num_real]
    assert rel_err(out, sample(dit, Precision.FP32, inputs)) < 1e-5
    with pytest.raises(ValueError, match="cfg_scale has 2 rows but noise has 3"):
        pad_batch(inputs["cross"], inputs["mask"], inputs["prefix"], inputs["noise"], inputs["scales"][:2])


# ----------------------------------------------------------------------------- memory model


@pytest.mark.parametrize("batch", [1, 4])
def test_activation_estimate_bounds_the_measured_peak(dits, batch) -> None:
    dit = dits[Precision.FP32]
    latent, prefix, context = sequence_lengths(CONFIG)
    args = (
        torch.randn(batch, CONFIG.dit.io_channels, latent),
        torch.rand(batch),
        torch.randn(batch, context, CONFIG.cond_dim),
        torch.ones(batch, context, dtype=torch.bool),
        torch.randn(batch, prefix, CONFIG.cond_dim),
    )
    with torch.inference_mode(), LiveTensorTracker() as tracker:
        dit.guided_velocity(*args, cfg_scale=6.0)
    # The Euler state term (4 float32 latents) is outside one forward; the rest should be within ~20%.
    estimate = activation_bytes(CONFIG, batch, "fp32") - 4 * batch * CONFIG.dit.io_channels * latent * 4
    assert 0.8 < tracker.peak_bytes / estimate < 1.2, (tracker.peak_bytes, estimate)


def test_replica_plan_for_the_full_model_on_80_gib() -> None:
    full = get_preset("full")
    counts = ParameterCounts(dit=3_037_532_304, vae=156_112_514, conditioners=10_970_320)  # meta count
    assert 6.0 < weight_bytes(counts, "bf16") / 2**30 < 6.5
    plan = plan_replicas(full, "bf16", 80 * 2**30, max_batch=16, counts=counts)
    assert plan.batch == 16 and plan.replicas >= 2
    with pytest.raises(ValueError, match="needs"):
        plan_replicas(full, "fp32", 8 * 2**30, counts=counts)
