"""The embedded `small` model's thinker, trained here to answer questions about its sound scenes.

    audio-omni-train small thinker --work .thinker_run --minutes 40      # data, Ray Train, held-out check
    audio-omni-train small thinker-export --work .thinker_run --dst model/data/small

Design: the DiT of `small` is conditioned on `hidden_states[layer_idx]` of the thinker (`-2`: the
output of text layer 0 of the two), and every prompt it was trained on is text only. So the token
embeddings, the text layers up to the conditioning layer and the vision tower stay frozen, and only
what understanding needs but conditioning never reads is trained: the audio encoder (with its
projection), the text layers above the conditioning layer, the final norm and the LM head
(`trainable_names`). Every text-only conditioning row is then bit-identical before and after, so the
DiT needs no retraining and its edit and text-to-audio figures cannot move.

Data (`training.synth` scenes over the recipe's generated sounds, onsets known): each scene is asked
one of several question kinds (`QUESTION_KINDS`) with a templated answer naming the class, a rough
onset and the background; questions outside what these scenes can tell get `CANNOT_TELL`. The
"describe the main sound" answer is exactly the text the DiT was trained on for that class, so a
describe -> generate chain hands the DiT a prompt it knows. Text-only examples teach the reasoning
rewrite (`model.prompts.reasoning_question`) to name a class. Every example goes through the
inference path's pieces: the processor's feature extractor and audio-token count (one processor
call per scene, precomputed), the processor's chat template with the understanding system prompt,
its tokenizer, and the loss only on the assistant's answer and its closing `<|im_end|>`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.recipes.small import CLASSES, REPO, log, make_sound_folder, synth_pairs
from training.recipes.thinker_data import (
    BACKGROUND_PHRASE,
    BACKGROUND_QUESTIONS,
    CANNOT_TELL,
    CLASS_PHRASE,
    CLASS_TEXT,
    HEAR_QUESTIONS,
    HELD_OUT_OUT_OF_SCOPE,
    IS_THERE_QUESTIONS,
    QUESTION_KINDS,
    Scene,
    background_kind,
)

if TYPE_CHECKING:
    from model.mllm import MLLMEncoder

PRESET = "small"
DEFAULT_WEIGHTS = REPO / "model" / "data" / "small" / "model.safetensors"
SCENE_RATE_HZ = 44100
THINKER_RATE_HZ = 16000

DATA_FILE = "scenes.npz"  # features (N, mels, frames) fp16, frames, audio tokens
SCENES_FILE = "scenes.json"  # per scene: label (or null), onset_s, background kind
TRAINED_FILE = "thinker_trained.safetensors"
SUMMARY_FILE = "thinker_summary.json"
HISTORY_FILE = "thinker_history.json"
PROBE_FILE = "thinker_probe.safetensors"  # the audio-tower probe (training only, never exported)

# --------------------------------------------------------------------------- frozen / trained split


def conditioning_index(num_layers: int, layer_idx: int) -> int:
    """The positive index into `hidden_states` (num_layers + 1 entries) that conditioning reads."""
    if not -(num_layers + 1) <= layer_idx <= num_layers:
        raise ValueError(f"layer_idx {layer_idx} is outside the {num_layers + 1} hidden states")
    return layer_idx % (num_layers + 1)


def trainable_names(names: Sequence[str], num_layers: int, layer_idx: int) -> list[str]:
    """The thinker parameters the recipe trains: everything a text-only conditioning row never reads.

    hidden_states[i] is the embeddings (i = 0) or the output of text layer i - 1, so the embeddings and
    layers [0, i) are frozen; the vision tower is frozen (video prompts condition the DiT through it);
    the final norm is frozen only when conditioning reads the last (normed) entry.
    """
    index = conditioning_index(num_layers, layer_idx)
    frozen = ["model.embed_tokens.", "visual.", *(f"model.layers.{i}." for i in range(index))]
    if index == num_layers:
        frozen.append("model.norm.")
    out = [n for n in names if not any(n.startswith(p) for p in frozen)]
    if not out:
        raise ValueError(f"conditioning on hidden state {index} of {num_layers} layers leaves nothing to train")
    return out


# --------------------------------------------------------------------------- scenes and their features


def make_scenes(
    folder: Path, *, pairs: int, per_class: int, sound_seed: int, synth_seed: int, workers: int, background_frac: float
) -> tuple[list[np.ndarray], list[Scene]]:
    """16 kHz scenes: `pairs` mixtures of `training.synth` over sounds of `sound_seed`, plus the
    backgrounds of the first `background_frac` of the pairs alone (scenes without an event)."""
    import soxr

    make_sound_folder(folder, per_class, seed=sound_seed)
    clips, params = synth_pairs(folder, pairs, seed=synth_seed, workers=workers)
    audio: list[np.ndarray] = []
    scenes: list[Scene] = []
    n_bg = round(pairs * background_frac)
    for i, p in enumerate(params):
        kind = background_kind(p["background"])
        for clip, label in (("mixture", p["label"]), ("background", None)):
            if label is None and i >= n_bg:
                continue
            # soxr HQ, as the job system resamples an understanding input (orchestrator.audio_io)
            x = soxr.resample(clips[clip][i], SCENE_RATE_HZ, THINKER_RATE_HZ, quality="HQ").astype(np.float32)
            audio.append(x)
            scenes.append(Scene(label=label, onset_s=float(p["onset_s"]), background=kind))
    return audio, scenes


def understanding_text(processor: Any, system: str, question: str, *, has_audio: bool) -> str:
    """The chat-formatted prompt exactly as `MLLMEncoder.understand` builds it (audio marker unexpanded)."""
    from transformers.processing_utils import ProcessorMixin

    from model.prompts import understanding_conversation

    conversation = understanding_conversation(question, has_audio=has_audio, has_video=False, system=system)
    text: str = ProcessorMixin.apply_chat_template(processor, conversation, add_generation_prompt=True, tokenize=False)
    return text


def scene_features(processor: Any, audio: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scene, the processor's audio features (cut to the longest valid length), their valid frame
    count and the number of audio tokens the processor expands `<|AUDIO|>` into."""
    from model.mllm import AUDIO_TOKEN
    from model.prompts import SYS_UNDERSTANDING

    text = understanding_text(processor, SYS_UNDERSTANDING, HEAR_QUESTIONS[0], has_audio=True)
    audio_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    feats, frames, tokens = [], [], []
    for x in audio:
        out = processor(text=[text], audio=[x], return_tensors="np", padding=True, use_audio_in_video=False)
        valid = int(out["feature_attention_mask"][0].sum())
        feats.append(out["input_features"][0, :, :valid].astype(np.float16))
        frames.append(valid)
        tokens.append(int((out["input_ids"][0] == audio_id).sum()))
    width = max(frames)
    stacked = np.zeros((len(feats), feats[0].shape[0], width), dtype=np.float16)
    for i, f in enumerate(feats):
        stacked[i, :, : f.shape[1]] = f
    return stacked, np.array(frames, dtype=np.int32), np.array(tokens, dtype=np.int32)


def save_scenes(work: Path, processor: Any, audio: Sequence[np.ndarray], scenes: Sequence[Scene], name: str) -> None:
    feats, frames, tokens = scene_features(processor, audio)
    np.savez(work / f"{name}_{DATA_FILE}", features=feats, frames=frames, tokens=tokens)
    (work / f"{name}_{SCENES_FILE}").write_text(json.dumps([asdict(s) for s in scenes]))


def load_scenes(work: Path, name: str) -> tuple[dict[str, np.ndarray], list[Scene]]:
    data = np.load(work / f"{name}_{DATA_FILE}")
    scenes = [Scene(**s) for s in json.loads((work / f"{name}_{SCENES_FILE}").read_text())]
    return {k: data[k] for k in data.files}, scenes


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ThinkerRun:
    """The settings of `small thinker` (validated here)."""

    work: Path = Path(".thinker_run")
    weights: Path = DEFAULT_WEIGHTS  # the committed checkpoint whose thinker is the starting point
    minutes: float = 40.0  # training wall-time budget
    pairs: int = 700  # training scenes with an event
    per_class: int = 16  # generated sounds per class
    background_frac: float = 0.3  # of the pairs, also used as background-only scenes
    heldout_pairs: int = 40
    batch: int = 8  # scenes per step
    text_batch: int = 4  # text-only reasoning examples per step
    lr: float = 2e-3
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 2
    workers: int = 2  # synthesis processes
    save_every_s: float = 300.0
    max_steps: int | None = None  # stop after this many steps (tests), else the time budget alone
    resume: bool = False  # start from the trained tensors already in `work` (a second time budget)
    kind_weights: tuple[tuple[str, float], ...] = tuple(QUESTION_KINDS.items())  # how often each kind is drawn
    audio_lr_scale: float = 1.0  # the audio encoder's learning rate, relative to `lr`
    probe_steps: int = 0  # steps of the audio-tower probe alone before the answer loss (thinker_probe)
    probe_weight: float = 0.0  # the probe loss's weight beside the answer loss afterwards

    def __post_init__(self) -> None:
        for name in ("pairs", "per_class", "heldout_pairs", "batch", "threads", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if not isinstance(self.text_batch, int) or self.text_batch < 0:
            raise ValueError(f"text-batch must be an integer >= 0, got {self.text_batch!r}")
        if not 0 < self.minutes <= 24 * 60:
            raise ValueError(f"minutes must be in (0, 1440], got {self.minutes}")
        if not 0 < self.lr <= 1 or not 0 <= self.background_frac <= 1 or self.save_every_s <= 0:
            raise ValueError(
                f"need 0 < lr <= 1, 0 <= background-frac <= 1, save-every-s > 0; "
                f"got {self.lr}, {self.background_frac}, {self.save_every_s}"
            )
        kinds = dict(self.kind_weights)
        if set(kinds) != set(QUESTION_KINDS) or any(w < 0 for w in kinds.values()) or sum(kinds.values()) <= 0:
            raise ValueError(
                f"kind weights must give every kind of {sorted(QUESTION_KINDS)} a weight >= 0, got {kinds}"
            )
        if not 0 < self.audio_lr_scale <= 100:
            raise ValueError(f"audio-lr-scale must be in (0, 100], got {self.audio_lr_scale}")
        if not isinstance(self.probe_steps, int) or self.probe_steps < 0 or not 0 <= self.probe_weight <= 100:
            raise ValueError(
                f"need probe-steps >= 0 and 0 <= probe-weight <= 100, got {self.probe_steps!r}, {self.probe_weight!r}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max-steps must be >= 1, got {self.max_steps}")
        if not Path(self.weights).is_file():
            raise FileNotFoundError(f"no weights file at {self.weights} (the checkpoint whose thinker is trained)")

    def to_json(self) -> dict[str, Any]:
        d = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        d["kind_weights"] = dict(self.kind_weights)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ThinkerRun:
        kinds = tuple((str(k), float(w)) for k, w in d["kind_weights"].items())
        return cls(**{**d, "work": Path(d["work"]), "weights": Path(d["weights"]), "kind_weights": kinds})


def load_encoder(weights: Path, device: str = "cpu") -> MLLMEncoder:
    """The `small` preset's thinker in float32 with the weights of `weights`."""
    import torch

    from model.build import build_encoder
    from model.config import get_preset

    return build_encoder(get_preset(PRESET), weights=weights, device=device, dtype=torch.float32)


# --------------------------------------------------------------------------- held-out figures


def named_classes(answer: str) -> set[str]:
    """The classes an answer names (whole words, any case)."""
    import re

    text = answer.lower()
    return {c for c, name in CLASS_TEXT.items() if re.search(rf"\b{re.escape(name)}\b", text)}


def ask(encoder: MLLMEncoder, question: str, audio: Sequence[np.ndarray], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers through `MLLMEncoder.understand`, one request at a time (as a job asks)."""
    from model.mllm import UnderstandRequest

    return [
        encoder.understand([UnderstandRequest(question=question, audio=x)], max_new_tokens=max_new_tokens)[0]
        for x in audio
    ]


def understanding_figures(encoder: MLLMEncoder, audio: Sequence[np.ndarray], scenes: Sequence[Scene]) -> dict[str, Any]:
    """Held-out figures of the understand path: "What do you hear?" names the scene's class
    (accuracy over scenes with an event), names a class that is not there (false-class rate over
    every scene), the background and yes/no answers, and out-of-scope refusals."""
    hear = ask(encoder, HEAR_QUESTIONS[0], audio)
    with_event = [i for i, s in enumerate(scenes) if s.label is not None]
    correct = [scenes[i].label in named_classes(hear[i]) for i in with_event]
    false = [bool(named_classes(a) - {s.label}) for a, s in zip(hear, scenes, strict=True)]
    bg = ask(encoder, BACKGROUND_QUESTIONS[0], audio)
    bg_ok = [BACKGROUND_PHRASE[s.background] in a.lower() for a, s in zip(bg, scenes, strict=True)]
    # Yes/no about the class that is there (scenes with an event) and about the next class.
    yes_no_ok = []
    for i, s in enumerate(scenes):
        asked = s.label or CLASSES[i % len(CLASSES)]
        other = CLASSES[(CLASSES.index(asked) + 1) % len(CLASSES)]
        for c in (asked, other):
            (a,) = ask(encoder, IS_THERE_QUESTIONS[1].format(np=CLASS_PHRASE[c]), [audio[i]])
            yes_no_ok.append(a.lower().startswith("yes" if c == s.label else "no"))
    oos = [a == CANNOT_TELL for q in HELD_OUT_OUT_OF_SCOPE for a in ask(encoder, q, audio[:8])]
    return {
        "scenes": len(scenes),
        "scenes_with_event": len(with_event),
        "hear_question": HEAR_QUESTIONS[0],
        "class_accuracy": round(float(np.mean(correct)), 3) if correct else None,
        "false_class_rate": round(float(np.mean(false)), 3),
        "background_accuracy": round(float(np.mean(bg_ok)), 3),
        "yes_no_accuracy": round(float(np.mean(yes_no_ok)), 3),
        "out_of_scope_refusal_rate": round(float(np.mean(oos)), 3),
        "examples": [{"truth": asdict(scenes[i]), "answer": hear[i]} for i in range(min(4, len(scenes)))],
    }


def held_out_scenes(folder: Path, pairs: int, workers: int) -> tuple[list[np.ndarray], list[Scene]]:
    """Held-out scenes: sounds of seed 1 (no training file reused) in pairs of synthesis seed 2."""
    return make_scenes(
        folder, pairs=pairs, per_class=4, sound_seed=1, synth_seed=2, workers=workers, background_frac=0.25
    )


def heldout_probe_figures(
    work: Path, encoder: MLLMEncoder, audio: Sequence[np.ndarray], scenes: Sequence[Scene]
) -> dict[str, float] | None:
    """The trained audio tower's probe on held-out scenes (None when the run trained no probe)."""
    from safetensors.torch import load_file

    from training.recipes.thinker_probe import EventProbe, probe_accuracy
    from training.recipes.thinker_train import audio_inputs

    if not (work / PROBE_FILE).is_file():
        return None
    probe = EventProbe(int(encoder.thinker.config.audio_config.output_dim))
    probe.load_state_dict(load_file(str(work / PROBE_FILE)))
    feats, frames, tokens = scene_features(encoder.processor, audio)
    data = {"features": feats, "frames": frames, "tokens": tokens}
    return probe_accuracy(encoder.thinker, probe, data, scenes, audio_inputs)


# --------------------------------------------------------------------------- phases


def phase_thinker(run: ThinkerRun, *, in_process: bool = False) -> dict[str, Any]:
    """Data (once per work folder), training on Ray Train (or in this process), held-out figures."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    run = dataclasses.replace(run, work=run.work.resolve(), weights=Path(run.weights).resolve())
    run.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(run.threads)
    t0 = time.perf_counter()
    encoder = load_encoder(run.weights)
    if not (run.work / f"train_{DATA_FILE}").is_file():
        audio, scenes = make_scenes(
            run.work / "sounds_train",
            pairs=run.pairs,
            per_class=run.per_class,
            sound_seed=0,
            synth_seed=0,
            workers=run.workers,
            background_frac=run.background_frac,
        )
        save_scenes(run.work, encoder.processor, audio, scenes, "train")
        log(f"train scenes: {len(scenes)} in {time.perf_counter() - t0:.1f}s")
    data_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    from training.recipes.thinker_train import run_on_ray, train_loop

    if in_process:
        train_loop({"run": run.to_json()})
    else:
        run_on_ray(run)
    train_s = time.perf_counter() - t1
    trained = load_file(str(run.work / TRAINED_FILE))
    state = dict(encoder.thinker.state_dict())
    state.update(trained)
    encoder.load_thinker_state_dict(state)
    progress = json.loads((run.work / HISTORY_FILE).read_text())
    history = progress["history"]
    audio, scenes = held_out_scenes(run.work / "sounds_heldout", run.heldout_pairs, run.workers)
    figures = understanding_figures(encoder, audio, scenes)
    figures["probe"] = heldout_probe_figures(run.work, encoder, audio, scenes)
    summary = {
        "phase": "thinker",
        "settings": {k: v for k, v in run.to_json().items() if k not in ("work", "weights")},
        "train_scenes": "sounds seed 0, synthesis seed 0",
        "heldout_scenes": "sounds seed 1, synthesis seed 2",
        "trained_tensors": len(trained),
        "trained_parameters": int(sum(v.numel() for v in trained.values())),
        "steps": progress["steps"],
        "final_loss": history[-1]["loss"] if history else None,
        "data_s": round(data_s, 1),
        "train_s": round(train_s, 1),
        "heldout": figures,
        "history": history,
    }
    (run.work / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return {k: v for k, v in summary.items() if k != "history"}


def phase_export(work: Path, dst: Path, weights: Path = DEFAULT_WEIGHTS) -> dict[str, Any]:
    """Replace the trained thinker tensors in `weights` and write `dst/model.safetensors`; every
    other tensor keeps its bytes. The thinker summary goes into `dst/train_summary.json`."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from model.mllm import THINKER_PREFIX

    for needed in (work / TRAINED_FILE, work / SUMMARY_FILE, weights):
        if not Path(needed).is_file():
            raise FileNotFoundError(f"{needed} is missing: run `audio-omni-train small thinker` first")
    trained = load_file(str(work / TRAINED_FILE))
    with safe_open(str(weights), "pt") as f:
        metadata = dict(f.metadata() or {})
    state = load_file(str(weights))
    for name, value in trained.items():
        key = THINKER_PREFIX + name
        if key not in state:
            raise ValueError(f"{weights} has no thinker tensor {key}")
        if state[key].shape != value.shape:
            raise ValueError(f"{key}: trained shape {tuple(value.shape)} != {tuple(state[key].shape)}")
        state[key] = value.to(state[key].dtype).contiguous()
    summary = json.loads((work / SUMMARY_FILE).read_text())
    metadata["thinker"] = f"trained by training.recipes.thinker, {summary['steps']} steps"
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"), metadata=metadata)
    train_summary_path = dst / "train_summary.json"
    train_summary = json.loads(train_summary_path.read_text()) if train_summary_path.is_file() else {}
    train_summary["thinker"] = summary
    train_summary_path.write_text(json.dumps(train_summary, indent=1) + "\n")
    return {"phase": "thinker-export", "bytes": (dst / "model.safetensors").stat().st_size, "replaced": len(trained)}
