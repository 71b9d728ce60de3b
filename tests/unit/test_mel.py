"""Log-mel front end and mel conditioner: parity vectors, masking replay, length rules, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.conditioners.mel import MelConditioner, fit_window, log_mel, mel_filterbank

PREFIX = "conditioner.conditioners.audio_input_prompt."
TOL = 1e-4


@pytest.fixture(scope="module")
def vectors(parity_dir):
    path = parity_dir / "tiny_vectors.safetensors"
    with safe_open(str(path), "pt") as handle:
        case = json.loads(handle.metadata()["case"])
    return load_file(str(path)), case


@pytest.fixture(scope="module")
def tiny(parity_dir) -> MelConditioner:
    config = json.loads((parity_dir / "tiny_config.json").read_text())
    (entry,) = [c for c in config["model"]["conditioning"]["configs"] if c["id"] == "audio_input_prompt"]
    cfg = entry["config"]
    module = MelConditioner(
        seq_len=cfg["seq_len"],
        n_mels=cfg["n_mel_channels"],
        n_fft=cfg["n_fft"],
        hop_length=cfg["hop_length"],
        win_length=cfg["win_length"],
        sample_rate=cfg["target_sample_rate"],
    )
    weights = load_file(str(parity_dir / "tiny_state_dict.safetensors"))
    own = {k.removeprefix(PREFIX): v.float() for k, v in weights.items() if k.startswith(PREFIX)}
    module.load_state_dict(own, strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def wav(vectors) -> torch.Tensor:
    """(2, 441000): the vectors' item 0 and a silent item 1 (case.mel.items)."""
    tensors, case = vectors
    assert case["mel"]["items"] == ["mel.in.wav0_pcm16 / 32768", "zeros(441000)"]
    item0 = tensors["mel.in.wav0_pcm16"].float() / 32768
    return torch.cat([item0, torch.zeros(1, case["mel"]["num_samples"])])


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_log_mel_matches_vectors(wav, vectors):
    tensors, _ = vectors
    mel = log_mel(wav)
    assert mel.shape == (2, 100, int(tensors["mel.dbg.num_frames"]))
    assert mel.dtype == torch.float32
    errs = {
        "logmel0_head64": _err(mel[:1, :, :64], tensors["mel.dbg.logmel0_head64"]),
        "logmel0_tail64": _err(mel[:1, :, -64:], tensors["mel.dbg.logmel0_tail64"]),
        "logmel1_value": _err(mel[1], tensors["mel.dbg.logmel1_value"]),
    }
    print("mel.dbg max abs errors", errs)
    assert all(e < TOL for e in errs.values()), errs
    torch.testing.assert_close(mel[1], torch.full_like(mel[1], math.log(1e-5)))


def test_log_mel_is_float32_under_autocast_and_averages_channels(wav):
    short = wav[:1, :8192]
    expected = log_mel(short)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = log_mel(short)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected)
    stereo = torch.stack([short[0], torch.zeros_like(short[0])])[None]  # (1, 2, N)
    torch.testing.assert_close(log_mel(stereo), log_mel(short * 0.5))


def test_mel_filterbank_shape_and_triangles():
    fb = mel_filterbank(sample_rate=44100, n_fft=1024, n_mels=100)
    assert fb.shape == (513, 100)
    assert fb.min() >= 0 and fb.max() <= 1
    assert (fb.argmax(dim=0).diff() >= 0).all()  # centres increase with the filter index


def test_tokens_match_vectors(tiny, wav, vectors):
    tensors, _ = vectors
    with torch.no_grad():
        tokens, mask = tiny(wav)
    err = _err(tokens, tensors["mel.out.tokens"])
    print(f"mel.out.tokens max abs err {err:.3g}")
    assert err < TOL
    assert torch.equal(mask, tensors["mel.out.mask"])


def test_tts_masking_replay_matches_vectors(tiny, wav, vectors):
    tensors, case = vectors
    start, length = tensors["mel.tts.mask_start_len"].tolist()
    spans: list[tuple[int, int] | None] = [None, None]
    spans[case["mel"]["tts_item"]] = (start, length)
    with torch.no_grad():
        tokens, _ = tiny(wav, mask_spans=spans)
        unmasked, _ = tiny(wav)
    err = _err(tokens, tensors["mel.tts.out.tokens"])
    print(f"mel.tts.out.tokens max abs err {err:.3g}")
    assert err < TOL
    other = 1 - case["mel"]["tts_item"]
    assert torch.equal(tokens[other], unmasked[other])


def test_wrong_length_names_allowed_range(tiny):
    assert tiny.num_samples_range == (440832, 441087)
    for n in (440831, 441088, 264600):
        with pytest.raises(ValueError, match=r"440832\.\.441087"):
            tiny(torch.zeros(1, n))
    for n in (440832, 441087):
        tokens, _ = tiny(torch.zeros(1, n))
        assert tokens.shape == (1, tiny.seq_len, 768)


def test_non_finite_and_bad_shapes_raise(tiny):
    bad = torch.zeros(1, 441000)
    bad[0, 1000] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny(bad)
    bad[0, 1000] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny(bad)
    with pytest.raises(ValueError, match=r"\(B, N\) or \(B, C, N\)"):
        tiny(torch.zeros(441000))
    with pytest.raises(ValueError, match="2 entries for a batch of 1"):
        tiny(torch.zeros(1, 441000), mask_spans=[None, None])
    with pytest.raises(ValueError, match="start \\+ length <= 1723"):
        tiny(torch.zeros(1, 441000), mask_spans=[(1000, 800)])


def test_fit_window_pads_and_crops():
    wav = torch.arange(1, 6, dtype=torch.float32)
    assert fit_window(wav, 3).tolist() == [1, 2, 3]
    assert fit_window(wav, 7).tolist() == [1, 2, 3, 4, 5, 0, 0]
    assert torch.equal(fit_window(wav, 5), wav)
    with pytest.raises(ValueError, match="1-D"):
        fit_window(wav[None], 5)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fit_window(wav, 0)


def test_full_size_keys_and_shapes(parity_dir):
    with torch.device("meta"):
        module = MelConditioner(seq_len=236)
    rows = (line.split("\t") for line in (parity_dir / "full_param_shapes.tsv").read_text().splitlines())
    expected = {r[0].removeprefix(PREFIX): r[1] for r in rows if r[0].startswith(PREFIX)}
    ours = {k: "x".join(str(d) for d in v.shape) for k, v in module.state_dict().items()}
    assert ours == expected
