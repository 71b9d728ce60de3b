"""DiT sampling fast path: a context prepared once and no cross-attention for the unconditional half.

Both are exact rewrites of the plain path (up to float rounding), so every check compares the fast
path with the plain tensor API on the same random model and inputs.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.build import build_sampler
from model.config import get_preset
from model.dit import DiffusionTransformer, PreparedContext
from model.requests import GenerationRequest
from model.sampler import euler_sample

TOL = 1e-5


@pytest.fixture(scope="module")
def dit() -> DiffusionTransformer:
    torch.manual_seed(0)
    # PyTorch default init (not init_weights): every residual branch, cross-attention included, is live.
    model = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=2, num_heads=2, cond_token_dim=768, global_cond_dim=768
    )
    return model.eval()


def _inputs(batch: int = 3, frames: int = 6, context: int = 5, prefix: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(batch, context, generator=g) > 0.3
    mask[:, 0] = True
    return {
        "x": torch.randn(batch, 8, frames, generator=g),
        "t": torch.rand(batch, generator=g),
        "cross_cond": 3 * torch.randn(batch, context, 768, generator=g),
        "cross_mask": mask,
        "global_cond": torch.randn(batch, prefix, 768, generator=g),
    }


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _fast(dit: DiffusionTransformer, inputs: dict[str, torch.Tensor], **guidance) -> torch.Tensor:
    context = dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"])
    return dit.guided_velocity(inputs["x"], inputs["t"], None, None, inputs["global_cond"], context=context, **guidance)


@pytest.mark.parametrize(
    "guidance",
    [
        {"cfg_scale": 1.0},
        {"cfg_scale": 6.0},
        {"cfg_scale": torch.tensor([1.0, 6.0, 2.5])},
        {"cfg_scale": torch.tensor([1.0, 1.0, 1.0])},
        {"cfg_scale": 6.0, "scale_phi": 0.5},
        {"cfg_scale": torch.tensor([6.0, 1.0, 3.0]), "scale_phi": 0.5},
    ],
    ids=["cfg1", "cfg6", "per_item_with_1", "per_item_all_1", "phi0.5", "per_item_phi0.5"],
)
def test_prepared_guided_velocity_equals_plain(dit, guidance) -> None:
    inputs = _inputs()
    with torch.no_grad():
        plain = dit.guided_velocity(**inputs, **guidance)
        fast = _fast(dit, inputs, **guidance)
    err = max_err(fast, plain)
    print(f"{guidance}: max abs err {err:.3g} (|v| max {plain.abs().max().item():.3g})")
    assert err < TOL


def test_prepared_forward_equals_plain_forward(dit) -> None:
    inputs = _inputs()
    with torch.no_grad():
        plain = dit(**inputs)
        context = dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"])
        fast = dit(inputs["x"], inputs["t"], None, None, inputs["global_cond"], context=context)
    assert max_err(fast, plain) < TOL


def test_fully_masked_rows_keep_the_open_everything_rule(dit) -> None:
    inputs = _inputs()
    inputs["cross_mask"][1] = False  # row 1 has no key to attend: it attends to all of them
    all_open = dict(inputs, cross_mask=inputs["cross_mask"].clone())
    all_open["cross_mask"][1] = True
    with torch.no_grad():
        plain = dit.guided_velocity(**inputs, cfg_scale=6.0)
        fast = _fast(dit, inputs, cfg_scale=6.0)
        opened = _fast(dit, all_open, cfg_scale=6.0)
    assert torch.isfinite(fast).all()
    assert max_err(fast, plain) < TOL
    assert max_err(fast[1], opened[1]) < TOL


def test_zero_context_cross_attention_is_exactly_zero(dit) -> None:
    """What the skip relies on (spec §3.6), and that the conditional context does matter."""
    inputs = _inputs()
    block = dit.transformer.layers[0]
    h = torch.randn(3, 9, 128)
    with torch.no_grad():
        zero_context = dit.embed_cond(torch.zeros_like(inputs["cross_cond"]))
        key_mask = inputs["cross_mask"][:, None, None, :]
        assert torch.equal(block.cross_attn(h, zero_context, key_mask), torch.zeros_like(h))
        v_cond = dit(**inputs)
        v_null = dit(**dict(inputs, cross_cond=torch.zeros_like(inputs["cross_cond"])))
    assert max_err(v_cond, v_null) > 1e-2  # cross-attention is live, so the equality tests mean something


def test_prepared_context_contents(dit) -> None:
    inputs = _inputs()
    with torch.no_grad():
        context = dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"].float())
        projected = dit.embed_cond(inputs["cross_cond"])
        k, v = dit.transformer.layers[1].cross_attn.to_kv(projected).chunk(2, dim=-1)
    assert isinstance(context, PreparedContext) and context.batch == 3 and context.context_len == 5
    assert len(context.kv) == dit.depth
    assert context.kv[1][0].shape == (3, 2, 5, 64)
    assert torch.equal(context.kv[1][0].transpose(1, 2).reshape(3, 5, 128), k)
    assert torch.equal(context.kv[1][1].transpose(1, 2).reshape(3, 5, 128), v)
    assert context.key_mask.dtype == torch.bool and context.key_mask.shape == (3, 1, 1, 5)


def test_bad_prepared_context_arguments(dit) -> None:
    inputs = _inputs()
    context = dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"])
    x, t, glob = inputs["x"], inputs["t"], inputs["global_cond"]
    with pytest.raises(ValueError, match="not both"):
        dit.guided_velocity(**inputs, cfg_scale=6.0, context=context)
    with pytest.raises(ValueError, match="prepared for 3 items, x has 2"):
        dit.guided_velocity(x[:2], t[:2], None, None, glob[:2], cfg_scale=6.0, context=context)
    with pytest.raises(ValueError, match="or a prepared context"):
        dit.guided_velocity(x, t, None, None, glob, cfg_scale=6.0)
    with pytest.raises(ValueError, match="or a prepared context"):
        dit(x, t, None, None, glob)
    with pytest.raises(ValueError, match="global_cond must have shape"):
        dit(x, t, None, None, glob[:1], context=context)
    with pytest.raises(ValueError, match="cross_mask must have shape"):
        dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"][:, :2])


# ----------------------------------------------------------------------------- FLOPs


def test_fast_path_flops_match_hand_count(dit) -> None:
    # E=128, C=8, depth 2, widths 768, FF hidden 512; B=2, T=5, G=3, S=4 -> N=8 positions.
    trunk = 256 * 128 + 128 * 128  # timestep MLP: 49152
    trunk += 3 * (768 * 128 + 128 * 128)  # global MLP: 344064
    trunk += 5 * (8 * 8) * 2 + 5 * (8 * 128) * 2  # 1x1 convs + project_in/out: 10880
    trunk += 2 * (8 * 128 * 384 + 8 * 8 * 128 * 2 + 8 * 128 * 128)  # self-attn x depth: 1081344
    trunk += 2 * (8 * 128 * 1024 + 8 * 512 * 128)  # SwiGLU x depth: 3145728
    cross = 2 * (8 * 128 * 128 + 8 * 4 * 128 * 2 + 8 * 128 * 128)  # q, QK^T + AV, out x depth: 540672
    context = 4 * (768 * 128 + 128 * 128) + 2 * 4 * 128 * 256  # context MLP + to_kv x depth: 720896
    assert (trunk, cross, context) == (4631168, 540672, 720896)
    sizes = {"batch": 2, "latent_len": 5, "prefix_len": 3, "context_len": 4}

    naive = dit.flops_per_forward(**{**sizes, "batch": 4})
    assert naive == 2 * 4 * (trunk + cross + context)
    assert dit.flops_per_guided_step(**sizes, prepared_context=False) == naive
    assert dit.flops_per_guided_step(**sizes) == 2 * (4 * trunk + 2 * cross)  # 38174720
    assert dit.flops_per_guided_step(**sizes, guided=False) == 2 * 2 * (trunk + cross)
    assert dit.flops_prepare_context(batch=2, context_len=4) == 2 * 2 * context

    # Independent check with PyTorch's counter (it sees every Linear, conv and bmm, not SDPA on CPU).
    inputs = _inputs(batch=2, frames=5, context=4, prefix=3)
    with torch.no_grad():
        with FlopCounterMode(display=False) as prepare_counter:
            prepared = dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"])
        with FlopCounterMode(display=False) as step_counter:
            dit.guided_velocity(inputs["x"], inputs["t"], None, None, inputs["global_cond"], 6.0, context=prepared)
    assert prepare_counter.get_total_flops() == dit.flops_prepare_context(batch=2, context_len=4)
    # 2 x depth x (self-attention on the 2B rows + cross-attention on the B conditional rows only).
    attention_products = 2 * 2 * (4 * 8 * 8 * 128 * 2 + 2 * 8 * 4 * 128 * 2)
    assert step_counter.get_total_flops() + attention_products == dit.flops_per_guided_step(**sizes)


def test_full_size_saving_is_the_context_and_null_cross_attention() -> None:
    with torch.device("meta"):  # shapes only: no 3B parameters are allocated
        full = DiffusionTransformer(
            io_channels=64, embed_dim=2048, depth=36, num_heads=32, cond_token_dim=768, global_cond_dim=768
        )
    sizes = {"batch": 16, "latent_len": 236, "prefix_len": 364, "context_len": 2304}
    naive = full.flops_per_forward(**{**sizes, "batch": 32})
    fast = full.flops_per_guided_step(**sizes)
    assert fast < naive
    print(f"full size, batch 16, cfg != 1: {fast / naive:.4f} of the naive FLOPs per step")


# ----------------------------------------------------------------------------- sampler part


def test_sampler_part_fast_path_equals_plain_guidance() -> None:
    sampler = build_sampler(get_preset("tiny"))
    cfg = sampler.config
    g = torch.Generator().manual_seed(3)
    requests = [
        GenerationRequest(
            mllm_features=torch.randn(6 + 4 * i, cfg.mllm.hidden_size, generator=g).bfloat16(),
            seed=10 + i,
            steps=2,
            cfg_scale=scale,
        )
        for i, scale in enumerate((7.0, 1.0))
    ]
    cond = sampler.condition(requests)
    noise = torch.randn(2, cfg.dit.io_channels, cfg.latent_length, generator=g)
    scales = torch.tensor([7.0, 1.0])

    def plain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sampler.dit.guided_velocity(x, t, cond.cross, cond.cross_mask, cond.prefix, scales)

    with torch.no_grad():
        fast = sampler.sample_latents(cond, noise, 2, scales)
        reference = euler_sample(plain, noise, 2)
    err = max_err(fast, reference)
    print(f"sample_latents fast vs plain: max abs err {err:.3g}")
    assert err < TOL
