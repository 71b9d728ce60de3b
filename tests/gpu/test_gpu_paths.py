"""The precision and fast-path checks on CUDA (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from model.fastpath import no_host_sync, pad_batch
from model.memory import activation_bytes, sequence_lengths
from model.precision import Precision, cast_dit, dit_autocast
from model.sampler import euler_sample, per_sample_noise
from tests.unit.test_precision import BATCH_TOL, CONFIG, REL_TOL, build_dit, rel_err

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda")


@pytest.fixture(scope="module")
def setup():
    fp32 = build_dit().to(DEVICE)
    dits = {
        Precision.FP32: fp32,
        Precision.FP16: fp32,
        Precision.BF16: cast_dit(build_dit().to(DEVICE), "bf16"),
    }
    latent, prefix, context = sequence_lengths(CONFIG)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(3, context, dtype=torch.bool)
    mask[1, context // 2 :] = False
    inputs = {
        "cross": torch.randn(3, context, CONFIG.cond_dim, generator=g).to(DEVICE),
        "mask": mask.to(DEVICE),
        "prefix": torch.randn(3, prefix, CONFIG.cond_dim, generator=g).to(DEVICE),
        "noise": per_sample_noise([5, 6, 7], (CONFIG.dit.io_channels, latent), device=DEVICE),
        "scales": torch.tensor([6.0, 1.0, 3.0]),
    }
    return dits, inputs


def sample(dit, precision, inputs, rows=slice(None), steps=4):
    def velocity(x, t):
        with dit_autocast(precision, DEVICE):
            return dit.guided_velocity(
                x,
                t,
                inputs["cross"][rows],
                inputs["mask"][rows],
                inputs["prefix"][rows],
                inputs["scales"][rows],
            )

    with torch.inference_mode():
        return euler_sample(velocity, inputs["noise"][rows], steps)


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.FP16])
def test_low_precision_close_to_fp32_on_cuda(setup, precision) -> None:
    dits, inputs = setup
    torch.backends.cuda.matmul.allow_tf32 = False
    err = rel_err(sample(dits[precision], precision, inputs), sample(dits[Precision.FP32], Precision.FP32, inputs))
    assert err < REL_TOL[precision], err


@pytest.mark.parametrize("precision", list(Precision))
def test_batched_equals_unbatched_on_cuda(setup, precision) -> None:
    dits, inputs = setup
    batched = sample(dits[precision], precision, inputs)
    for i in range(3):
        single = sample(dits[precision], precision, inputs, slice(i, i + 1))
        assert rel_err(batched[i : i + 1], single) < BATCH_TOL[precision]


def test_padded_batch_on_cuda(setup) -> None:
    dits, inputs = setup
    p = pad_batch(inputs["cross"], inputs["mask"], inputs["prefix"], inputs["noise"], inputs["scales"])
    padded = {
        "cross": p.cross,
        "mask": p.cross_mask,
        "prefix": p.prefix,
        "noise": p.noise,
        "scales": p.cfg_scale,
    }
    out = sample(dits[Precision.BF16], Precision.BF16, padded)[: p.num_real]
    assert rel_err(out, sample(dits[Precision.BF16], Precision.BF16, inputs)) < BATCH_TOL[Precision.BF16]


def test_sampling_loop_makes_no_host_sync(setup) -> None:
    dits, inputs = setup
    sample(dits[Precision.BF16], Precision.BF16, inputs, steps=1)  # warm-up outside the check
    with no_host_sync(DEVICE):
        sample(dits[Precision.BF16], Precision.BF16, inputs, steps=3)


def test_activation_estimate_bounds_cuda_peak(setup) -> None:
    dits, inputs = setup
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    sample(dits[Precision.BF16], Precision.BF16, inputs, steps=2)
    measured = torch.cuda.max_memory_allocated() - base
    assert measured <= activation_bytes(CONFIG, 3, "bf16") * 1.5, measured
