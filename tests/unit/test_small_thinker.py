"""The thinker recipe of the `small` model (training/recipes/thinker.py): which tensors it trains,
its answers, and that its examples are tokenized exactly as the understanding path does. That the
rows conditioning reads stay bit-identical after training is tests/integration/test_thinker_recipe.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.recipes import thinker, thinker_data, thinker_train
from training.recipes.small import CLASSES, prompt_of

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "model" / "data" / "small" / "model.safetensors"


@pytest.fixture(scope="module")
def encoder() -> thinker.MLLMEncoder:
    return thinker.load_encoder(WEIGHTS)


def test_trainable_split_keeps_everything_conditioning_reads_frozen():
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
        "audio_tower.conv1.weight",
        "audio_tower.proj.weight",
        "visual.blocks.0.attn.qkv.weight",
    ]
    # layer_idx -2 of 2 layers = hidden_states[1] = the output of layer 0
    assert thinker.trainable_names(names, 2, -2) == [
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
        "audio_tower.conv1.weight",
        "audio_tower.proj.weight",
    ]
    assert thinker.trainable_names(names, 2, 1) == thinker.trainable_names(names, 2, -2)
    # Conditioning on the last (normed) entry leaves only the heads that never feed it.
    assert thinker.trainable_names(names, 2, -1) == [
        "lm_head.weight",
        "audio_tower.conv1.weight",
        "audio_tower.proj.weight",
    ]
    with pytest.raises(ValueError, match="outside"):
        thinker.trainable_names(names, 2, 3)


def test_answers_name_the_class_and_describe_is_the_dits_prompt():
    from model.prompts import generation_prompt
    from model.tasks import Task

    scene = thinker_data.Scene(label="noise_burst", onset_s=3.4, background="pink")
    assert thinker_data.answer_for("hear", scene) == "A noise burst at around 3 seconds, over pink noise."
    assert thinker.named_classes(thinker_data.answer_for("hear", scene)) == {"noise_burst"}
    assert thinker_data.answer_for("is_there", scene, "tone") == "No, I hear no tone."
    assert thinker_data.answer_for("when", scene, "noise_burst") == "Around 3 seconds."
    assert thinker.named_classes(thinker_data.answer_for("hear", thinker_data.Scene(None, 0.0, "hum"))) == set()
    for label in CLASSES:
        described = thinker_data.answer_for("describe", thinker_data.Scene(label, 1.0, "brown"))
        # what a describe -> generate chain hands text_to_audio is exactly a prompt the DiT trained on
        assert generation_prompt(Task.TEXT_TO_AUDIO, prompt=described) == prompt_of("text_to_audio", label)
        assert generation_prompt(Task.EDIT_EXTRACT, prompt=described) == prompt_of("edit_extract", label)


def test_training_examples_tokenize_as_the_processor_does(encoder):
    """The recipe's ids (precomputed audio-token count, chat template, tokenizer) equal the
    processor's own call on the same prompt and audio, and the labels cover the answer alone."""
    from model.prompts import SYS_UNDERSTANDING

    processor = encoder.processor
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)
    _, _, tokens = thinker.scene_features(processor, [audio])
    question, answer = "What do you hear?", "A siren at around 1 second, over a hum."
    batcher = thinker_train.Batcher(processor)
    ids, start = batcher.ids(SYS_UNDERSTANDING, question, answer, int(tokens[0]))
    prompt = thinker.understanding_text(processor, SYS_UNDERSTANDING, question, has_audio=True)
    expected = processor(text=[prompt], audio=[audio], return_tensors="pt", use_audio_in_video=False)["input_ids"][0]
    assert ids[:start] == expected.tolist()
    labels = batcher.collate([(ids, start)])["labels"][0]
    answer_ids = labels[labels != -100].tolist()
    assert processor.tokenizer.decode(answer_ids) == answer + "<|im_end|>"


def test_probe_reads_the_tower_tokens_the_forward_saw_and_learns_them(encoder):
    """The probe's tap keeps exactly the tower output of the thinker's own forward, and a few probe
    steps on two distinguishable scenes lower its loss (the gradient reaches the tower)."""
    import torch

    from model.prompts import SYS_UNDERSTANDING
    from training.recipes import thinker_probe
    from training.recipes.thinker_data import Scene

    processor, model = encoder.processor, encoder.thinker
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 3) / 16000
    audio = [
        (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        (0.3 * rng.standard_normal(t.size)).astype(np.float32),
    ]
    scenes = [Scene(label="tone", onset_s=0.0, background="hum"), Scene(label=None, onset_s=0.0, background="pink")]
    feats, frames, tokens = thinker.scene_features(processor, audio)
    data = {"features": feats, "frames": frames, "tokens": tokens}
    inputs = thinker_train.audio_inputs(data, [0, 1])
    lengths = thinker_probe.tower_lengths(model, inputs["feature_attention_mask"])
    assert lengths == tokens.tolist()
    batcher = thinker_train.Batcher(processor)
    items = [batcher.ids(SYS_UNDERSTANDING, "What do you hear?", "A tone.", int(n)) for n in tokens]
    with torch.no_grad(), thinker_probe.TowerTap(model) as tap:
        thinker_train.answer_loss(model, batcher.collate(items), **inputs)
    assert tap.tokens is not None and tap.tokens.shape == (sum(lengths), model.config.audio_config.output_dim)
    with torch.no_grad():
        assert torch.equal(tap.tokens, thinker_probe.tower_tokens(model, inputs))

    targets = thinker_probe.probe_targets(scenes)
    assert targets[0].tolist() == [CLASSES.index("tone"), thinker_probe.NO_EVENT]
    assert targets[1].tolist() == [thinker_probe.BACKGROUNDS.index("hum"), thinker_probe.BACKGROUNDS.index("pink")]
    torch.manual_seed(0)
    probe = thinker_probe.EventProbe(model.config.audio_config.output_dim)
    tower = [p for n, p in model.named_parameters() if n.startswith("audio_tower.")]
    saved = [p.detach().clone() for p in tower]
    try:
        for p in tower:
            p.requires_grad_(True)
        opt = torch.optim.AdamW([*tower, *probe.parameters()], lr=1e-2)
        losses = []
        for _ in range(8):
            loss = thinker_probe.probe_loss(probe, thinker_probe.tower_tokens(model, inputs), lengths, targets, [0, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.5 * losses[0]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower)
        figures = thinker_probe.probe_accuracy(model, probe, data, scenes, thinker_train.audio_inputs)
        assert figures == {"event_class": 1.0, "class_or_none": 1.0, "background": 1.0}
    finally:
        with torch.no_grad():
            for p, value in zip(tower, saved, strict=True):
                p.copy_(value)
                p.requires_grad_(False)
