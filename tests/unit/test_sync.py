"""Sync conditioner: the sampling run's global conditioning, null input, shapes, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.conditioners.mel import MelConditioner
from model.conditioners.sync import SyncConditioner

ROOT = "conditioner.conditioners."
TOL = 1e-4


def _own(weights: dict[str, torch.Tensor], cond_id: str) -> dict[str, torch.Tensor]:
    prefix = f"{ROOT}{cond_id}."
    return {k.removeprefix(prefix): v.float() for k, v in weights.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def setup(parity_dir):
    path = parity_dir / "tiny_vectors.safetensors"
    with safe_open(str(path), "pt") as handle:
        case = json.loads(handle.metadata()["case"])
    config = json.loads((parity_dir / "tiny_config.json").read_text())
    cfgs = {c["id"]: c["config"] for c in config["model"]["conditioning"]["configs"]}
    weights = load_file(str(parity_dir / "tiny_state_dict.safetensors"))
    sync = SyncConditioner(seq_in=cfgs["sync_feature"]["sync_seq_dim"], seq_out=cfgs["sync_feature"]["sync_output_dim"])
    sync.load_state_dict(_own(weights, "sync_feature"), strict=True)
    mel = MelConditioner(seq_len=cfgs["audio_input_prompt"]["seq_len"])
    mel.load_state_dict(_own(weights, "audio_input_prompt"), strict=True)
    return load_file(str(path)), case, sync.eval(), mel.eval()


def test_global_cond_of_sampling_run(setup):
    tensors, case, sync, mel = setup
    items = case["sampling"]["items"]
    assert items[0]["sync_feature"] == "samp.in.sync_feature0_f16"
    assert items[1]["sync_feature"] == "zeros(1,240,768)"
    assert [item["TASK_TTS"] for item in items] == [False, False]
    features = torch.cat([tensors["samp.in.sync_feature0_f16"].float(), sync.null_features(1)])  # (2, 240, 768)
    audio = torch.cat([tensors["mel.in.wav0_pcm16"].float() / 32768, torch.zeros(1, 441000)])  # mel items 0, 1
    with torch.no_grad():
        sync_tokens, sync_mask = sync(features)
        mel_tokens, _ = mel(audio)
    global_cond = torch.cat([sync_tokens, mel_tokens], dim=1)  # (2, 16, 768)
    err = (global_cond - tensors["samp.cond.global_cond"]).abs().max().item()
    err_sync = (sync_tokens - tensors["samp.cond.global_cond"][:, : sync.seq_out]).abs().max().item()
    print(f"samp.cond.global_cond max abs err {err:.3g} (sync part {err_sync:.3g})")
    assert err < TOL
    assert torch.equal(sync_mask, torch.ones(2, sync.seq_out))


def test_null_tokens_are_a_function_of_the_weights(setup):
    _, _, sync, _ = setup
    with torch.no_grad():
        tokens, _ = sync(sync.null_features(2))
        # LayerNorm of a zero row is its bias; every time step is proj(bias), then mixed over time.
        step = sync.proj(sync.norm.bias)  # (D,)
        expected = sync.dim_project.weight.sum(dim=1)[:, None] * step + sync.dim_project.bias[:, None]
    torch.testing.assert_close(tokens, expected.expand(2, -1, -1), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise(setup):
    _, _, sync, _ = setup
    for shape in ((1, 239, 768), (1, 240, 512), (240, 768)):
        with pytest.raises(ValueError, match=r"shape \(B, 240, 768\)"):
            sync(torch.zeros(shape))
    bad = sync.null_features(1)
    bad[0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sync(bad)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        sync.null_features(0)
    with pytest.raises(ValueError, match="seq_out must be >= 1"):
        SyncConditioner(seq_out=0)


def test_full_size_keys_and_shapes(parity_dir):
    with torch.device("meta"):
        module = SyncConditioner(seq_out=128)
    prefix = f"{ROOT}sync_feature."
    rows = (line.split("\t") for line in (parity_dir / "full_param_shapes.tsv").read_text().splitlines())
    expected = {r[0].removeprefix(prefix): r[1] for r in rows if r[0].startswith(prefix)}
    ours = {k: "x".join(str(d) for d in v.shape) for k, v in module.state_dict().items()}
    assert ours == expected
