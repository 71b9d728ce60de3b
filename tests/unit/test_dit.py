"""DiT: checkpoint key names, parity with the reference vectors, CFG batching, validation, FLOPs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from model.dit import DiffusionTransformer

DIT_PREFIX = "model.model."
FULL_DIT = dict(io_channels=64, embed_dim=2048, depth=36, num_heads=32, cond_token_dim=768, global_cond_dim=768)


def load_tiny_dit(parity_dir: Path) -> DiffusionTransformer:
    config = json.loads((parity_dir / "tiny_config.json").read_text())["model"]["diffusion"]["config"]
    dit = DiffusionTransformer.from_config(config)
    state = load_file(parity_dir / "tiny_state_dict.safetensors")
    dit_state = {k.removeprefix(DIT_PREFIX): v.float() for k, v in state.items() if k.startswith(DIT_PREFIX)}
    dit.load_state_dict(dit_state, strict=True)
    return dit.eval()


@pytest.fixture(scope="module")
def tiny_dit(parity_dir: Path) -> DiffusionTransformer:
    return load_tiny_dit(parity_dir)


@pytest.fixture(scope="module")
def vectors(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "tiny_vectors.safetensors")


@pytest.fixture(scope="module")
def case(parity_dir: Path) -> dict:
    with safe_open(parity_dir / "tiny_vectors.safetensors", "pt") as f:
        return json.loads(f.metadata()["case"])


@pytest.fixture(scope="module")
def dit_inputs(vectors) -> tuple[torch.Tensor, ...]:
    return (
        vectors["dit.in.x"],
        vectors["dit.in.t"],
        vectors["dit.in.cross_cond"],
        vectors["dit.in.cross_mask"] != 0,
        vectors["dit.in.global_cond"],
    )


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------- weights


def test_state_dict_matches_released_names_and_shapes(parity_dir: Path) -> None:
    released = {}
    for line in (parity_dir / "full_param_shapes.tsv").read_text().splitlines():
        name, shape, _kind = line.split("\t")
        if name.startswith(DIT_PREFIX):
            released[name.removeprefix(DIT_PREFIX)] = tuple(int(n) for n in shape.split("x"))
    assert len(released) == 554  # spec §2.2
    with torch.device("meta"):
        dit = DiffusionTransformer(**FULL_DIT)
    ours = {name: tuple(t.shape) for name, t in dit.state_dict().items()}
    assert set(ours) == set(released), set(ours) ^ set(released)
    assert ours == released
    buffers = {name for name, _ in dit.named_buffers()}
    assert buffers == {k for k in released if k.endswith(".beta") or k.endswith("inv_freq")}


def test_inv_freq_buffer_matches_checkpoint(parity_dir: Path) -> None:
    state = load_file(parity_dir / "tiny_state_dict.safetensors")
    fresh = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=1, num_heads=2, cond_token_dim=768, global_cond_dim=768
    )
    released = state[DIT_PREFIX + "transformer.rotary_pos_emb.inv_freq"]
    assert max_err(fresh.transformer.rotary_pos_emb.inv_freq, released) < 1e-7


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("name", "method", "input_index"),
    [
        ("dit.dbg.timestep_embed", "embed_timestep", 1),
        ("dit.dbg.cond_embed", "embed_cond", 2),
        ("dit.dbg.global_embed", "embed_global", 4),
    ],
)
def test_embeddings_match_reference(tiny_dit, vectors, dit_inputs, name, method, input_index) -> None:
    with torch.no_grad():
        got = getattr(tiny_dit, method)(dit_inputs[input_index])
    err = max_err(got, vectors[name])
    print(f"{name}: max abs err {err:.3g}")
    assert err < 1e-4


def test_velocity_matches_reference_for_every_case_call(tiny_dit, vectors, case, dit_inputs) -> None:
    calls = case["dit"]["calls"]
    assert calls, "the vectors' case lists no DiT calls"
    for call in calls:
        with torch.no_grad():
            v = tiny_dit.guided_velocity(*dit_inputs, cfg_scale=call["cfg_scale"], scale_phi=call["scale_phi"])
        err = max_err(v, vectors[call["name"]])
        print(f"{call['name']} (cfg {call['cfg_scale']}, phi {call['scale_phi']}): max abs err {err:.3g}")
        assert err < (1e-4 if call["cfg_scale"] == 1 else 5e-4), call


def test_forward_is_cfg_one(tiny_dit, dit_inputs) -> None:
    with torch.no_grad():
        plain = tiny_dit(*dit_inputs)
        ones = tiny_dit.guided_velocity(*dit_inputs, cfg_scale=torch.ones(2))
    assert torch.equal(plain, ones)


def test_per_sample_cfg_equals_unbatched_calls(tiny_dit, dit_inputs) -> None:
    scales = torch.tensor([6.0, 2.5])
    with torch.no_grad():
        batched = tiny_dit.guided_velocity(*dit_inputs, cfg_scale=scales, scale_phi=0.5)
        for i, scale in enumerate(scales.tolist()):
            item = tuple(tensor[i : i + 1] for tensor in dit_inputs)
            single = tiny_dit.guided_velocity(*item, cfg_scale=scale, scale_phi=0.5)
            assert max_err(batched[i : i + 1], single) < 1e-5


def test_mixed_unit_and_guided_scales(tiny_dit, dit_inputs) -> None:
    with torch.no_grad():
        mixed = tiny_dit.guided_velocity(*dit_inputs, cfg_scale=torch.tensor([1.0, 6.0]))
        plain = tiny_dit(*(tensor[:1] for tensor in dit_inputs))
        guided = tiny_dit.guided_velocity(*(tensor[1:] for tensor in dit_inputs), cfg_scale=6.0)
    assert max_err(mixed[:1], plain) < 1e-5
    assert max_err(mixed[1:], guided) < 1e-5


def test_float_mask_equals_bool_mask(tiny_dit, dit_inputs) -> None:
    x, t, cond, mask, glob = dit_inputs
    with torch.no_grad():
        assert torch.equal(tiny_dit(x, t, cond, mask, glob), tiny_dit(x, t, cond, mask.float(), glob))


def test_fully_masked_row_attends_everything_without_nan(tiny_dit, dit_inputs) -> None:
    x, t, cond, _mask, glob = dit_inputs
    with torch.no_grad():
        none_open = tiny_dit(x, t, cond, torch.zeros(cond.shape[:2], dtype=torch.bool), glob)
        all_open = tiny_dit(x, t, cond, torch.ones(cond.shape[:2], dtype=torch.bool), glob)
    assert torch.isfinite(none_open).all()
    assert max_err(none_open, all_open) < 1e-6


def test_bf16_autocast_runs_close_to_float32(tiny_dit, dit_inputs) -> None:
    with torch.no_grad():
        reference = tiny_dit.guided_velocity(*dit_inputs, cfg_scale=6.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_dit.guided_velocity(*dit_inputs, cfg_scale=6.0)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; 5% of the output range is far below any wiring error.
    assert max_err(low, reference) < 0.05 * reference.abs().max().item()


# ----------------------------------------------------------------------------- validation


def _tiny_inputs(batch=2, channels=8, frames=6, context=4, prefix=3, width=768):
    return dict(
        x=torch.randn(batch, channels, frames),
        t=torch.rand(batch),
        cross_cond=torch.randn(batch, context, width),
        cross_mask=torch.ones(batch, context, dtype=torch.bool),
        global_cond=torch.randn(batch, prefix, width),
    )


@pytest.mark.parametrize(
    ("field", "bad", "expected"),
    [
        ("x", torch.randn(2, 7, 6), "(B, 8, T)"),
        ("x", torch.randn(2, 8), "(B, 8, T)"),
        ("t", torch.rand(3), "(2,)"),
        ("t", torch.rand(2, 1), "(2,)"),
        ("cross_cond", torch.randn(2, 4, 512), "(2, S, 768)"),
        ("cross_cond", torch.randn(2, 0, 768), "(2, S, 768)"),
        ("cross_mask", torch.ones(2, 5, dtype=torch.bool), "(2, 4)"),
        ("global_cond", torch.randn(1, 3, 768), "(2, G, 768)"),
    ],
)
def test_bad_shapes_name_the_expected_shape(tiny_dit, field, bad, expected) -> None:
    inputs = _tiny_inputs()
    inputs[field] = bad
    with pytest.raises(ValueError, match=re.escape(f"{field} must have shape {expected}")):
        tiny_dit(**inputs)
    with pytest.raises(ValueError, match=field):
        tiny_dit.guided_velocity(**inputs, cfg_scale=6.0)


def test_bad_guidance_arguments(tiny_dit) -> None:
    inputs = _tiny_inputs()
    with pytest.raises(ValueError, match=r"cfg_scale tensor must have shape \(2,\)"):
        tiny_dit.guided_velocity(**inputs, cfg_scale=torch.ones(3))
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        tiny_dit.guided_velocity(**inputs, cfg_scale=float("nan"))
    with pytest.raises(ValueError, match=r"scale_phi must be in \[0, 1\]"):
        tiny_dit.guided_velocity(**inputs, cfg_scale=6.0, scale_phi=1.5)


def test_constructor_rejects_other_head_dims() -> None:
    with pytest.raises(ValueError, match="head dim is fixed at 64"):
        DiffusionTransformer(
            io_channels=8, embed_dim=128, depth=1, num_heads=4, cond_token_dim=768, global_cond_dim=768
        )
    with pytest.raises(ValueError, match="depth must be a positive int"):
        DiffusionTransformer(
            io_channels=8, embed_dim=128, depth=0, num_heads=2, cond_token_dim=768, global_cond_dim=768
        )
    with pytest.raises(ValueError, match="patch_size=2 is not supported"):
        DiffusionTransformer.from_config(dict(FULL_DIT, patch_size=2))


# ----------------------------------------------------------------------------- input concat


def _concat_dit(seed: int = 0) -> DiffusionTransformer:
    torch.manual_seed(seed)
    dit = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=2, num_heads=2, cond_token_dim=768, global_cond_dim=768, input_concat_dim=8
    )
    return dit.eval()


def test_input_concat_widens_only_the_input_layers() -> None:
    dit = _concat_dit()
    assert tuple(dit.preprocess_conv.weight.shape) == (16, 16, 1)
    assert tuple(dit.transformer.project_in.weight.shape) == (128, 16)
    assert tuple(dit.transformer.project_out.weight.shape) == (8, 128)
    assert tuple(dit.postprocess_conv.weight.shape) == (8, 8, 1)
    assert DiffusionTransformer.from_config(dict(FULL_DIT, input_concat_dim=64)).input_concat_dim == 64


def test_input_concat_with_zero_weights_on_its_channels_equals_the_plain_dit() -> None:
    """The source channels enter after x in the input conv and projection: zero their weights and the
    network is exactly the released layout's, whatever the source holds."""
    dit = _concat_dit()
    plain = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=2, num_heads=2, cond_token_dim=768, global_cond_dim=768
    ).eval()
    with torch.no_grad():
        dit.preprocess_conv.weight[:, 8:].zero_()
        dit.preprocess_conv.weight[8:].zero_()
        dit.transformer.project_in.weight[:, 8:].zero_()
        state = dit.state_dict()
        state["preprocess_conv.weight"] = state["preprocess_conv.weight"][:8, :8]
        state["transformer.project_in.weight"] = state["transformer.project_in.weight"][:, :8]
        plain.load_state_dict(state)
        inputs = _tiny_inputs()
        got = dit(**inputs, input_concat=torch.randn(2, 8, 6) * 10)
        assert max_err(got, plain(**inputs)) < 1e-5


def test_input_concat_conditions_each_item_and_survives_guidance() -> None:
    dit = _concat_dit()
    inputs = _tiny_inputs()
    src = torch.randn(2, 8, 6)
    moved = src.clone()
    moved[0] += 1.0
    with torch.no_grad():
        a, b = dit(**inputs, input_concat=src), dit(**inputs, input_concat=moved)
        assert max_err(a[0], b[0]) > 1e-3  # item 0's source reaches item 0's output ...
        assert max_err(a[1], b[1]) < 1e-6  # ... and not its batch-mate's
        # Guidance keeps the source in both halves; cfg 1 is the plain forward; the prepared-context
        # fast path equals the plain guided call.
        assert max_err(dit.guided_velocity(**inputs, cfg_scale=1.0, input_concat=src), a) == 0.0
        plain = dit.guided_velocity(**inputs, cfg_scale=5.0, input_concat=src)
        context = dit.prepare_context(inputs["cross_cond"], inputs["cross_mask"])
        fast = dit.guided_velocity(
            inputs["x"], inputs["t"], None, None, inputs["global_cond"], 5.0, context=context, input_concat=src
        )
        assert max_err(plain, fast) < 1e-5
        zero_ctx = dict(inputs, cross_cond=torch.zeros_like(inputs["cross_cond"]))
        uncond = dit(**zero_ctx, input_concat=src)
        assert max_err(plain, uncond + (a - uncond) * 5.0) < 1e-5


def test_input_concat_is_required_exactly_when_configured(tiny_dit) -> None:
    inputs = _tiny_inputs()
    with pytest.raises(ValueError, match="input_concat_dim 0: pass input_concat=None"):
        tiny_dit(**inputs, input_concat=torch.zeros(2, 8, 6))
    dit = _concat_dit()
    for bad in (None, torch.zeros(2, 8, 5), torch.zeros(1, 8, 6)):
        with pytest.raises(ValueError, match=re.escape("input_concat must have shape (2, 8, 6)")):
            dit(**inputs, input_concat=bad)
        with pytest.raises(ValueError, match=re.escape("input_concat must have shape (2, 8, 6)")):
            dit.guided_velocity(**inputs, cfg_scale=3.0, input_concat=bad)
    with pytest.raises(ValueError, match="input_concat_dim must be a non-negative int"):
        DiffusionTransformer(**FULL_DIT, input_concat_dim=-1)


# ----------------------------------------------------------------------------- training init


def test_init_weights_makes_every_residual_branch_start_at_zero() -> None:
    torch.manual_seed(0)
    dit = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=2, num_heads=2, cond_token_dim=768, global_cond_dim=768
    )
    dit.init_weights()
    zeroed = [dit.preprocess_conv.weight, dit.postprocess_conv.weight]
    for layer in dit.transformer.layers:
        zeroed += [
            layer.self_attn.to_out.weight,
            layer.cross_attn.to_out.weight,
            *layer.ff.ff[2].parameters(),
        ]
        assert torch.equal(layer.pre_norm.gamma, torch.full((128,), 0.5))  # ones, halved
    assert all(not p.any() for p in zeroed)
    assert dit.transformer.layers[0].self_attn.to_qkv.weight.abs().max() > 0

    inputs = _tiny_inputs()
    with torch.no_grad():
        v = dit(**inputs)
        # Every block adds zero and the convs add zero, so the network is project_out . project_in.
        expected = dit.transformer.project_out(dit.transformer.project_in(inputs["x"].transpose(1, 2)))
    assert max_err(v, expected.transpose(1, 2)) < 1e-6


# ----------------------------------------------------------------------------- FLOPs


def test_flops_per_forward_matches_hand_count() -> None:
    # E=128, C=8, depth 2, context/global width 768, FF hidden 512; B=2, T=5, G=3, S=4 -> N=8.
    dit = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=2, num_heads=2, cond_token_dim=768, global_cond_dim=768
    )
    timestep_mlp = 256 * 128 + 128 * 128  # 49152 MACs
    context_mlp = 4 * (768 * 128 + 128 * 128)  # 458752
    global_mlp = 3 * (768 * 128 + 128 * 128)  # 344064
    latent_io = 5 * (8 * 8) * 2 + 5 * (8 * 128) * 2  # two 1x1 convs + project_in/out: 10880
    self_attn = 8 * 128 * 384 + 8 * 8 * 128 * 2 + 8 * 128 * 128  # qkv, QK^T + AV, out: 540672
    cross_attn = 8 * 128 * 128 + 4 * 128 * 256 + 8 * 4 * 128 * 2 + 8 * 128 * 128  # 401408
    feed_forward = 8 * 128 * 1024 + 8 * 512 * 128  # 1572864
    per_item = timestep_mlp + context_mlp + global_mlp + latent_io + 2 * (self_attn + cross_attn + feed_forward)
    assert per_item == 5892736
    assert dit.flops_per_forward(batch=2, latent_len=5, prefix_len=3, context_len=4) == 2 * 2 * per_item

    # Independent check of the dense part: PyTorch's counter sees every Linear and conv (not SDPA on CPU).
    inputs = _tiny_inputs(batch=2, frames=5, context=4, prefix=3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dit(**inputs)
    attention_products = 2 * 2 * 2 * (8 * 8 * 128 * 2 + 8 * 4 * 128 * 2)  # 2 x B x depth x MACs
    assert counter.get_total_flops() + attention_products == 2 * 2 * per_item


def test_flops_rejects_negative_sizes() -> None:
    dit = DiffusionTransformer(
        io_channels=8, embed_dim=128, depth=1, num_heads=2, cond_token_dim=768, global_cond_dim=768
    )
    with pytest.raises(ValueError, match="latent_len must be a non-negative int"):
        dit.flops_per_forward(batch=1, latent_len=-1, prefix_len=0, context_len=1)
