"""The thinker recipe end to end, small: scenes, two steps on Ray Train, held-out figures, export.

Export must change only the trained thinker tensors: every other tensor of the checkpoint keeps its
bytes, the frozen thinker tensors (those conditioning reads) too, so every prompt the DiT was trained
on gives bit-identical conditioning rows before and after, while the understanding half did change.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.recipes import thinker
from training.recipes.small import CLASSES, TASKS, prompt_of

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "model" / "data" / "small" / "model.safetensors"


def test_recipe_trains_on_ray_and_exports_only_the_trained_tensors(ray_cluster, tmp_path):
    from model.mllm import THINKER_PREFIX

    run = thinker.ThinkerRun(
        work=tmp_path / "work",
        weights=WEIGHTS,
        minutes=5,
        pairs=4,
        per_class=1,
        heldout_pairs=2,
        batch=2,
        text_batch=1,
        threads=1,
        workers=1,
        max_steps=2,
        probe_steps=1,
        probe_weight=0.5,
    )
    summary = thinker.phase_thinker(run)
    assert summary["steps"] == 2
    probe = summary["heldout"]["probe"]  # the audio-tower probe trained, then read on held-out scenes
    assert set(probe) == {"event_class", "class_or_none", "background"}
    assert all(0.0 <= v <= 1.0 for v in probe.values())
    assert (run.work / thinker.PROBE_FILE).is_file()
    assert summary["heldout"]["scenes_with_event"] == 2
    assert 0.0 <= summary["heldout"]["false_class_rate"] <= 1.0
    trained = load_file(str(run.work / thinker.TRAINED_FILE))
    assert "lm_head.weight" in trained and "audio_tower.proj.weight" in trained
    assert not any(k.startswith(("model.embed_tokens.", "model.layers.0.", "visual.")) for k in trained)
    assert not any(k.startswith(("score.", "event.", "background.")) for k in trained)  # the probe stays out

    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "train_summary.json").write_text(json.dumps({"dit_steps": 1}))
    result = thinker.phase_export(run.work, dst, WEIGHTS)
    assert result["replaced"] == len(trained)
    before, after = load_file(str(WEIGHTS)), load_file(str(dst / "model.safetensors"))
    assert before.keys() == after.keys()
    for key, value in before.items():
        name = key.removeprefix(THINKER_PREFIX)
        if key.startswith(THINKER_PREFIX) and name in trained:
            assert torch.equal(after[key], trained[name]), key
        else:
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    merged = json.loads((dst / "train_summary.json").read_text())
    assert merged["dit_steps"] == 1 and merged["thinker"]["steps"] == 2

    from model.mllm import MLLMPrompt

    texts = sorted({prompt_of(t, c) for t in TASKS for c in CLASSES})  # every prompt the DiT trained on
    assert len(texts) == len(TASKS) * len(CLASSES)
    original = thinker.load_encoder(WEIGHTS)
    exported = thinker.load_encoder(dst / "model.safetensors")
    before = original.encode([MLLMPrompt(text=t) for t in texts])
    after = exported.encode([MLLMPrompt(text=t) for t in texts])
    for text, a, b in zip(texts, before, after, strict=True):
        assert torch.equal(a, b), text
    assert not torch.equal(original.thinker.lm_head.weight, exported.thinker.lm_head.weight)
