"""The model-facing CLI: verify (parity vectors), inspect (checkpoint layout), convert-checkpoint."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from orchestrator.cli import main


def _verify(parity_dir, capsys, *, weights=None, vectors=None) -> tuple[int, list[dict]]:
    rc = main(
        [
            "verify",
            "--config", str(parity_dir / "tiny_config.json"),
            "--weights", str(weights or parity_dir / "tiny_state_dict.safetensors"),
            "--vectors", str(vectors or parity_dir / "tiny_vectors.safetensors"),
        ]
    )  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return rc, lines


def test_verify_matches_every_reference_tensor(parity_dir, capsys):
    rc, lines = _verify(parity_dir, capsys)
    checks = [line for line in lines if "tensor" in line]
    assert rc == 0, [c for c in checks if not c["ok"]]
    names = {c["tensor"] for c in checks}
    # every tensor of the vector file that is not an input or a run parameter is recomputed
    inputs = {"mel.dbg.num_frames", "omni.dbg.num_hidden_states", "mel.tts.mask_start_len", "vae.enc.eps_seed123"}
    outputs = {n for n in load_file(parity_dir / "tiny_vectors.safetensors") if ".in." not in n} - inputs
    assert outputs <= names, sorted(outputs - names)
    assert all(c["max_abs_err"] <= c["tolerance"] for c in checks)
    assert lines[-1] == {"checked": len(checks), "failed": 0}


def test_verify_exits_nonzero_on_wrong_weights(parity_dir, capsys, tmp_path):
    sd = load_file(parity_dir / "tiny_state_dict.safetensors")
    key = "model.model.transformer.layers.0.self_attn.to_out.weight"
    sd[key] = sd[key] * 1.01
    bad = tmp_path / "bad.safetensors"
    save_file(sd, bad)
    rc, lines = _verify(parity_dir, capsys, weights=bad)
    assert rc == 1
    failed = {line["tensor"] for line in lines if "tensor" in line and not line["ok"]}
    assert "dit.out.v" in failed and "samp.out.latent" in failed
    assert "mel.out.tokens" not in failed  # other components unaffected


def test_inspect_full_matches_released_layout(parity_dir, capsys):
    assert main(["inspect", "--preset", "full"]) == 0
    ours = capsys.readouterr().out.splitlines()
    ref = (parity_dir / "full_param_shapes.tsv").read_text().splitlines()
    assert sorted(ours) == sorted(ref)


def test_convert_checkpoint_from_ckpt_round_trips(parity_dir, tmp_path, capsys):
    sd = load_file(parity_dir / "tiny_state_dict.safetensors")
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, src)
    assert main(["convert-checkpoint", str(src), str(tmp_path / "parts")]) == 0
    paths = json.loads(capsys.readouterr().out)
    enc, samp = load_file(paths["encoder"]), load_file(paths["sampler"])
    assert len(enc) == 88 and len(enc) + len(samp) == len(sd)
    assert all(torch.equal(sd[k], v) for k, v in {**enc, **samp}.items())
    # the converted folder is a valid --weights for verify
    cfg_dir = tmp_path / "cfg"
    shutil.copytree(parity_dir / "tiny_qwen", cfg_dir / "tiny_qwen")
    shutil.copy(parity_dir / "tiny_config.json", cfg_dir / "tiny_config.json")
    rc = main(
        [
            "verify",
            "--config", str(cfg_dir / "tiny_config.json"),
            "--weights", str(tmp_path / "parts"),
            "--vectors", str(parity_dir / "tiny_vectors.safetensors"),
        ]
    )  # fmt: skip
    assert rc == 0


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["inspect", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is neither a model preset (full, " in err and "Traceback" not in err


def test_verify_missing_vectors_file(parity_dir, capsys, tmp_path):
    rc, _ = _verify(parity_dir, capsys, vectors=tmp_path / "missing.safetensors")
    assert rc == 2
