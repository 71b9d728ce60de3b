"""Transcript front end and speech conditioner: spec examples, parity vectors, batching, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.conditioners.speech import SpeechConditioner, sinusoid_table
from model.conditioners.text_frontend import (
    DEFAULT_VOCAB_PATH,
    batch_ids,
    load_vocab,
    speech_token_ids,
    text_to_tokens,
    tokens_to_ids,
)

PREFIX = "conditioner.conditioners.speech_prompt."
TOL = 1e-4


@pytest.fixture(scope="module")
def vocab():
    return load_vocab()


@pytest.fixture(scope="module")
def vectors(parity_dir):
    path = parity_dir / "tiny_vectors.safetensors"
    with safe_open(str(path), "pt") as handle:
        case = json.loads(handle.metadata()["case"])
    return load_file(str(path)), case


@pytest.fixture(scope="module")
def tiny(parity_dir) -> SpeechConditioner:
    config = json.loads((parity_dir / "tiny_config.json").read_text())
    (entry,) = [c for c in config["model"]["conditioning"]["configs"] if c["id"] == "speech_prompt"]
    module = SpeechConditioner(seq_len=entry["config"]["seq_len"], proj_seq_len=entry["config"]["proj_seq_len"])
    weights = load_file(str(parity_dir / "tiny_state_dict.safetensors"))
    own = {k.removeprefix(PREFIX): v.float() for k, v in weights.items() if k.startswith(PREFIX)}
    module.load_state_dict(own, strict=True)
    return module.eval()


# --------------------------------------------------------------------------- vocabulary / front end


def test_vocab_is_crlf_safe_and_matches_spec_examples(vocab, parity_dir):
    assert len(vocab) == 2545
    assert not any("\r" in token for token in vocab)
    expected = {
        " ": 0,
        ",": 12,
        "-": 13,
        ".": 14,
        "A": 32,
        "Z": 57,
        "a": 62,
        "z": 1294,
        "，": 2541,
        "。": 1895,
    }
    assert {token: vocab[token] for token in expected} == expected
    assert DEFAULT_VOCAB_PATH.read_bytes() == (parity_dir / "vocab.txt").read_bytes()
    assert load_vocab(parity_dir / "vocab.txt") == vocab


SPEC_EXAMPLES = [
    (
        "Hello, welcome to Audio-Omni.",
        "H e l l o , ␠ w e l c o m e ␠ t o ␠ A u d i o - ␠ O m n i .",
        [
            39,
            325,
            615,
            615,
            827,
            12,
            0,
            1149,
            325,
            615,
            143,
            827,
            704,
            325,
            0,
            1082,
            827,
            0,
            32,
            1147,
            250,
            507,
            827,
            13,
            0,
            46,
            704,
            765,
            507,
            14,
        ],
    ),
    (
        "你好，欢迎使用Audio-Omni。",
        "␠ ni2 ␠ hao3 ， ␠ huan1 ␠ ying2 ␠ shi3 ␠ yong4 ␠ A u d i o - ␠ O m n i 。",
        [
            0,
            793,
            0,
            458,
            2541,
            0,
            487,
            0,
            1268,
            0,
            1029,
            0,
            1275,
            0,
            32,
            1147,
            250,
            507,
            827,
            13,
            0,
            46,
            704,
            765,
            507,
            1895,
        ],
    ),
    (
        "It's 3 o'clock; “quoted” text",
        "I t ' s ␠ 3 ␠ o ' c l o c k , ␠ \" q u o t e d \" ␠ t e x t",
        [
            40,
            1082,
            7,
            973,
            0,
            19,
            0,
            827,
            7,
            143,
            615,
            827,
            143,
            560,
            12,
            0,
            2,
            891,
            1147,
            827,
            1082,
            325,
            250,
            2,
            0,
            1082,
            325,
            1184,
            1082,
        ],
    ),
]


@pytest.mark.parametrize(("text", "spelled", "ids"), SPEC_EXAMPLES)
def test_text_to_tokens_spec_examples(vocab, text, spelled, ids):
    tokens = text_to_tokens(text)
    assert tokens == [" " if t == "␠" else t for t in spelled.split(" ")]
    assert tokens_to_ids(tokens, vocab) == ids


def test_text_to_tokens_matches_reference_chars(parity_dir):
    data = json.loads((parity_dir / "speech_chars.json").read_text(encoding="utf-8"))
    for text, chars in zip(data["texts"], data["chars"], strict=True):
        assert text_to_tokens(text if text is not None else "") == chars


def test_unknown_tokens_map_to_space_and_padding_is_minus_one(vocab):
    assert tokens_to_ids(["<", "^", "a", "no-such-token"], vocab) == [0, 0, 62, 0]
    ids = batch_ids(["ab", None, ""], vocab)
    assert ids.tolist() == [[vocab["a"], vocab["b"]], [-1, -1], [-1, -1]]
    assert batch_ids([None, ""], vocab).shape == (2, 0)


def test_non_string_transcript_is_rejected():
    with pytest.raises(ValueError, match="must be a str"):
        text_to_tokens(b"bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parity


def test_token_ids_from_texts_equal_vectors(vectors):
    tensors, case = vectors
    token_ids, is_none = speech_token_ids(case["speech"]["texts"])
    assert torch.equal(token_ids, tensors["speech.in.token_ids"])
    assert is_none.nonzero().flatten().tolist() == case["speech"]["none_items"]


def test_text_embed_and_tokens_match_vectors(tiny, vectors):
    tensors, case = vectors
    token_ids, is_none = tiny.speech_token_ids(case["speech"]["texts"])
    with torch.no_grad():
        text = tiny.encode_text(token_ids)
        tokens, mask = tiny(token_ids, is_none, legacy_mixed_batch_norm=True)
    err_text = (text - tensors["speech.dbg.text_embed"]).abs().max().item()
    err_tokens = (tokens - tensors["speech.out.tokens"]).abs().max().item()
    print(f"speech.dbg.text_embed max abs err {err_text:.3g}; speech.out.tokens {err_tokens:.3g}")
    assert err_text < TOL
    assert err_tokens < TOL
    assert tokens.dtype == torch.float32
    assert torch.equal(mask, tensors["speech.out.mask"])


# --------------------------------------------------------------------------- None items and batching


def test_all_none_batch_returns_raw_empty_feat(tiny):
    token_ids, is_none = tiny.speech_token_ids([None, None])
    raw = tiny.empty_speech_feat.detach().expand(2, -1, -1)
    for legacy in (False, True):
        with torch.no_grad():
            tokens, mask = tiny(token_ids, is_none, legacy_mixed_batch_norm=legacy)
        assert torch.equal(tokens, raw)
        assert torch.equal(mask, torch.ones(2, tiny.num_tokens))


def test_default_mode_is_independent_of_batch_composition(tiny):
    texts = ["hello world", None, "你好世界, Audio-Omni!", "short"]
    with torch.no_grad():
        batched, _ = tiny(*tiny.speech_token_ids(texts))
        for i, text in enumerate(texts):
            alone, _ = tiny(*tiny.speech_token_ids([text]))
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=0)  # kernel rounding only
        legacy, _ = tiny(*tiny.speech_token_ids(texts), legacy_mixed_batch_norm=True)
    # The None item is the raw learned tensor by default and the normalised one in legacy mode.
    raw = tiny.empty_speech_feat.detach()[0]
    assert torch.equal(batched[1], raw)
    torch.testing.assert_close(legacy[1], raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(legacy[[0, 2, 3]], batched[[0, 2, 3]], atol=1e-5, rtol=0)


def test_long_transcript_is_truncated_to_seq_len(tiny, vocab):
    text = "the quick brown fox jumps over the lazy dog " * 3
    token_ids, is_none = tiny.speech_token_ids([text])
    assert token_ids.shape[1] > tiny.seq_len
    with torch.no_grad():
        full, _ = tiny(token_ids, is_none)
        cut, _ = tiny(token_ids[:, : tiny.seq_len], is_none)
    assert torch.equal(full, cut)


def test_empty_string_transcript_does_not_crash(tiny):
    with torch.no_grad():
        tokens, mask = tiny(*tiny.speech_token_ids(["", "hi"]))
    assert torch.equal(mask, torch.ones(2, tiny.num_tokens))
    assert tokens.shape == (2, tiny.num_tokens, 768)
    assert torch.isfinite(tokens).all()
    token_ids, is_none = tiny.speech_token_ids([""])
    assert token_ids.shape == (1, 0) and not is_none.any()
    with torch.no_grad():
        only_empty, _ = tiny(token_ids, is_none)
    torch.testing.assert_close(only_empty[0], tokens[0], atol=1e-5, rtol=0)


def test_bad_inputs_raise(tiny):
    ids = torch.tensor([[1, 2, -1]])
    with pytest.raises(ValueError, match=r"token ids must be in \[-1, 2544\]"):
        tiny(torch.tensor([[1, 2545]]), torch.tensor([False]))
    with pytest.raises(ValueError, match=r"token ids must be in"):
        tiny(torch.tensor([[-2, 1]]), torch.tensor([False]))
    with pytest.raises(ValueError, match="int64"):
        tiny(ids.float(), torch.tensor([False]))
    with pytest.raises(ValueError, match=r"is_none must be a \(1,\) bool"):
        tiny(ids, torch.tensor([False, True]))
    with pytest.raises(ValueError, match="seq_len must be in"):
        SpeechConditioner(seq_len=5000, proj_seq_len=8)


# --------------------------------------------------------------------------- full-size layout


def _full_shapes(parity_dir, prefix: str) -> dict[str, str]:
    rows = (line.split("\t") for line in (parity_dir / "full_param_shapes.tsv").read_text().splitlines())
    return {row[0].removeprefix(prefix): row[1] for row in rows if row[0].startswith(prefix)}


def test_full_size_keys_and_shapes(parity_dir):
    with torch.device("meta"):
        module = SpeechConditioner(seq_len=2584, proj_seq_len=256)
    ours = {k: "x".join(str(d) for d in v.shape) for k, v in module.state_dict().items()}
    assert ours == _full_shapes(parity_dir, PREFIX)
    assert module.text_embed.pos_table.shape == (2584, 512)  # non-persistent: not in the checkpoint


def test_meta_built_module_gets_its_table_back_on_assign_load(tiny):
    with torch.device("meta"):
        module = SpeechConditioner(seq_len=tiny.seq_len, proj_seq_len=tiny.num_tokens)
    module.load_state_dict(tiny.state_dict(), strict=True, assign=True)
    assert torch.equal(module.text_embed.pos_table, sinusoid_table(tiny.seq_len, 512))
    token_ids, is_none = tiny.speech_token_ids(["hello world", None])
    with torch.no_grad():
        assert torch.equal(module(token_ids, is_none)[0], tiny(token_ids, is_none)[0])


def test_pinyin_runs_without_syllables_stay_one_item_per_character():
    # pypinyin merges "……" into one item; the per-character alignment must survive (sandhi too).
    from model.conditioners.text_frontend import _segment_pinyin

    assert _segment_pinyin("你好……") == ["ni2", "hao3", "…", "…"]
