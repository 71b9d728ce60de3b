"""Train the embedded `small` model (model/data/small/) on generated sounds (`scripts/train_small.sh`).

    python bench/train_small.py features --work .small_run          # thinker rows of every prompt
    python bench/train_small.py vae --work .small_run --device cuda   # VAE (time-boxed), saved under --out
    python bench/train_small.py dit --work .small_run --device cuda   # DiT on that VAE's latents (time-boxed)
    python bench/train_small.py export --work .small_run --dst model/data/small

(`train` runs `vae` then `dit`.) `features` runs the frozen built-in thinker (seed 0, float32) once
per distinct prompt, on the machine that will serve the model, so the rows the DiT trains on are
exactly the rows inference computes with its library versions; it also stores the thinker's
weights, which the committed checkpoint carries. `vae` and `dit` both generate the same sounds
(`examples/sounds/make_sounds.py`, classes in `CLASSES`) and edit pairs (the project's
`orchestrator.dataset.synth.synth_pair`, seed 0). `vae` trains the Oobleck VAE on reconstruction
of random crops and rescales its latents to unit variance; `dit` encodes every clip once, computes
every source's log-mel once, and trains the DiT and conditioner heads with
`model.training.FlowTrainer` on the four examples of every pair (add, remove, extract,
text-to-audio). Each stage stops at its wall-time budget. `export` writes the EMA sampler (fp16) and
the thinker (fp32) under released key names plus `config.json`. The last line printed by each
phase is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "sounds"))

PRESET = "small"
CLASSES = ("tone", "chord", "clicks", "noise_burst", "siren")
TASKS = ("edit_add", "edit_remove", "edit_extract", "text_to_audio")
# (task, source clip, target clip) as in orchestrator.dataset.shards.EXAMPLE_KINDS
KINDS = (
    ("edit_add", "background", "mixture"),
    ("edit_remove", "mixture", "background"),
    ("edit_extract", "mixture", "event"),
    ("text_to_audio", None, "event"),
)
CLIPS = ("background", "mixture", "event")
THINKER_FILE = "thinker.safetensors"
ROWS_FILE = "prompt_rows.safetensors"
PROMPTS_FILE = "prompts.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prompt_of(task: str, label: str) -> str:
    from model.prompts import generation_prompt
    from model.tasks import Task

    return generation_prompt(Task(task), prompt=label.replace("_", " "))


# --------------------------------------------------------------------------- phase 1: thinker rows


def phase_features(work: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from model.build import build_encoder
    from model.config import get_preset
    from model.mllm import THINKER_PREFIX, MLLMPrompt

    torch.set_num_threads(2)
    cfg = get_preset(PRESET)
    encoder = build_encoder(cfg, device="cpu", seed=0)
    texts = sorted({prompt_of(t, c) for t in TASKS for c in CLASSES})
    rows = encoder.encode([MLLMPrompt(text=t) for t in texts])
    work.mkdir(parents=True, exist_ok=True)
    save_file({f"row{i}": r.float().contiguous() for i, r in enumerate(rows)}, str(work / ROWS_FILE))
    (work / PROMPTS_FILE).write_text(json.dumps(texts, indent=1))
    thinker = {THINKER_PREFIX + k: v.detach().float().contiguous() for k, v in encoder.thinker.state_dict().items()}
    save_file(thinker, str(work / THINKER_FILE))
    # Distinct prompts must give distinct rows, else the DiT cannot tell the classes apart.
    flat = [r.flatten() for r in rows]
    min_dist = min(
        float((a[: min(a.numel(), b.numel())] - b[: min(a.numel(), b.numel())]).abs().max())
        for i, a in enumerate(flat)
        for b in flat[i + 1 :]
    )
    return {"phase": "features", "prompts": len(texts), "rows_shape": list(rows[0].shape), "min_max_abs_diff": min_dist}


# --------------------------------------------------------------------------- data synthesis

_SOURCES = None


def _init_worker(settings_json: dict) -> None:
    global _SOURCES
    from orchestrator.dataset.synth import Sources, SynthSettings

    _SOURCES = Sources.scan(SynthSettings.from_json(settings_json))


def _make_pair(index: int):
    from orchestrator.dataset.filters import EnergyFilter
    from orchestrator.dataset.synth import synth_pair

    bg, mix, ev, params = synth_pair(index, _SOURCES, EnergyFilter(_SOURCES.settings.min_event_dbfs))
    return index, bg, mix, ev, params


def synth_pairs(folder: Path, pairs: int, seed: int, workers: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Pairs [0, pairs) of the project's synthesis over `folder/{foreground,background}` (float32 clips)."""
    from orchestrator.dataset.synth import SynthSettings

    settings = SynthSettings(
        foreground=str(folder / "foreground"), background=str(folder / "background"), pairs=pairs, seed=seed
    )
    out = {c: np.zeros((pairs, settings.clip_samples), dtype=np.float32) for c in CLIPS}
    params: list[dict] = [{}] * pairs
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(settings.to_json(),)) as pool:
        for i, bg, mix, ev, p in pool.map(_make_pair, range(pairs), chunksize=4):
            out["background"][i], out["mixture"][i], out["event"][i] = bg, mix, ev
            params[i] = p
    return out, params


def make_sound_folder(folder: Path, per_class: int, seed: int) -> dict[str, int]:
    from make_sounds import generate

    return generate(folder, per_class=per_class, backgrounds_per_kind=2, seed=seed, classes=CLASSES)


# --------------------------------------------------------------------------- VAE training


def stft_loss(y, x, ffts=(2048, 1024, 512, 256, 128), floor: float = 1e-5):
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes, mean over resolutions."""
    import torch

    y, x = y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])  # (B*A, N)
    total = 0.0
    for n in ffts:
        win = torch.hann_window(n, device=x.device)
        sy = torch.stft(y, n, n // 4, window=win, return_complex=True).abs()  # (B*A, F, T)
        sx = torch.stft(x, n, n // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(sy - sx) / (torch.linalg.norm(sx) + 1e-7)
        mag = (torch.log(sy + floor) - torch.log(sx + floor)).abs().mean()
        total = total + sc + mag
    return total / len(ffts)


def train_vae(
    part,
    clips: dict[str, np.ndarray],
    params: list[dict],
    device,
    budget_s: float,
    history: list,
    batch: int,
    crop: int,
    *,
    lr: float = 3e-3,
    l1_weight: float = 0.0,
    log_floor: float = 1e-4,
    mse_weight: float = 100.0,
    stft_start: float = 0.0,
) -> None:
    """Reconstruction training of the Oobleck VAE on random crops, until `budget_s` of wall time.

    Loss: w(t) * multi-resolution STFT (spectral convergence + log-magnitude L1 with `log_floor`) +
    `mse_weight` * waveform MSE + `l1_weight` * waveform L1 + 1e-4 * KL of the posterior, where w ramps
    from 0 at `stft_start` of the budget to 1 at its end (0, the default: STFT from the start).
    Waveform MSE alone drives the decoder to silence on this data (mostly noise, whose waveform a
    2048x latent cannot carry); the spectral term is phase-free. The first GPU run clipped the
    gradient norm at 1.0 while it was 10-40, so its steps were tiny; the clip is 10 now. Even so, on
    two CPU cores 3000 steps of 8 x 8192 samples (25 min) did not give a VAE that reconstructs
    (docs/model.md, "The embedded small model"). AdamW, warm-up,
    cosine decay, gradient norm clipped at 10.
    """
    import torch

    from model.vae import encode_moments

    vae = part.vae
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.0)
    rng = np.random.default_rng(0)
    n_pairs, n = clips["mixture"].shape
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s:
        frac = (time.perf_counter() - start) / budget_s
        for g in opt.param_groups:  # warm-up then cosine decay over the time budget
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        wavs = []
        for _ in range(batch):
            i = int(rng.integers(n_pairs))
            which = CLIPS[int(rng.choice(3, p=[0.25, 0.45, 0.30]))]
            if which == "event":  # crops around the event, which is silent elsewhere
                on = params[i]["onset_samples"]
                lo = max(0, min(n - crop, on - int(rng.integers(0, crop // 2))))
            else:
                lo = int(rng.integers(0, n - crop))
            wavs.append(clips[which][i, lo : lo + crop])
        x = torch.from_numpy(np.stack(wavs)).to(device)[:, None, :].expand(-1, 2, -1).contiguous()  # (B, 2, N)
        mean, std = encode_moments(vae, x)  # (B, C, L)
        z = mean + std * torch.randn_like(mean)
        y = vae.decoder(z)  # (B, 2, N)
        kl = (mean.pow(2) + std.pow(2) - 2 * torch.log(std) - 1).mean() * 0.5
        spec = stft_loss(y, x, floor=log_floor)
        l1 = (y - x).abs().mean()
        mse = (y - x).pow(2).mean()
        w_stft = 1.0 if stft_start <= 0 else min(1.0, max(0.0, (frac - stft_start) / (1.0 - stft_start)))
        loss = w_stft * spec + l1_weight * l1 + mse_weight * mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        opt.step()
        step += 1
        if step % args_log_every(device) == 0:
            rec = {
                "vae_step": step,
                "spec": float(spec.detach()),
                "mse": float(mse.detach()),
                "w_stft": round(w_stft, 3),
                "l1": float(l1.detach()),
                "kl": float(kl.detach()),
                "grad": float(gn),
                "t_s": round(time.perf_counter() - start, 1),
            }
            history.append(rec)
            log(json.dumps(rec))
    vae.eval().requires_grad_(False)
    history.append({"vae_steps_total": step})


def args_log_every(device) -> int:
    return 25 if device.type == "cuda" else 50


def normalise_latents(part, clips: dict[str, np.ndarray], device) -> float:
    """Rescale the latent means to unit std (encoder output / s, decoder input * s): decoding is unchanged."""
    import torch

    from model.training import encode_latents

    with torch.no_grad():
        sample = torch.from_numpy(clips["mixture"][:32]).to(device)
        s = float(encode_latents(part, sample).std())
        enc_out, dec_in = part.vae.encoder.conv2, part.vae.decoder.conv1
        c = part.config.vae.latent_dim
        enc_out.weight_g[:c] /= s  # mean half of the encoder output
        enc_out.bias[:c] /= s
        dec_in.weight_g *= s
    return s


# --------------------------------------------------------------------------- DiT training


def train_dit(part, clips, params, rows_by_text, device, budget_s: float, history: list, batch: int) -> int:
    import torch

    from model.training import FlowTrainer, TrainExample, TrainHyper, encode_latents

    n_pairs = clips["mixture"].shape[0]
    lat = {}
    with torch.no_grad():
        for c in CLIPS:
            wav = torch.from_numpy(clips[c])
            lat[c] = torch.cat([encode_latents(part, wav[j : j + 16].to(device)) for j in range(0, n_pairs, 16)])
    log(
        f"latents {tuple(lat['mixture'].shape)} std {float(lat['mixture'].std()):.3f} "
        f"event std {float(lat['event'].std()):.3f}"
    )
    window = part.config.mel.window_samples
    with torch.no_grad():  # the log-mel of a source is fixed: computed once per clip, not every step
        mels = {
            c: torch.cat(
                [
                    part.mel.log_mel(torch.from_numpy(clips[c][j : j + 16, :window]).to(device))
                    for j in range(0, n_pairs, 16)
                ]
            )
            for c in ("background", "mixture")
        }
    examples = [(i, t, s, tg) for i in range(n_pairs) for (t, s, tg) in KINDS]
    part.dit.init_weights()
    hyper = TrainHyper(lr=6e-4, warmup_steps=100, cond_dropout=0.1, ema_decay=0.998, seed=0)
    trainer = FlowTrainer(part, hyper, autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s:
        idx = rng.choice(len(examples), size=batch, replace=False)
        exs, lats = [], []
        for k in idx:
            i, task, src, tgt = examples[k]
            label = params[i]["label"]
            source_mel = None if src is None else mels[src][i]
            exs.append(
                TrainExample(mllm_features=rows_by_text[prompt_of(task, label)].to(device), source_mel=source_mel)
            )
            lats.append(lat[tgt][i])
        m = trainer.step(torch.stack(lats), exs)
        if trainer.step_index % (50 if device.type == "cuda" else 5) == 0:
            rec = {
                "dit_step": trainer.step_index,
                "loss": round(m["loss"], 4),
                "lr": m["lr"],
                "t_s": round(time.perf_counter() - start, 1),
            }
            history.append(rec)
            log(json.dumps(rec))
    trainer.ema.copy_to(part)
    history.append({"dit_steps_total": trainer.step_index})
    return trainer.step_index


def save_state(part, out: Path) -> None:
    """The part's state in fp16, in two files (each under the device transfer's 16 MB per-file
    limit); `export` merges them."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu() for k, v in part.state_dict().items()}
    for name, keep in (("speech", lambda k: k.startswith("speech.")), ("main", lambda k: not k.startswith("speech."))):
        chunk = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items() if keep(k)}
        save_file(chunk, str(out / f"state_{name}.safetensors"))


def _setup(args):
    """Device, output folder and the training data (same sounds and pairs in every phase)."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out or args.work)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = make_sound_folder(work / "sounds_train", args.per_class, seed=0)
    clips, params = synth_pairs(work / "sounds_train", args.pairs, seed=0, workers=args.workers)
    log(f"data: {counts} {args.pairs} pairs in {time.perf_counter() - t0:.1f}s")
    return device, work, out, clips, params


def phase_vae(args) -> dict:
    """Train the VAE, rescale its latents, save the part's state and `vae_summary.json` under --out."""
    from model.build import build_sampler
    from model.config import get_preset

    t0 = time.perf_counter()
    device, _work, out, clips, params = _setup(args)
    part = build_sampler(get_preset(PRESET), seed=0).to(device)
    history: list[dict] = []
    train_vae(
        part,
        clips,
        params,
        device,
        args.vae_s,
        history,
        args.vae_batch,
        args.vae_crop,
        lr=args.vae_lr,
        l1_weight=args.vae_l1_weight,
        log_floor=args.vae_log_floor,
        mse_weight=args.vae_mse_weight,
        stft_start=args.vae_stft_start,
    )
    scale = normalise_latents(part, clips, device)
    log(f"latent scale {scale:.4f}")
    save_state(part, out)
    summary = {
        "phase": "vae",
        "device": str(device),
        "pairs": args.pairs,
        "per_class": args.per_class,
        "vae_s": args.vae_s,
        "vae_batch": args.vae_batch,
        "vae_crop": args.vae_crop,
        "latent_scale": scale,
        "wall_s": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    (out / "vae_summary.json").write_text(json.dumps(summary, indent=1))
    return {k: v for k, v in summary.items() if k != "history"}


def read_state(out: Path) -> dict:
    """The part's state as `save_state` wrote it (fp16, internal key names), both files merged."""
    from safetensors.torch import load_file

    return {**load_file(str(out / "state_main.safetensors")), **load_file(str(out / "state_speech.safetensors"))}


def load_state(part, out: Path) -> None:
    """Load the fp16 state files written by `save_state` into `part` (strict, cast to its dtype)."""
    import torch

    state = read_state(out)
    dtype = next(part.parameters()).dtype
    with torch.no_grad():
        part.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})


def phase_dit(args) -> dict:
    """Train the DiT and conditioner heads on the VAE that `phase_vae` saved under --out."""
    from safetensors.torch import load_file

    from model.build import build_sampler
    from model.config import get_preset

    t0 = time.perf_counter()
    device, work, out, clips, params = _setup(args)
    texts = json.loads((work / PROMPTS_FILE).read_text())
    rows = load_file(str(work / ROWS_FILE))
    rows_by_text = {t: rows[f"row{i}"] for i, t in enumerate(texts)}
    part = build_sampler(get_preset(PRESET), seed=0)
    load_state(part, out)
    part.to(device)
    history: list[dict] = []
    steps = train_dit(part, clips, params, rows_by_text, device, args.dit_s, history, args.batch)
    save_state(part, out)
    vae_summary = json.loads((out / "vae_summary.json").read_text())
    summary = {
        "phase": "train",
        "device": str(device),
        "pairs": args.pairs,
        "per_class": args.per_class,
        "vae_s": vae_summary["vae_s"],
        "vae_wall_s": vae_summary["wall_s"],
        "latent_scale": vae_summary["latent_scale"],
        "dit_s": args.dit_s,
        "dit_batch": args.batch,
        "dit_steps": steps,
        "dit_wall_s": round(time.perf_counter() - t0, 1),
        "history": vae_summary["history"] + history,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return {k: v for k, v in summary.items() if k != "history"}


def phase_train(args) -> dict:
    phase_vae(args)
    return phase_dit(args)


# --------------------------------------------------------------------------- export


def phase_export(work: Path, dst: Path, run_dir: Path) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from model.checkpoint import internal_to_released
    from model.config import get_preset
    from model.parts import SamplerPart

    cfg = get_preset(PRESET)
    state = read_state(run_dir)
    with torch.device("meta"):
        stages = len(SamplerPart(cfg).vae.encoder.block)
    sd = {internal_to_released(k, vae_num_stages=stages): v for k, v in state.items()}
    sd.update(load_file(str(work / THINKER_FILE)))  # fp32: the rows the DiT learned come from these weights
    dst.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    meta = {"format": "audio-omni-small/1", "preset": PRESET, "dit_steps": str(summary["dit_steps"])}
    save_file(sd, str(dst / "model.safetensors"), metadata=meta)
    (dst / "config.json").write_text(json.dumps(cfg.to_dict(relative_to=dst), indent=2) + "\n")
    (dst / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return {"phase": "export", "bytes": (dst / "model.safetensors").stat().st_size, "tensors": len(sd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("features", "vae", "dit", "train", "export"))
    p.add_argument("--work", default=".small_run", help="working folder (features, sounds)")
    p.add_argument("--out", default=None, help="train: where the state files go (default --work)")
    p.add_argument("--dst", default="model/data/small", help="export: destination folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="synthesis processes")
    p.add_argument("--pairs", type=int, default=160)
    p.add_argument("--per-class", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-crop", type=int, default=8192, help="VAE training crop (samples)")
    p.add_argument("--vae-lr", type=float, default=3e-3)
    p.add_argument("--vae-l1-weight", type=float, default=0.0, help="weight of the waveform L1 term")
    p.add_argument("--vae-log-floor", type=float, default=1e-4, help="magnitude floor of the log-STFT term")
    p.add_argument("--vae-mse-weight", type=float, default=100.0, help="weight of the waveform MSE term")
    p.add_argument(
        "--vae-stft-start", type=float, default=0.0, help="fraction of the VAE budget before the STFT term ramps in"
    )
    p.add_argument("--vae-s", type=float, default=1500.0, help="VAE training wall-time budget (s)")
    p.add_argument("--dit-s", type=float, default=1500.0, help="DiT training wall-time budget (s)")
    args = p.parse_args()
    for name in ("pairs", "per_class", "batch", "workers", "threads", "vae_batch", "vae_crop"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.vae_stft_start < 1 or args.vae_mse_weight < 0:
        raise ValueError(
            f"need 0 <= --vae-stft-start < 1 and --vae-mse-weight >= 0; got {args.vae_stft_start}, "
            f"{args.vae_mse_weight}"
        )
    if not 0 < args.vae_lr <= 1 or args.vae_l1_weight < 0 or args.vae_log_floor <= 0:
        raise ValueError(
            f"need 0 < --vae-lr <= 1, --vae-l1-weight >= 0, --vae-log-floor > 0; got {args.vae_lr}, "
            f"{args.vae_l1_weight}, {args.vae_log_floor}"
        )
    if args.vae_s <= 0 or args.dit_s <= 0:
        raise ValueError(f"--vae-s and --dit-s must be > 0, got {args.vae_s}, {args.dit_s}")
    if args.phase == "features":
        result = phase_features(Path(args.work))
    elif args.phase in ("vae", "dit", "train"):
        result = {"vae": phase_vae, "dit": phase_dit, "train": phase_train}[args.phase](args)
    else:
        result = phase_export(Path(args.work), Path(args.dst), Path(args.out or args.work))
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
