"""The thinker recipe's training loop (`training.recipes.thinker`): examples built as the
understanding path builds its prompts (`Batcher`), the answer loss, the audio-tower probe's warm start
(`training.recipes.thinker_probe`), and the loop itself, run on Ray Train (`run_on_ray`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from training.recipes.small import log
from training.recipes.thinker import (
    HISTORY_FILE,
    PROBE_FILE,
    TRAINED_FILE,
    ThinkerRun,
    load_encoder,
    load_scenes,
    trainable_names,
    understanding_text,
)
from training.recipes.thinker_data import draw_question, reasoning_examples

if TYPE_CHECKING:
    import torch


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
    from safetensors.torch import load_file, save_file

    from model.prompts import SYS_UNDERSTANDING
    from training.recipes.thinker_probe import (
        EventProbe,
        TowerTap,
        probe_loss,
        probe_targets,
        tower_lengths,
        tower_tokens,
    )

    run = ThinkerRun.from_json(config["run"])
    in_ray = bool(config.get("in_ray", False))
    torch.set_num_threads(run.threads)
    torch.manual_seed(run.seed)
    encoder = load_encoder(run.weights)
    thinker = encoder.thinker
    first_step, history = 0, list[dict[str, Any]]()
    if run.resume:
        from safetensors import safe_open

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
    data, scenes = load_scenes(run.work, "train")
    probe = EventProbe(int(thinker.config.audio_config.output_dim))
    targets = probe_targets(scenes)
    if run.resume and (run.work / PROBE_FILE).is_file():
        probe.load_state_dict(load_file(str(run.work / PROBE_FILE)))
    groups = [
        {"params": [params[n] for n in names if not n.startswith("audio_tower.")], "lr_scale": 1.0},
        {"params": [params[n] for n in names if n.startswith("audio_tower.")], "lr_scale": run.audio_lr_scale},
        {"params": list(probe.parameters()), "lr_scale": run.audio_lr_scale},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=run.lr, weight_decay=0.01, betas=(0.9, 0.98))
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
        save_file({k: v.detach().contiguous() for k, v in probe.state_dict().items()}, str(run.work / PROBE_FILE))
        (run.work / HISTORY_FILE).write_text(json.dumps({"steps": step, "history": history}))

    def optimizer_step(loss: torch.Tensor, scale: float) -> None:
        """Backward, clip, step; log every 10th step and save on schedule."""
        nonlocal step, recent, last_save
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trained_params, 1.0))
        opt.step()
        step += 1
        recent.append(float(loss.detach()))
        if step % 10 == 0:
            rec = {
                "step": step,
                "phase": "probe" if step <= run.probe_steps else "answer",
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

    trained_params = [params[n] for n in names] + list(probe.parameters())
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
        rows = [int(r) for r in rng.integers(0, len(scenes), size=run.batch)]
        audio = audio_inputs(data, rows)
        lengths = tower_lengths(thinker, audio["feature_attention_mask"])
        if step < run.probe_steps:  # the audio tower and its probe alone
            loss = probe_loss(probe, tower_tokens(thinker, audio), lengths, targets, rows)
            optimizer_step(loss, scale)
            continue
        items = []
        for r in rows:
            system, question, answer = draw_question(str(rng.choice(kinds, p=kind_p)), scenes[r], rng)
            items.append(batcher.ids(system, question, answer, int(data["tokens"][r])))
        with TowerTap(thinker) as tap:
            loss = answer_loss(thinker, batcher.collate(items), **audio)
        if run.probe_weight and tap.tokens is not None:
            loss = loss + run.probe_weight * probe_loss(probe, tap.tokens, lengths, targets, rows)
        if run.text_batch:
            picks = rng.integers(0, len(reasoning), size=run.text_batch)
            text_items = [batcher.ids(SYS_UNDERSTANDING, *reasoning[int(p)], 0) for p in picks]
            loss = loss + 0.25 * answer_loss(thinker, batcher.collate(text_items))
        optimizer_step(loss, scale)
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
