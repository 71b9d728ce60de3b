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
    draw_question,
    reasoning_examples,
)

if TYPE_CHECKING:
    import torch

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


# --------------------------------------------------------------------------- batches


class Batcher:
    """Token ids and labels of examples, built as the understanding path builds its prompts."""

    def __init__(self, processor: Any) -> None:
        from model.mllm import AUDIO_TOKEN
        from model.prompts import IM_END

        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.audio_token = AUDIO_TOKEN
        self.im_end = IM_END
        self.pad_id = int(self.tokenizer.pad_token_id)
        self._cache: dict[tuple[str, str, str, int], tuple[list[int], int]] = {}

    def ids(self, system: str, question: str, answer: str, audio_tokens: int) -> tuple[list[int], int]:
        """Token ids of prompt + answer + `<|im_end|>`, and where the answer starts. `audio_tokens` is
        the processor's count for the scene's audio (0: a text-only prompt)."""
        key = (system, question, answer, audio_tokens)
        if key not in self._cache:
            prompt = understanding_text(self.processor, system, question, has_audio=audio_tokens > 0)
            if audio_tokens > 0:  # the processor's expansion of the marker
                prompt = prompt.replace(self.audio_token, self.audio_token * audio_tokens)
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full_ids = self.tokenizer(prompt + answer + self.im_end, add_special_tokens=False)["input_ids"]
            if full_ids[: len(prompt_ids)] != prompt_ids:
                raise ValueError(f"the answer {answer!r} changes the prompt's tokens; start it with a word")
            self._cache[key] = (full_ids, len(prompt_ids))
        return self._cache[key]

    def collate(self, items: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        """Right-padded input_ids, attention_mask and labels (-100 outside the answers)."""
        import torch

        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for i, (ids, start) in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, start : len(ids)] = torch.tensor(ids[start:])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def answer_loss(thinker: Any, batch: dict[str, torch.Tensor], **audio: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of a batch."""
    import torch.nn.functional as F

    out = thinker(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_audio_in_video=False,
        use_cache=False,
        return_dict=True,
        **audio,
    )
    logits = out.logits[:, :-1].float()  # (B, S-1, V)
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def audio_inputs(data: dict[str, np.ndarray], rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """input_features (B, mels, frames) and feature_attention_mask (B, frames) of scenes `rows`."""
    import torch

    frames = data["frames"][list(rows)]
    width = int(frames.max())
    feats = torch.from_numpy(data["features"][list(rows), :, :width].astype(np.float32))
    mask = (torch.arange(width)[None, :] < torch.from_numpy(frames)[:, None]).to(torch.int32)
    return {"input_features": feats, "feature_attention_mask": mask}


# --------------------------------------------------------------------------- the loop (Ray Train worker)


def train_loop(config: dict[str, Any]) -> None:
    """Train the thinker's unfrozen parameters until the time budget (or `max_steps`) is spent;
    writes `TRAINED_FILE` (those parameters) and the loss history under `work`."""
    import torch
    from safetensors.torch import save_file

    from model.prompts import SYS_UNDERSTANDING

    run = ThinkerRun.from_json(config["run"])
    in_ray = bool(config.get("in_ray", False))
    torch.set_num_threads(run.threads)
    torch.manual_seed(run.seed)
    encoder = load_encoder(run.weights)
    thinker = encoder.thinker
    first_step, history = 0, list[dict[str, float]]()
    if run.resume:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with torch.no_grad():
            for name, value in load_file(str(run.work / TRAINED_FILE)).items():
                thinker.get_parameter(name).copy_(value)
        with safe_open(str(run.work / TRAINED_FILE), "pt") as f:
            first_step = int((f.metadata() or {}).get("steps", "0"))
        if (run.work / HISTORY_FILE).is_file():
            history = json.loads((run.work / HISTORY_FILE).read_text())["history"]
    text_cfg = thinker.config.text_config
    names = trainable_names([n for n, _ in thinker.named_parameters()], text_cfg.num_hidden_layers, encoder.layer_idx)
    params = dict(thinker.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    thinker.train()
    groups = [
        {"params": [params[n] for n in names if not n.startswith("audio_tower.")], "lr_scale": 1.0},
        {"params": [params[n] for n in names if n.startswith("audio_tower.")], "lr_scale": run.audio_lr_scale},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=run.lr, weight_decay=0.01, betas=(0.9, 0.98))
    data, scenes = load_scenes(run.work, "train")
    batcher = Batcher(encoder.processor)
    reasoning = reasoning_examples()
    weights = dict(run.kind_weights)
    kinds = list(weights)
    kind_p = np.array([weights[k] for k in kinds])
    kind_p = kind_p / kind_p.sum()
    budget_s = run.minutes * 60.0
    start = last_save = time.perf_counter()
    step, steps_before, recent = first_step, first_step, list[float]()

    def save() -> None:
        state = {n: params[n].detach().float().contiguous() for n in names}
        save_file(state, str(run.work / TRAINED_FILE), metadata={"steps": str(step)})
        (run.work / HISTORY_FILE).write_text(json.dumps({"steps": step, "history": history}))

    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s or (run.max_steps is not None and step - steps_before >= run.max_steps):
            break
        rng = np.random.default_rng([run.seed, step])
        # Linear warm-up, then linear decay to 10 % over the time budget.
        warm = min(1.0, (step - steps_before + 1) / run.warmup_steps)
        scale = warm * (1.0 - 0.9 * min(1.0, elapsed / budget_s))
        for group in opt.param_groups:
            group["lr"] = run.lr * scale * group["lr_scale"]
        rows = rng.integers(0, len(scenes), size=run.batch)
        items = []
        for r in rows:
            system, question, answer = draw_question(str(rng.choice(kinds, p=kind_p)), scenes[int(r)], rng)
            items.append(batcher.ids(system, question, answer, int(data["tokens"][int(r)])))
        loss = answer_loss(thinker, batcher.collate(items), **audio_inputs(data, [int(r) for r in rows]))
        if run.text_batch:
            picks = rng.integers(0, len(reasoning), size=run.text_batch)
            text_items = [batcher.ids(SYS_UNDERSTANDING, *reasoning[int(p)], 0) for p in picks]
            loss = loss + 0.25 * answer_loss(thinker, batcher.collate(text_items))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_([params[n] for n in names], 1.0))
        opt.step()
        step += 1
        recent.append(float(loss.detach()))
        if step % 10 == 0:
            rec = {
                "step": step,
                "loss": round(float(np.mean(recent)), 4),
                "grad_norm": round(grad_norm, 3),
                "lr": round(run.lr * scale, 6),
                "t_s": round(time.perf_counter() - start, 1),
            }
            recent = []
            history.append(rec)
            log(json.dumps(rec))
            if in_ray:
                import ray.train

                ray.train.report(rec)
        if time.perf_counter() - last_save > run.save_every_s:
            save()
            last_save = time.perf_counter()
    save()


def run_on_ray(run: ThinkerRun) -> None:
    """`train_loop` on Ray Train (one CPU worker)."""
    import os

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.local_ray import init_ray

    init_ray()
    storage = os.environ.get("AUDIO_OMNI_RAY_TRAIN_DIR", str((run.work / "ray_results").resolve()))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"run": run.to_json(), "in_ray": True},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"thinker-{int(time.time())}", storage_path=storage),
    )
    trainer.fit()


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
