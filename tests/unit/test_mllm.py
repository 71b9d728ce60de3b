"""The MLLM conditioner: parity with the reference vectors (section (f)), the tiny offline processor,
the encoder / understanding paths on a tiny random thinker, and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import Qwen2_5OmniProcessor
from transformers.utils import is_torchvision_available

from model.mllm import (
    PROJECTION_PREFIX,
    THINKER_PREFIX,
    MLLMEncoder,
    MLLMPrompt,
    OmniProjection,
    UnderstandRequest,
    load_processor,
    select_hidden,
)
from model.prompts import (
    SYS_UNDERSTANDING,
    generation_prompt,
    understanding_conversation,
    with_audio_marker,
    wrap,
)
from model.tasks import Task
from model.tiny_processor import QWEN_SPECIAL_TOKENS, build_tiny_processor, tiny_mllm_dir

# --------------------------------------------------------------------------- parity (section (f))


@pytest.fixture(scope="module")
def parity(parity_dir: Path):
    vectors_path = parity_dir / "tiny_vectors.safetensors"
    vectors = load_file(vectors_path)
    with safe_open(str(vectors_path), "pt") as handle:
        case = json.loads(handle.metadata()["case"])["omni"]
    omni_config = next(
        c["config"]
        for c in json.loads((parity_dir / "tiny_config.json").read_text())["model"]["conditioning"]["configs"]
        if c["id"] == "omni_prompt"
    )
    pad_length = omni_config["pad_length"]
    state = {k: v.float() for k, v in load_file(parity_dir / "tiny_state_dict.safetensors").items()}

    # The folder the config names, loaded the way production loads a Qwen2.5-Omni folder (float32 here).
    encoder = MLLMEncoder.from_pretrained(
        parity_dir / omni_config["qwen_omni_model_name"],
        dtype=torch.float32,
        pad_length=pad_length,
        layer_idx=case["layer_idx"],
    )
    encoder.load_thinker_state_dict({k: v for k, v in state.items() if k.startswith(THINKER_PREFIX)})

    weight = state[PROJECTION_PREFIX + "proj_features.weight"]
    projection = OmniProjection(in_features=weight.shape[1], out_dim=weight.shape[0], pad_length=pad_length)
    projection.load_state_dict(
        {k[len(PROJECTION_PREFIX) :]: v for k, v in state.items() if k.startswith(PROJECTION_PREFIX + "proj_")},
        strict=True,
    )
    return encoder, projection, vectors, case


def test_parity_hidden_states(parity):
    encoder, _, vectors, case = parity
    mask = vectors["omni.in.attention_mask"]
    hidden = encoder.hidden_states(vectors["omni.in.input_ids"], mask)
    assert len(encoder.thinker.config.text_config.layer_types) + 1 == int(vectors["omni.dbg.num_hidden_states"])
    error = (hidden - vectors[case["hidden_name"]])[mask.bool()].abs().max().item()
    assert error < 1e-5, f"hidden_states[-2] max abs error {error:.3g}"


def test_parity_ids_path(parity):
    encoder, projection, vectors, _ = parity
    rows = encoder.encode_ids(vectors["omni.in.input_ids"], vectors["omni.in.attention_mask"])
    assert [r.shape[0] for r in rows] == [32, 18]  # item 0: 36 real tokens resampled to pad_length 32

    normed, mask = projection.pad_and_norm(rows)
    assert normed.dtype == torch.bfloat16
    normed_error = (normed.float() - vectors["omni.dbg.normed_bf16"]).abs().max().item()
    assert normed_error < 1e-4, f"normed_bf16 max abs error {normed_error:.3g}"

    tokens, mask = projection(rows)
    assert tokens.dtype == torch.float32 and tokens.shape == vectors["omni.out.tokens"].shape
    error = (tokens - vectors["omni.out.tokens"]).abs().max().item()
    assert error < 1e-4, f"omni.out.tokens max abs error {error:.3g}"
    assert torch.equal(mask, vectors["omni.out.mask"].bool())


def test_parity_tensor_path_truncates(parity):
    _, projection, vectors, case = parity
    hidden_bf16 = vectors[case["hidden_bf16_name"]].to(torch.bfloat16)
    mask = vectors["omni.in.attention_mask"].bool()
    rows = [item[item_mask] for item, item_mask in zip(hidden_bf16, mask, strict=True)]
    tokens, out_mask = projection(rows)
    error = (tokens - vectors["omni.out.tokens_from_tensor_path"]).abs().max().item()
    assert error < 1e-4, f"omni.out.tokens_from_tensor_path max abs error {error:.3g}"
    assert torch.equal(out_mask, vectors["omni.out.mask_from_tensor_path"].bool())


def test_encoder_without_processor_refuses_text(parity):
    encoder = parity[0]
    with pytest.raises(ValueError, match="no processor"):
        encoder.encode([MLLMPrompt("hello")])


# --------------------------------------------------------------------------- tensor helpers


def test_select_hidden_aligns_mask_and_resamples_in_bf16():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 4)  # (B, S, D)
    long_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]])  # longer than S
    rows = select_hidden(hidden, long_mask, pad_length=4)
    assert all(r.dtype == torch.bfloat16 for r in rows)
    expected0 = F.interpolate(hidden[0].to(torch.bfloat16).t()[None], size=4, mode="linear", align_corners=False)[0].t()
    assert torch.equal(rows[0], expected0)
    assert torch.equal(rows[1], hidden[1, 2:4].to(torch.bfloat16))

    short_mask = torch.ones(2, 3, dtype=torch.long)  # shorter than S: the rest counts as padding
    rows = select_hidden(hidden, short_mask, pad_length=8)
    assert [r.shape for r in rows] == [torch.Size([3, 4])] * 2


def test_projection_pads_with_bias_rows_and_truncates():
    torch.manual_seed(0)
    projection = OmniProjection(in_features=4, out_dim=6, pad_length=3)
    tokens, mask = projection([torch.randn(5, 4), torch.randn(1, 4)])
    assert tokens.shape == (2, 3, 6) and tokens.dtype == torch.float32
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    bias = projection.proj_features.bias.detach()
    assert torch.equal(tokens[1, 1], bias) and torch.equal(tokens[1, 2], bias)
    with pytest.raises(ValueError, match=r"\(L, 4\)"):
        projection([torch.randn(2, 5)])
    with pytest.raises(ValueError, match="no rows"):
        projection([torch.randn(0, 4)])


# --------------------------------------------------------------------------- tiny processor + encoder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_mllm_dir(tmp_path_factory.mktemp("mllm-cache"))


@pytest.fixture(scope="module")
def tiny_encoder(tiny_dir: Path) -> MLLMEncoder:
    torch.manual_seed(0)
    return MLLMEncoder.from_pretrained(tiny_dir, dtype=torch.float32, pad_length=48)


def _noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16_000 * seconds))).astype(np.float32)


def test_tiny_processor_round_trip(tmp_path: Path):
    built = build_tiny_processor(tmp_path)
    assert type(built) is Qwen2_5OmniProcessor
    loaded = Qwen2_5OmniProcessor.from_pretrained(tmp_path) if is_torchvision_available() else load_processor(tmp_path)
    assert type(loaded) is Qwen2_5OmniProcessor
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert saved["feature_extractor"]["feature_size"] == 128

    tokenizer = loaded.tokenizer
    assert tokenizer.get_vocab() == built.tokenizer.get_vocab()
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert len(set(special_ids)) == len(QWEN_SPECIAL_TOKENS)
    text = "<|im_start|>user\nA dog barking.<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>\n"
    ids = tokenizer(text).input_ids
    for token in ("<|im_start|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>", "<|im_end|>"):
        assert ids.count(tokenizer.convert_tokens_to_ids(token)) == 1
    assert tokenizer.decode(ids) == text

    # The chat template writes the same format as the generation prompts.
    rendered = loaded.apply_chat_template(
        understanding_conversation("What is it?", has_audio=False, has_video=True, system="S"),
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered == wrap("S", "<|vision_bos|><|VIDEO|><|vision_eos|>What is it?")


def test_tiny_dir_is_written_once(tiny_dir: Path):
    config_mtime = (tiny_dir / "config.json").stat().st_mtime_ns
    assert tiny_mllm_dir(tiny_dir.parent) == tiny_dir
    assert (tiny_dir / "config.json").stat().st_mtime_ns == config_mtime
    thinker_config = json.loads((tiny_dir / "config.json").read_text())["thinker_config"]
    tokenizer = load_processor(tiny_dir).tokenizer
    assert thinker_config["audio_token_index"] == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert thinker_config["video_token_index"] == tokenizer.convert_tokens_to_ids("<|VIDEO|>")
    assert thinker_config["text_config"]["vocab_size"] >= len(tokenizer)


def test_encode_text_and_audio(tiny_encoder: MLLMEncoder):
    text = generation_prompt(Task.TEXT_TO_AUDIO, prompt="A dog")
    with_audio = with_audio_marker(text)
    rows = tiny_encoder.encode([MLLMPrompt(text), MLLMPrompt(with_audio, audio=_noise())])
    hidden_size = tiny_encoder.hidden_size
    for r in rows:
        assert r.dtype == torch.bfloat16 and r.ndim == 2 and r.shape[1] == hidden_size
        assert 0 < r.shape[0] <= tiny_encoder.pad_length
    # 1 s of audio adds 25 audio tokens: the sequence is longer than pad_length and gets resampled.
    assert rows[1].shape[0] == tiny_encoder.pad_length

    # Batched and one-by-one give the same rows (left padding is masked out).
    alone = tiny_encoder.encode([MLLMPrompt(with_audio, audio=_noise())])[0]
    assert torch.allclose(alone.float(), rows[1].float(), atol=1e-2)

    # Silent audio counts as no audio: the markers stay plain tokens.
    silent = tiny_encoder.encode([MLLMPrompt(with_audio, audio=np.zeros(16_000, np.float32))])[0]
    none = tiny_encoder.encode([MLLMPrompt(with_audio)])[0]
    assert torch.equal(silent, none)
    assert not torch.equal(silent[: alone.shape[0]], alone[: silent.shape[0]])


def test_encode_video(tiny_encoder: MLLMEncoder):
    frames = torch.randint(0, 256, (4, 3, 56, 56), dtype=torch.uint8)  # (T, 3, H, W)
    text = generation_prompt(Task.VIDEO_TO_AUDIO, prompt="")
    rows = tiny_encoder.encode([MLLMPrompt(text, video=frames), MLLMPrompt(text, video=torch.zeros_like(frames))])
    assert rows[0].shape == (tiny_encoder.pad_length, tiny_encoder.hidden_size)  # many video tokens
    assert rows[1].shape[0] < tiny_encoder.pad_length  # a black video is dropped, markers stay text


def test_mixed_batch_runs_each_media_combination_apart(tiny_encoder: MLLMEncoder):
    frames = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    v2a = generation_prompt(Task.VIDEO_TO_AUDIO, prompt="rain")
    t2a = with_audio_marker(generation_prompt(Task.TEXT_TO_AUDIO, prompt="rain"))
    prompts = [
        MLLMPrompt(v2a, video=torch.zeros_like(frames)),  # black: no video, markers stay tokens
        MLLMPrompt(t2a, audio=_noise()),
        MLLMPrompt(v2a, video=frames),
        MLLMPrompt(t2a),
    ]
    batched = tiny_encoder.encode(prompts)
    alone = [tiny_encoder.encode([p])[0] for p in prompts]
    for got, want in zip(batched, alone, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got.float(), want.float(), atol=1e-2)


def test_understand_returns_only_the_answer(tiny_encoder: MLLMEncoder):
    question = "What sound is in this clip?"
    answers = tiny_encoder.understand(
        [
            UnderstandRequest(question),
            UnderstandRequest(question, audio=_noise(0.5), video=torch.randint(0, 256, (2, 3, 56, 56)).byte()),
        ],
        max_new_tokens=6,
    )
    assert len(answers) == 2
    for answer in answers:
        assert isinstance(answer, str)
        assert question not in answer and SYS_UNDERSTANDING not in answer
    assert isinstance(tiny_encoder.transcribe([_noise(0.5)], max_new_tokens=4)[0], str)


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (MLLMPrompt(""), "non-empty"),
        (MLLMPrompt("   "), "non-empty"),
        (
            MLLMPrompt(with_audio_marker(wrap("S", "U")), audio=np.full(16_000, np.nan, np.float32)),
            "NaN or Inf",
        ),
        (
            MLLMPrompt(with_audio_marker(wrap("S", "U")), audio=np.full(16_000, np.inf, np.float32)),
            "NaN or Inf",
        ),
        (MLLMPrompt(with_audio_marker(wrap("S", "U")), audio=_noise(31.0)), "at most 480000"),
        (MLLMPrompt(with_audio_marker(wrap("S", "U")), audio=np.ones((2, 100), np.float32)), "mono"),
        (MLLMPrompt(wrap("S", "U"), audio=_noise()), "AUDIO"),
        (MLLMPrompt(wrap("S", "U"), video=torch.ones(2, 3, 56, 56, dtype=torch.uint8)), "VIDEO"),
        (MLLMPrompt(generation_prompt(Task.VIDEO_TO_AUDIO), video=torch.ones(2, 3, 56, 56)), "uint8"),
        (
            MLLMPrompt(with_audio_marker(generation_prompt(Task.VIDEO_TO_AUDIO)), audio=_noise()),
            "no \\(non-silent, non-black\\) media",
        ),
    ],
)
def test_bad_prompts_raise(tiny_encoder: MLLMEncoder, prompt: MLLMPrompt, match: str):
    with pytest.raises(ValueError, match=match):
        tiny_encoder.encode([prompt])


def test_bad_requests_raise(tiny_encoder: MLLMEncoder, tiny_dir: Path):
    with pytest.raises(ValueError, match="at least one"):
        tiny_encoder.encode([])
    with pytest.raises(ValueError, match="non-empty"):
        tiny_encoder.understand([UnderstandRequest("")])
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny_encoder.understand([UnderstandRequest("What?", audio=np.full(100, np.nan, np.float32))])
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_encoder.understand([UnderstandRequest("What?")], max_new_tokens=0)
    with pytest.raises(ValueError, match="layer_idx"):
        MLLMEncoder(tiny_encoder.thinker, layer_idx=3)
    with pytest.raises(ValueError, match="pad_length"):
        MLLMEncoder(tiny_encoder.thinker, pad_length=0)
    with pytest.raises(ValueError, match=r"config\.json"):
        MLLMEncoder.from_pretrained(tiny_dir / "missing")
