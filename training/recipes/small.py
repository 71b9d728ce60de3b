"""The recipe of the embedded `small` model (model/data/small/), trained on generated sounds.

    audio-omni-train small features --work .small_run                  # thinker rows of every prompt
    audio-omni-train small codec --work .small_run --pairs 320         # the codec's band statistics
    audio-omni-train small dit --work .small_run --pairs 320 --dit-s 3300   # DiT (time-boxed)
    audio-omni-train small export --work .small_run --dst model/data/small

(`train` runs `codec` then `dit`; `scripts/train_small.sh` runs them all.) `features` runs the
frozen built-in thinker (seed 0, float32) once per distinct prompt, on the machine that will serve
the model, so the rows the DiT trains on are exactly the rows inference computes with its library
versions; it also stores the thinker's weights, which the committed checkpoint carries. `codec` and
`dit` both generate the same sounds (`examples/sounds/make_sounds.py`, classes in `CLASSES`) and
edit pairs (`training.synth.synth_pair`, seed 0). `codec` fits the fixed log-mel codec's per-band
mean and std (`model.melcodec`; nothing is trained); `dit` encodes every clip once (a source's
latent is also the DiT's input concat), computes every source's log-mel once, and trains the DiT
and conditioner heads with `training.flow.FlowTrainer` on the four examples of every pair (add,
remove, extract, text-to-audio) until its wall-time budget, writing an EMA snapshot every
`save_every_s`. `export` writes the EMA sampler (fp16) and the thinker (fp32) under released key
names plus `config.json`. Every phase returns one JSON-able summary.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from model.conditioners.mel import MelConditioner
    from model.parts import SamplerPart
    from training.synth import Sources

REPO = Path(__file__).resolve().parents[2]
SOUNDS_SCRIPT = REPO / "examples" / "sounds" / "make_sounds.py"
PRESET = "small"
CLASSES = ("tone", "chord", "clicks", "noise_burst", "siren")
TASKS = ("edit_add", "edit_remove", "edit_extract", "text_to_audio")
# (task, source clip, target clip) as in training.shards.EXAMPLE_KINDS
KINDS: tuple[tuple[str, str | None, str], ...] = (
    ("edit_add", "background", "mixture"),
    ("edit_remove", "mixture", "background"),
    ("edit_extract", "mixture", "event"),
    ("text_to_audio", None, "event"),
)
CLIPS = ("background", "mixture", "event")
# How often each kind is drawn for a training batch. An add example's target puts the event at an
# onset the instruction does not give, so its loss stays high whatever the model does and its
# gradients are mostly noise; remove and extract have one right answer each, and need the model to
# find the event in the source, which is the slowest thing it learns (docs/model.md).
KIND_WEIGHTS = {"edit_add": 0.1, "edit_remove": 0.3, "edit_extract": 0.35, "text_to_audio": 0.25}
# The learning rate decays linearly to this fraction over the last DECAY_FRAC of the time budget.
DECAY_FRAC, DECAY_TO = 0.25, 0.1
# Kinds whose target differs from their source only on the event's span: `event_weight` applies there.
EVENT_WEIGHTED = ("edit_remove", "edit_extract")
THINKER_FILE = "thinker.safetensors"
ROWS_FILE = "prompt_rows.safetensors"
PROMPTS_FILE = "prompts.json"

Clips = dict[str, np.ndarray]  # clip name -> (pairs, samples) float32


@dataclass(frozen=True)
class SmallRun:
    """The settings of the `codec`, `dit` and `train` phases (validated here)."""

    work: Path = Path(".small_run")  # features, sounds
    out: Path | None = None  # where the state files go (default: work)
    device: str = "cpu"
    threads: int = 2
    workers: int = 2  # synthesis processes
    pairs: int = 160
    per_class: int = 12
    batch: int = 32
    dit_s: float = 3000.0  # DiT training wall-time budget (s)
    lr: float = 1e-3  # AdamW learning rate after warm-up
    save_every_s: float = 600.0  # EMA snapshot to `out` this often (s)
    event_weight: float = 1.0  # loss weight of the event's latent frames in remove/extract examples

    def __post_init__(self) -> None:
        for name in ("pairs", "per_class", "batch", "workers", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value}")
        if not 0 < self.event_weight <= 100:
            raise ValueError(f"event-weight must be in (0, 100], got {self.event_weight}")
        if self.dit_s <= 0 or self.save_every_s <= 0 or not 0 < self.lr <= 1:
            raise ValueError(
                f"need dit-s > 0, save-every-s > 0, 0 < lr <= 1; got {self.dit_s}, {self.save_every_s}, {self.lr}"
            )

    @property
    def out_dir(self) -> Path:
        return self.out or self.work


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prompt_of(task: str, label: str) -> str:
    from model.prompts import generation_prompt
    from model.tasks import Task

    return generation_prompt(Task(task), prompt=label.replace("_", " "))


# --------------------------------------------------------------------------- phase 1: thinker rows


def phase_features(work: Path) -> dict[str, Any]:
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

_SOURCES: Sources | None = None  # one scan per synthesis process


def _init_worker(settings_json: dict[str, Any]) -> None:
    global _SOURCES
    from training.synth import Sources, SynthSettings

    _SOURCES = Sources.scan(SynthSettings.from_json(settings_json))


def _make_pair(index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    from training.filters import EnergyFilter
    from training.synth import synth_pair

    if _SOURCES is None:
        raise RuntimeError("synthesis worker used before _init_worker scanned the sources")
    bg, mix, ev, params = synth_pair(index, _SOURCES, EnergyFilter(_SOURCES.settings.min_event_dbfs))
    return index, bg, mix, ev, params


def synth_pairs(folder: Path, pairs: int, seed: int, workers: int) -> tuple[Clips, list[dict[str, Any]]]:
    """Pairs [0, pairs) of the project's synthesis over `folder/{foreground,background}` (float32 clips)."""
    from training.synth import SynthSettings

    settings = SynthSettings(
        foreground=str(folder / "foreground"), background=str(folder / "background"), pairs=pairs, seed=seed
    )
    out = {c: np.zeros((pairs, settings.clip_samples), dtype=np.float32) for c in CLIPS}
    params: list[dict[str, Any]] = [{}] * pairs
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(settings.to_json(),)) as pool:
        for i, bg, mix, ev, p in pool.map(_make_pair, range(pairs), chunksize=4):
            out["background"][i], out["mixture"][i], out["event"][i] = bg, mix, ev
            params[i] = p
    return out, params


def make_sound_folder(folder: Path, per_class: int, seed: int) -> dict[str, int]:
    """The recipe's generated sounds (`examples/sounds/make_sounds.py` of this checkout) under `folder`."""
    if not SOUNDS_SCRIPT.is_file():
        raise FileNotFoundError(f"the sound generator {SOUNDS_SCRIPT} is missing: run the recipe from a checkout")
    spec = importlib.util.spec_from_file_location("make_sounds", SOUNDS_SCRIPT)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load the sound generator {SOUNDS_SCRIPT}")
    make_sounds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sounds)
    counts: dict[str, int] = make_sounds.generate(
        folder, per_class=per_class, backgrounds_per_kind=2, seed=seed, classes=CLASSES
    )
    return counts


# --------------------------------------------------------------------------- codec


def fit_codec(part: SamplerPart, clips: Clips, device: torch.device) -> tuple[list[float], list[float]]:
    """Fit the mel codec's per-band mean, std and max to every training clip (latents: zero mean,
    unit std; decoding capped at the loudest band power seen); returns the means and stds."""
    import torch

    from model.melcodec import MelCodec

    if not isinstance(part.vae, MelCodec):
        raise ValueError(f"the {PRESET} recipe fits a mel codec; this part's VAE is a {type(part.vae).__name__}")
    wav = torch.from_numpy(np.concatenate([clips[c] for c in CLIPS]))  # (3P, N) mono
    n = part.config.output_samples
    wav = torch.nn.functional.pad(wav[:, :n], (0, max(0, n - wav.shape[-1])))
    mean, std, _ = part.vae.fit(wav[:, None, :].expand(-1, part.config.vae.io_channels, -1).to(device))
    return [float(v) for v in mean.cpu()], [float(v) for v in std.cpu()]


# --------------------------------------------------------------------------- DiT training


def init_mel_pooling(mel: MelConditioner) -> None:
    """Start the mel conditioner's frame-axis projection as average pooling: prefix token j is the
    mean of the j-th of `seq_len` equal runs of log-mel frames. A random start mixes every frame into
    every token, and the DiT then has to learn where an edit's source events are before it can use
    them; pooling hands it time order from step 0 (training still changes the projection)."""
    import torch

    tokens, frames = mel.proj_sequence_features.weight.shape  # (S, T)
    edges = torch.linspace(0, frames, tokens + 1).round().long()
    weight = torch.zeros(tokens, frames)
    for j in range(tokens):
        weight[j, edges[j] : edges[j + 1]] = 1.0 / float(edges[j + 1] - edges[j])
    with torch.no_grad():
        mel.proj_sequence_features.weight.copy_(weight)
        mel.proj_sequence_features.bias.zero_()


def event_frame_weights(onset: int, length: int, frames: int, hop: int, weight: float) -> torch.Tensor:
    """(frames,) loss weights of one pair: `weight` on the latent frames (of `hop` samples) that
    overlap the event's samples [onset, onset + length), 1 elsewhere. An extract target is silent
    outside the event, so a model that outputs silence everywhere already has a low mean loss; this
    makes the frames where the edit happens count for more."""
    import torch

    w = torch.ones(frames)
    first, last = onset // hop, min(frames, -(-(onset + length) // hop))  # ceil for the last frame touched
    w[first:last] = weight
    return w


def train_dit(
    part: SamplerPart,
    clips: Clips,
    params: list[dict[str, Any]],
    rows_by_text: dict[str, torch.Tensor],
    device: torch.device,
    run: SmallRun,
    history: list[dict[str, Any]],
) -> int:
    """Train the DiT and conditioner heads until `run.dit_s` has passed; the EMA ends in `part`."""
    import torch

    from training.flow import FlowTrainer, TrainExample, TrainHyper

    n_pairs = clips["mixture"].shape[0]
    lat = {}
    with torch.no_grad():
        for c in CLIPS:
            wav = torch.from_numpy(clips[c])
            lat[c] = torch.cat([part.encode_audio(wav[j : j + 16].to(device)) for j in range(0, n_pairs, 16)])
    frames = lat["mixture"].shape[-1]
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
    hop = part.config.vae.downsampling_ratio
    frame_w = [
        event_frame_weights(p["onset_samples"], p["event_samples"], frames, hop, run.event_weight)
        if run.event_weight != 1.0
        else None
        for p in params
    ]
    kind_p = np.array([KIND_WEIGHTS[t] for t, _, _ in KINDS])
    kind_p = kind_p / kind_p.sum()
    part.dit.init_weights()
    init_mel_pooling(part.mel)
    hyper = TrainHyper(lr=run.lr, warmup_steps=100, cond_dropout=0.1, ema_decay=0.998, seed=0)
    trainer = FlowTrainer(part, hyper, autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    rng = np.random.default_rng(1)
    start = last_save = time.perf_counter()
    while time.perf_counter() - start < run.dit_s:
        if time.perf_counter() - last_save > run.save_every_s:  # EMA snapshot, so a run can be checked midway
            save_state(part, run.out_dir, overrides=trainer.ema.shadow)
            last_save = time.perf_counter()
        kinds = rng.choice(len(KINDS), size=run.batch, p=kind_p)
        pairs = rng.integers(0, n_pairs, size=run.batch)
        remaining = 1.0 - (time.perf_counter() - start) / run.dit_s  # of the time budget
        lr_scale = DECAY_TO + (1.0 - DECAY_TO) * min(1.0, max(0.0, remaining) / DECAY_FRAC)
        exs, lats = [], []
        for k, i in zip(kinds, pairs, strict=True):
            task, src, tgt = KINDS[k]
            label = params[i]["label"]
            exs.append(
                TrainExample(
                    mllm_features=rows_by_text[prompt_of(task, label)].to(device),
                    source_mel=None if src is None else mels[src][i],
                    source_latent=None if src is None else lat[src][i],
                    frame_weights=frame_w[i] if task in EVENT_WEIGHTED else None,
                )
            )
            lats.append(lat[tgt][i])
        m = trainer.step(torch.stack(lats), exs, lr_scale=lr_scale)
        if trainer.step_index % (50 if device.type == "cuda" else 5) == 0:
            rec = {
                "dit_step": trainer.step_index,
                "loss": round(m["loss"], 4),
                "lr": round(m["lr"], 6),
                "t_s": round(time.perf_counter() - start, 1),
            }
            history.append(rec)
            log(json.dumps(rec))
    trainer.ema.copy_to(part)
    history.append({"dit_steps_total": trainer.step_index})
    return trainer.step_index


# --------------------------------------------------------------------------- state files


def save_state(part: SamplerPart, out: Path, overrides: dict[str, torch.Tensor] | None = None) -> None:
    """The part's state in fp16 (`overrides`, e.g. EMA values, replace entries), in two files (each
    under the device transfer's 16 MB per-file limit); `export` merges them."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu() for k, v in part.state_dict().items()}
    state.update({k: v.detach().cpu() for k, v in (overrides or {}).items()})
    groups: tuple[tuple[str, Callable[[str], bool]], ...] = (
        ("speech", lambda k: k.startswith("speech.")),
        ("main", lambda k: not k.startswith("speech.")),
    )
    for name, keep in groups:
        chunk = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items() if keep(k)}
        save_file(chunk, str(out / f"state_{name}.safetensors"))


def read_state(out: Path) -> dict[str, torch.Tensor]:
    """The part's state as `save_state` wrote it (fp16, internal key names), both files merged."""
    from safetensors.torch import load_file

    return {**load_file(str(out / "state_main.safetensors")), **load_file(str(out / "state_speech.safetensors"))}


def load_state(part: SamplerPart, out: Path) -> None:
    """Load the fp16 state files written by `save_state` into `part` (strict, cast to its dtype)."""
    import torch

    state = read_state(out)
    dtype = next(part.parameters()).dtype
    with torch.no_grad():
        part.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})


# --------------------------------------------------------------------------- phases 2 and 3


def _setup(run: SmallRun) -> tuple[torch.device, Clips, list[dict[str, Any]]]:
    """Device, output folder and the training data (same sounds and pairs in every phase)."""
    import torch

    torch.manual_seed(0)
    device = torch.device(run.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(run.threads)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = make_sound_folder(run.work / "sounds_train", run.per_class, seed=0)
    clips, params = synth_pairs(run.work / "sounds_train", run.pairs, seed=0, workers=run.workers)
    log(f"data: {counts} {run.pairs} pairs in {time.perf_counter() - t0:.1f}s")
    return device, clips, params


def phase_codec(run: SmallRun) -> dict[str, Any]:
    """Fit the codec's band statistics, save the part's state and `codec_summary.json` under `out`."""
    from model.build import build_sampler
    from model.config import get_preset

    t0 = time.perf_counter()
    device, clips, _params = _setup(run)
    part = build_sampler(get_preset(PRESET), seed=0).to(device)
    mean, std = fit_codec(part, clips, device)
    save_state(part, run.out_dir)
    summary = {
        "phase": "codec",
        "device": str(device),
        "pairs": run.pairs,
        "per_class": run.per_class,
        "band_mean_range": [round(min(mean), 3), round(max(mean), 3)],
        "band_std_range": [round(min(std), 3), round(max(std), 3)],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (run.out_dir / "codec_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def phase_dit(run: SmallRun) -> dict[str, Any]:
    """Train the DiT and conditioner heads on the codec that `phase_codec` saved under `out`."""
    from safetensors.torch import load_file

    from model.build import build_sampler
    from model.config import get_preset

    for needed in (run.work / PROMPTS_FILE, run.out_dir / "codec_summary.json"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: run the `features` and `codec` phases first")
    t0 = time.perf_counter()
    device, clips, params = _setup(run)
    texts = json.loads((run.work / PROMPTS_FILE).read_text())
    rows = load_file(str(run.work / ROWS_FILE))
    rows_by_text = {t: rows[f"row{i}"] for i, t in enumerate(texts)}
    part = build_sampler(get_preset(PRESET), seed=0)
    load_state(part, run.out_dir)
    part.to(device)
    history: list[dict[str, Any]] = []
    steps = train_dit(part, clips, params, rows_by_text, device, run, history)
    save_state(part, run.out_dir)
    codec_summary = json.loads((run.out_dir / "codec_summary.json").read_text())
    summary = {
        "phase": "train",
        "device": str(device),
        "pairs": run.pairs,
        "per_class": run.per_class,
        "codec_wall_s": codec_summary["wall_s"],
        "dit_s": run.dit_s,
        "dit_batch": run.batch,
        "event_weight": run.event_weight,
        "dit_steps": steps,
        "dit_wall_s": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    (run.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return {k: v for k, v in summary.items() if k != "history"}


def phase_train(run: SmallRun) -> dict[str, Any]:
    phase_codec(run)
    return phase_dit(run)


# --------------------------------------------------------------------------- export


def phase_export(work: Path, dst: Path, run_dir: Path) -> dict[str, Any]:
    """Released-name safetensors (sampler fp16, thinker fp32), `config.json` and the train summary."""
    import torch
    from safetensors.torch import load_file, save_file

    from model.checkpoint import internal_to_released
    from model.config import get_preset
    from model.parts import SamplerPart
    from model.vae import num_stages

    for needed in (work / THINKER_FILE, run_dir / "train_summary.json"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: run the `features` and `dit` phases first")
    cfg = get_preset(PRESET)
    state = read_state(run_dir)
    with torch.device("meta"):
        stages = num_stages(SamplerPart(cfg).vae)
    sd = {internal_to_released(k, vae_num_stages=stages): v for k, v in state.items()}
    sd.update(load_file(str(work / THINKER_FILE)))  # fp32: the rows the DiT learned come from these weights
    dst.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    meta = {"format": "audio-omni-small/1", "preset": PRESET, "dit_steps": str(summary["dit_steps"])}
    save_file(sd, str(dst / "model.safetensors"), metadata=meta)
    (dst / "config.json").write_text(json.dumps(cfg.to_dict(relative_to=dst), indent=2) + "\n")
    (dst / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return {"phase": "export", "bytes": (dst / "model.safetensors").stat().st_size, "tensors": len(sd)}
