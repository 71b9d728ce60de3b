"""One prepared GPU check of the sampler (issue 7): throughput, MFU, memory, VAE decode, thinker prefill.

Builds the chosen preset with random weights on the device (nothing is downloaded) and prints ONE
JSON object as its last line. Sections:

* ``sampling``: the guided Euler loop (cfg 6, so 2B rows per forward) for each precision and batch.
  ``batched`` rows take the production fast path (``DiffusionTransformer.prepare_context`` once per
  run, then steps that skip the unconditional half's all-zero cross-attention), as
  ``SamplerPart.sample_latents`` does. Per-step time is measured on a short run (``timed_steps``
  after ``warmup_steps``) and multiplied out to 100 and 25 steps (every step costs the same); the
  one-off context preparation is timed on its own and added in the ``*_incl_prepare`` fields.
  ``validation`` rows run the full step count for some cases and compare with that extrapolation.
* MFU = matmul FLOP/s really executed (``flops_per_guided_step``) / the device's dense bf16 peak
  (one peak for every row, named in ``peak``); ``effective_*`` divide the naive count
  (``flops_per_forward`` of 2B rows, what the reference computes per step) by the same time.
  fp32 runs with TF32 off.
* ``reference``: the reference's style, one request at a time (batch 1) under fp16 autocast with
  float32 weights, the naive path (context MLP and key/values every step, full 2B forward).
* ``vae_decode``: float32 decode of the latents to audio; ``thinker_prefill``: a random thinker of
  the Qwen2.5-Omni-3B sizes (spec §2.5) over ``prefill_tokens`` text tokens.
* ``sync_extractor``: the preset's Synchformer extractor (random weights; the full-size one for
  ``full``) on a made 640x360 30 fps clip, by ``bench/video_throughput.measure``: seconds of video
  decoded and turned into sync features per second.

Usage: ``python bench/gpu_check.py [--preset full|tiny] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from model.config import AudioOmniConfig, get_preset  # noqa: E402
from model.dit import DiffusionTransformer, PreparedContext  # noqa: E402
from model.fastpath import no_host_sync  # noqa: E402
from model.memory import activation_bytes, sequence_lengths  # noqa: E402
from model.precision import Precision, cast_dit, check_supported, dit_autocast  # noqa: E402
from model.sampler import euler_sample, per_sample_noise  # noqa: E402

CFG_SCALE = 6.0
# Dense (no sparsity) bf16 tensor-core peaks from the vendor datasheets, TFLOP/s.
PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 756.0, "H100 PCIe datasheet, bf16 dense"),
    ("H100 NVL", 835.0, "H100 NVL datasheet, bf16 dense"),
    ("H100", 989.4, "H100 SXM datasheet, bf16 dense"),
    ("H200", 989.4, "H200 SXM datasheet, bf16 dense"),
    ("A100", 312.0, "A100 datasheet, bf16 dense"),
)

# Qwen2.5-Omni-3B thinker sizes (AUDIO_OMNI_SPEC.md §2.5).
THINKER_3B = {
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    },
    "audio_config": {
        "d_model": 1280,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "num_mel_bins": 128,
        "output_dim": 2048,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 2048,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    # Special token ids of the released tokenizer (all >= 151643, the first special token).
    "audio_token_index": 151646,
    "image_token_index": 151655,
    "video_token_index": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "audio_start_token_id": 151647,
    "audio_end_token_id": 151648,
}
THINKER_TINY = {
    "text_config": {
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    },
    "audio_config": {
        "d_model": 32,
        "encoder_layers": 1,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "output_dim": 64,
    },
    "vision_config": {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [0],
    },
    "audio_token_index": 1001,
    "image_token_index": 1002,
    "video_token_index": 1003,
    "vision_start_token_id": 1004,
    "vision_end_token_id": 1005,
    "audio_start_token_id": 1006,
    "audio_end_token_id": 1007,
}


# --------------------------------------------------------------------------- helpers


def peak_for(device: torch.device) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it comes from) for the device; (None, why) when unknown."""
    if device.type != "cuda":
        return None, "no peak on CPU: MFU not computed"
    name = torch.cuda.get_device_name(device)
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"{source} ({name})"
    return None, f"unknown device {name!r}: MFU not computed"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_dit(config: AudioOmniConfig, device: torch.device, seed: int) -> DiffusionTransformer:
    """Random DiT of ``config`` built directly on ``device`` (PyTorch default init: non-zero outputs)."""
    torch.manual_seed(seed)
    with torch.device(device):
        dit = DiffusionTransformer(**dataclasses.asdict(config.dit))
    return dit.eval().requires_grad_(False)


def make_inputs(config: AudioOmniConfig, batch: int, device: torch.device, seed: int) -> dict[str, Any]:
    """Random conditioning of the preset's sizes; the thinker part of the context is half padding."""
    latent, prefix, context = sequence_lengths(config)
    g = torch.Generator(device="cpu").manual_seed(seed)
    cross = torch.randn(batch, context, config.cond_dim, generator=g)  # (B, S, D)
    mask = torch.ones(batch, context, dtype=torch.bool)  # (B, S)
    mask[:, config.mllm.pad_length // 2 : config.mllm.pad_length] = False  # a half-used thinker window
    glob = torch.randn(batch, prefix, config.cond_dim, generator=g)  # (B, G, D)
    noise = per_sample_noise(list(range(seed, seed + batch)), (config.dit.io_channels, latent))
    return {
        "cross": cross.to(device),
        "mask": mask.to(device),
        "prefix": glob.to(device),
        "noise": noise.to(device),
        "scales": torch.full((batch,), CFG_SCALE),  # CPU: the guidance wrapper reads it on the host
    }


def prepare(dit: DiffusionTransformer, precision: Precision, inputs: dict[str, Any]) -> PreparedContext:
    """The fast path's once-per-run context (under the same precision as the steps)."""
    with torch.inference_mode(), dit_autocast(precision, inputs["noise"].device):
        return dit.prepare_context(inputs["cross"], inputs["mask"])


def run_sampler(
    dit: DiffusionTransformer,
    precision: Precision,
    inputs: dict[str, Any],
    steps: int,
    context: PreparedContext | None = None,
) -> torch.Tensor:
    """Euler loop of ``steps``; with ``context`` the fast path, without it the naive plain path."""
    device = inputs["noise"].device

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with dit_autocast(precision, device):
            if context is None:
                return dit.guided_velocity(x, t, inputs["cross"], inputs["mask"], inputs["prefix"], inputs["scales"])
            return dit.guided_velocity(x, t, None, None, inputs["prefix"], inputs["scales"], context=context)

    with torch.inference_mode():
        return euler_sample(velocity, inputs["noise"], steps)


def run_full(
    dit: DiffusionTransformer, precision: Precision, inputs: dict[str, Any], steps: int, fast: bool
) -> torch.Tensor:
    """A whole sampling run as production (fast) or the reference (naive) does it."""
    context = prepare(dit, precision, inputs) if fast else None
    return run_sampler(dit, precision, inputs, steps, context)


# --------------------------------------------------------------------------- sections


def time_sampling(
    dit: DiffusionTransformer,
    config: AudioOmniConfig,
    precision: Precision,
    batch: int,
    device: torch.device,
    *,
    warmup_steps: int,
    timed_steps: int,
    peak_tflops: float | None,
    style: str,
) -> dict[str, Any]:
    """Per-step time of one (precision, batch) and what it gives at 100 and 25 steps.

    ``style="batched"``: the fast path; ``"reference"``: the naive path.
    """
    fast = style == "batched"
    latent, prefix, context_len = sequence_lengths(config)
    inputs = make_inputs(config, batch, device, seed=1000 + batch)
    sizes = {"latent_len": latent, "prefix_len": prefix, "context_len": context_len}
    naive_flops = dit.flops_per_forward(2 * batch, **sizes)  # guided: 2B rows, all of the work
    flops_per_step = dit.flops_per_guided_step(batch, **sizes, prepared_context=fast)
    prepare_flops = dit.flops_prepare_context(batch, context_len) if fast else 0
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
    run_full(dit, precision, inputs, warmup_steps, fast)  # warm-up, its context freed on return
    prepare_s, context = timed(lambda: prepare(dit, precision, inputs) if fast else None, device)
    seconds, out = timed(lambda: run_sampler(dit, precision, inputs, timed_steps, context), device)
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{precision.value} batch {batch}: non-finite latents")
    context_bytes = 0 if context is None else sum(k.nbytes + v.nbytes for k, v in context.kv)
    context = None  # free the keys/values before the next row
    s_per_step = seconds / timed_steps
    tflops = flops_per_step / s_per_step / 1e12
    effective_tflops = naive_flops / s_per_step / 1e12
    row: dict[str, Any] = {
        "style": style,
        "path": "fast: prepared context, unconditional cross-attention skipped"
        if fast
        else "naive: context MLP and key/values every step, full 2B forward",
        "precision": precision.value,
        "batch": batch,
        "warmup_steps": warmup_steps,
        "timed_steps": timed_steps,
        "s_per_step": s_per_step,
        "extrapolated_from_timed_steps": True,
        "flops_count": "flops_per_guided_step(prepared_context=True)"
        if fast
        else "flops_per_forward(2 * batch) (naive)",
        "flops_per_step": flops_per_step,
        "flops_per_step_naive": naive_flops,
        "achieved_tflops": tflops,
        "mfu": None if peak_tflops is None else tflops / peak_tflops,
        "effective_tflops": effective_tflops,
        "effective_mfu": None if peak_tflops is None else effective_tflops / peak_tflops,
        "prepare_context_s": prepare_s if fast else 0.0,
        "prepare_context_flops": prepare_flops,
        "prepared_context_bytes": context_bytes,
    }
    for steps in (100, 25):
        s_per_clip = s_per_step * steps / batch
        row[f"s_per_clip_{steps}"] = s_per_clip
        row[f"clips_per_s_{steps}"] = 1.0 / s_per_clip
        with_prepare = (row["prepare_context_s"] + s_per_step * steps) / batch
        row[f"s_per_clip_{steps}_incl_prepare"] = with_prepare
        row[f"clips_per_s_{steps}_incl_prepare"] = 1.0 / with_prepare
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        row["peak_mem_bytes"] = peak
        row["activation_peak_bytes"] = peak - base_bytes
    row["activation_model_bytes"] = activation_bytes(config, batch, precision)
    return row


def validate_extrapolation(
    dit: DiffusionTransformer,
    config: AudioOmniConfig,
    precision: Precision,
    batch: int,
    steps: int,
    row: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """Run the full ``steps`` once (context preparation included) and compare with the extrapolation."""
    inputs = make_inputs(config, batch, device, seed=2000 + batch)
    fast = row["style"] == "batched"
    seconds, _ = timed(lambda: run_full(dit, precision, inputs, steps, fast), device)
    extrapolated = row["prepare_context_s"] + row["s_per_step"] * steps
    return {
        "style": row["style"],
        "precision": precision.value,
        "batch": batch,
        "steps": steps,
        "measured_s": seconds,
        "extrapolated_s": extrapolated,
        "measured_over_extrapolated": seconds / extrapolated,
    }


def check_no_host_sync(dit: DiffusionTransformer, config: AudioOmniConfig, device: torch.device) -> str:
    """Sample 2 steps with host syncs turned into errors (CUDA); 'ok' or the error."""
    if device.type != "cuda":
        return "not checked: CPU has no asynchronous queue"
    inputs = make_inputs(config, 1, device, seed=7)
    run_full(dit, Precision.BF16, inputs, 1, True)  # first call pins and allocates outside the check
    try:
        with no_host_sync(device):
            run_full(dit, Precision.BF16, inputs, 2, True)  # the fast path, preparation included
    except RuntimeError as exc:
        return f"host sync found: {exc}"
    return "ok"


def time_vae_decode(config: AudioOmniConfig, batches: list[int], device: torch.device) -> dict[str, Any]:
    from model import vae as vae_mod  # diffusers: imported only here

    torch.manual_seed(3)
    with torch.device(device):
        vae = vae_mod.build_vae(config.vae, sample_rate=config.sample_rate)
    vae = vae.eval().requires_grad_(False)
    if hasattr(vae_mod, "fold_weight_norm"):
        vae = vae_mod.fold_weight_norm(vae)
    rows = []
    for batch in batches:
        latents = torch.randn(batch, config.vae.latent_dim, config.latent_length, device=device)
        free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            vae_mod.decode(vae, latents[:1])  # warm-up
            seconds, audio = timed(lambda latents=latents: vae_mod.decode(vae, latents, batch_chunk=4), device)
        row = {"batch": batch, "s": seconds, "s_per_clip": seconds / batch, "audio_shape": list(audio.shape)}
        if device.type == "cuda":
            row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
        rows.append(row)
    return {"dtype": "float32", "batch_chunk": 4, "rows": rows}


def time_thinker_prefill(preset: str, tokens: int, device: torch.device, repeats: int) -> dict[str, Any]:
    import transformers
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    sizes = THINKER_3B if preset == "full" else THINKER_TINY
    config = Qwen2_5OmniThinkerConfig(**copy.deepcopy(sizes))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(5)
    with torch.device(device):
        thinker = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    thinker = thinker.eval().requires_grad_(False)
    params = sum(p.numel() for p in thinker.parameters())
    text = config.text_config
    vocab = text.vocab_size
    first_special = min(v for k, v in sizes.items() if k.endswith(("_index", "_id")))
    ids = torch.randint(0, min(vocab, first_special), (1, tokens), device=device)  # ordinary text ids
    mask = torch.ones_like(ids)

    def prefill() -> torch.Tensor:
        with torch.inference_mode():
            out = thinker(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.hidden_states[-2]

    prefill()  # warm-up
    times = [timed(prefill, device)[0] for _ in range(repeats)]
    times.sort()
    median = times[len(times) // 2]
    # Matmul FLOPs: 2 * tokens * (non-embedding text params) + causal attention scores and values.
    text_params = sum(p.numel() for n, p in thinker.named_parameters() if n.startswith("model."))
    text_params -= thinker.model.embed_tokens.weight.numel()
    lm_head = thinker.lm_head.weight.numel()
    attn = 2 * text.num_hidden_layers * tokens * tokens * text.hidden_size  # QK^T + AV, causal half
    flops = 2 * tokens * (text_params + lm_head) + attn
    return {
        "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "params": params,
        "transformers": transformers.__version__,
        "repeats": repeats,
        "s_median": median,
        "s_all": times,
        "approx_flops": flops,
        "approx_tflops": flops / median / 1e12,
    }


# --------------------------------------------------------------------------- main


def time_sync_extractor(preset: str, device: torch.device, quick: bool) -> dict[str, Any]:
    from bench.video_throughput import measure

    return measure(preset, str(device), seconds=10.0, repeats=1 if quick else 3)


def plan(preset: str, quick: bool) -> dict[str, Any]:
    if preset == "full":
        return {
            "batches": [1, 4, 16],
            "steps": {"bf16": (2, 5), "fp32": (1, 2), "fp16": (2, 5)},
            "validate": [("bf16", 1, 100), ("bf16", 16, 25), ("fp16", 1, 25)],
            "vae_batches": [1, 16],
            "prefill_tokens": 2048,
            "prefill_repeats": 5,
        }
    if quick:
        return {
            "batches": [1, 2],
            "steps": {"bf16": (1, 1), "fp32": (1, 1), "fp16": (1, 1)},
            "validate": [("bf16", 1, 2)],
            "vae_batches": [1],
            "prefill_tokens": 64,
            "prefill_repeats": 1,
        }
    return {
        "batches": [1, 4, 16],
        "steps": {"bf16": (2, 5), "fp32": (2, 5), "fp16": (2, 5)},
        "validate": [("bf16", 1, 25), ("bf16", 16, 25)],
        "vae_batches": [1, 4],
        "prefill_tokens": 2048,
        "prefill_repeats": 3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["full", "tiny"])
    parser.add_argument("--quick", action="store_true", help="fewest sizes and steps (CPU smoke test)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip optional sections past this")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        raise ValueError(f"--budget-s must be > 0, got {args.budget_s}")

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = get_preset(args.preset)
    steps_plan = plan(args.preset, args.quick)
    peak_tflops, peak_source = peak_for(device)
    result: dict[str, Any] = {
        "preset": args.preset,
        "quick": args.quick,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "peak": {"bf16_dense_tflops": peak_tflops, "source": peak_source},
        "cfg_scale": CFG_SCALE,
        "sequence": dict(zip(("latent", "prefix", "context"), sequence_lengths(config), strict=True)),
        "notes": [
            "s_per_clip_100/25 = s_per_step (timed over timed_steps after warmup_steps) * steps / batch; "
            "validation rows run the full step count",
            "guided sampling: one forward of 2*batch rows per step",
            "batched rows: fast path (context MLP + per-layer key/values prepared once per run, "
            "cross-attention skipped for the all-zero unconditional half); flops_per_step / mfu / "
            "achieved_tflops count the FLOPs really executed (flops_per_guided_step), "
            "effective_tflops / effective_mfu the naive count (flops_per_forward of 2*batch rows) over "
            "the same time; the one-off preparation (prepare_context_s, prepare_context_flops) is "
            "outside s_per_step and inside the *_incl_prepare fields",
            "MFU of every row (fp32 too) is against the dense bf16 peak named in `peak`",
            "reference = batch 1, float32 weights under fp16 autocast, one request at a time, naive "
            "path (executed = naive FLOPs)",
        ],
        "errors": [],
    }

    def over_budget() -> bool:
        return time.perf_counter() - started > args.budget_s

    def section(name: str, fn: Callable[[], Any]) -> Any:
        if over_budget():
            result.setdefault("skipped", []).append(f"{name}: over the {args.budget_s:.0f} s budget")
            return None
        try:
            value = fn()
        except Exception as exc:  # a failed section is reported in the JSON; the others still run
            result["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            value = None
        result[name] = value
        result[f"{name}_s"] = time.perf_counter() - section_start[0]
        return value

    section_start = [time.perf_counter()]
    dit32 = build_dit(config, device, seed=0)
    dit16 = cast_dit(copy.deepcopy(dit32), Precision.BF16)
    models = {Precision.FP32: dit32, Precision.BF16: dit16, Precision.FP16: dit32}
    result["dit_params"] = sum(p.numel() for p in dit32.parameters())
    result["build_s"] = time.perf_counter() - started

    sampling: list[dict[str, Any]] = []
    result["sampling"] = sampling

    def run_rows() -> list[dict[str, Any]]:
        for precision in (Precision.BF16, Precision.FP32):
            check_supported(precision, device)
            warm, timed_steps = steps_plan["steps"][precision.value]
            for batch in steps_plan["batches"]:
                if over_budget():
                    result.setdefault("skipped", []).append(f"sampling {precision.value} b{batch}: budget")
                    continue
                sampling.append(
                    time_sampling(
                        models[precision],
                        config,
                        precision,
                        batch,
                        device,
                        warmup_steps=warm,
                        timed_steps=timed_steps,
                        peak_tflops=peak_tflops,
                        style="batched",
                    )
                )
                print(json.dumps(sampling[-1]), file=sys.stderr, flush=True)
        warm, timed_steps = steps_plan["steps"]["fp16"]
        check_supported(Precision.FP16, device)
        sampling.append(
            time_sampling(
                models[Precision.FP16],
                config,
                Precision.FP16,
                1,
                device,
                warmup_steps=warm,
                timed_steps=timed_steps,
                peak_tflops=peak_tflops,
                style="reference",
            )
        )
        print(json.dumps(sampling[-1]), file=sys.stderr, flush=True)
        return sampling

    section_start[0] = time.perf_counter()
    section("sampling", run_rows)

    def by(precision: str, batch: int, style: str = "batched") -> dict[str, Any] | None:
        for row in sampling:
            if row["precision"] == precision and row["batch"] == batch and row["style"] == style:
                return row
        return None

    reference = by("fp16", 1, "reference")
    best = by("bf16", max(steps_plan["batches"]))
    if reference and best:
        result["summary"] = {
            "bf16_max_batch": best["batch"],
            "bf16_max_batch_clips_per_s_100": best["clips_per_s_100_incl_prepare"],
            "reference_clips_per_s_100": reference["clips_per_s_100_incl_prepare"],
            "speedup_vs_reference": best["clips_per_s_100_incl_prepare"] / reference["clips_per_s_100_incl_prepare"],
            "bf16_max_batch_mfu": best["mfu"],
            "bf16_max_batch_tflops": best["achieved_tflops"],
            "bf16_max_batch_effective_mfu": best["effective_mfu"],
            "bf16_max_batch_effective_tflops": best["effective_tflops"],
            "bf16_max_batch_flops_per_step_over_naive": best["flops_per_step"] / best["flops_per_step_naive"],
            "clips_per_s_include": "the one-off context preparation, amortised over 100 steps",
        }

    def run_validation() -> list[dict[str, Any]]:
        rows = []
        for name, batch, steps in steps_plan["validate"]:
            style = "reference" if name == "fp16" else "batched"
            row = by(name, batch, style)
            if row is None or over_budget():
                continue
            precision = Precision(name)
            rows.append(validate_extrapolation(models[precision], config, precision, batch, steps, row, device))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        return rows

    section_start[0] = time.perf_counter()
    section("validation", run_validation)
    section_start[0] = time.perf_counter()
    section("host_sync_check", lambda: check_no_host_sync(dit16, config, device))
    models.clear()  # free the DiTs before the VAE and the thinker
    dit32 = dit16 = None
    free_memory(device)
    section_start[0] = time.perf_counter()
    section("vae_decode", lambda: time_vae_decode(config, steps_plan["vae_batches"], device))
    free_memory(device)
    section_start[0] = time.perf_counter()
    section(
        "thinker_prefill",
        lambda: time_thinker_prefill(args.preset, steps_plan["prefill_tokens"], device, steps_plan["prefill_repeats"]),
    )
    free_memory(device)
    section_start[0] = time.perf_counter()
    section("sync_extractor", lambda: time_sync_extractor(args.preset, device, args.quick))
    result["elapsed_s"] = time.perf_counter() - started
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(line, flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
