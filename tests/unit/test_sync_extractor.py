"""The Synchformer visual extractor: parity vectors (verify-sync), the released layout (inspect --sync),
strict loading of the released file, conversion into a parts folder, the config section, frame checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.build import build_sync_extractor
from model.checkpoint import CheckpointMismatchError
from model.config import RELEASED_CONFIG, SYNC_ID, AudioOmniConfig, SyncExtractorConfig, get_preset
from model.sync import SYNC_SIZE, SyncExtractor, sync_frame_count, sync_token_count
from model.sync.loading import load_extractor_weights, read_sync_weights
from orchestrator.cli import main


@pytest.fixture(scope="module")
def sync_dir(parity_dir: Path) -> Path:
    path = parity_dir / "sync"
    if not (path / "sync_vectors.safetensors").is_file():
        pytest.skip(f"Synchformer parity vectors not found at {path}")
    return path


@pytest.fixture(scope="module")
def case(sync_dir: Path) -> dict:
    return json.loads((sync_dir / "sync_case.json").read_text())


@pytest.fixture(scope="module")
def released_like(sync_dir: Path, tmp_path_factory) -> Path:
    """A torch pickle laid out like the released synchformer_state_dict.pth: the visual branch plus an
    audio branch and a sync head, which must be ignored."""
    sd = load_file(sync_dir / "sync_state_dict.safetensors")
    sd["afeat_extractor.patch_embed.proj.weight"] = torch.zeros(4, 1, 16, 16)
    sd["transformer.layers.0.weight"] = torch.zeros(3, 3)
    path = tmp_path_factory.mktemp("synchformer") / "synchformer_state_dict.pth"
    torch.save(sd, path)
    return path


def _verify_sync(capsys, weights: Path, vectors: Path) -> tuple[int, list[dict], str]:
    rc = main(["verify-sync", "--weights", str(weights), "--vectors", str(vectors)])
    captured = capsys.readouterr()
    return rc, [json.loads(line) for line in captured.out.splitlines() if line.strip()], captured.err


# --------------------------------------------------------------------------- parity and layout


def test_verify_sync_recomputes_every_reference_tensor(sync_dir, capsys):
    rc, lines, _ = _verify_sync(capsys, sync_dir / "sync_state_dict.safetensors", sync_dir / "sync_vectors.safetensors")
    checks = [line for line in lines if "tensor" in line]
    for check in checks:
        print(f"{check['tensor']}: max abs err {check['max_abs_err']:.3g}")
    assert rc == 0, [c for c in checks if not c["ok"]]
    outputs = {n for n in load_file(sync_dir / "sync_vectors.safetensors") if not n.startswith("in.")}
    assert {c["tensor"] for c in checks} == outputs  # out.features and every dbg.* tensor
    assert all(c["max_abs_err"] <= c["tolerance"] == 1e-4 for c in checks)
    assert lines[-1]["checked"] == len(checks) and lines[-1]["failed"] == 0


def test_verify_sync_fails_on_wrong_weights_and_reads_the_released_pickle(sync_dir, released_like, tmp_path, capsys):
    rc, lines, _ = _verify_sync(capsys, released_like, sync_dir / "sync_vectors.safetensors")
    assert rc == 0 and lines[-1]["failed"] == 0  # extra non-vfeat keys are ignored
    sd = load_file(sync_dir / "sync_state_dict.safetensors")
    key = "vfeat_extractor.blocks.1.mlp.fc2.weight"
    sd[key] = sd[key] * 1.05
    bad = tmp_path / "bad.safetensors"
    save_file(sd, bad)
    rc, lines, _ = _verify_sync(capsys, bad, sync_dir / "sync_vectors.safetensors")
    failed = {line["tensor"] for line in lines if "tensor" in line and not line["ok"]}
    assert rc == 1
    assert {"dbg.block1", "dbg.spatial_agg", "out.features"} <= failed
    assert "dbg.block0" not in failed and "dbg.patch_embed_3d" not in failed


def test_verify_sync_names_a_missing_key_and_refuses_unreadable_input(sync_dir, tmp_path, capsys):
    sd = load_file(sync_dir / "sync_state_dict.safetensors")
    del sd["vfeat_extractor.temp_embed"]
    partial = tmp_path / "partial.safetensors"
    save_file(sd, partial)
    rc, _, err = _verify_sync(capsys, partial, sync_dir / "sync_vectors.safetensors")
    assert rc == 2 and "vfeat_extractor.temp_embed" in err and "missing" in err and "Traceback" not in err
    rc, _, err = _verify_sync(capsys, sync_dir / "sync_state_dict.safetensors", tmp_path / "none.safetensors")
    assert rc == 2 and "vectors file not found" in err
    nothing = tmp_path / "other.safetensors"
    save_file({"model.model.x": torch.zeros(1)}, nothing)
    rc, _, err = _verify_sync(capsys, nothing, sync_dir / "sync_vectors.safetensors")
    assert rc == 2 and "no Synchformer visual weights" in err


def test_inspect_sync_full_is_the_released_layout(sync_dir, capsys):
    assert main(["inspect", "--sync", "--preset", "full"]) == 0
    ours = capsys.readouterr().out.splitlines()
    assert ours == (sync_dir / "full_sync_param_shapes.tsv").read_text().splitlines()
    assert len(ours) == 238
    with torch.device("meta"):
        full = SyncExtractor(get_preset("full").sync_extractor)
    assert sum(p.numel() for p in full.parameters()) == 122_440_704  # the README's 122.4 M


# --------------------------------------------------------------------------- loading and conversion


def test_strict_loading_names_missing_and_unexpected_vfeat_keys(sync_dir, case):
    from model.sync.verify import config_from_case

    sd = load_file(sync_dir / "sync_state_dict.safetensors")
    extractor = SyncExtractor(config_from_case(case))
    extra = {**sd, "afeat_extractor.anything": torch.zeros(2), "transformer.head.weight": torch.zeros(2)}
    load_extractor_weights(extractor, extra)  # only vfeat_extractor.* is read
    assert all(p.dtype == torch.float32 for p in extractor.parameters())
    assert torch.equal(extractor.vfeat_extractor.temp_embed, sd["vfeat_extractor.temp_embed"].float())

    missing = {k: v for k, v in sd.items() if k != "vfeat_extractor.norm.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing from the checkpoint: vfeat_extractor\.norm\.bias"):
        load_extractor_weights(extractor, missing)
    unexpected = {**sd, "vfeat_extractor.head.weight": torch.zeros(2)}
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected in the checkpoint: vfeat_extractor\.head\.weight"):
        load_extractor_weights(extractor, unexpected)
    with pytest.raises(CheckpointMismatchError, match=r"vfeat_extractor\.pos_embed: checkpoint"):
        load_extractor_weights(SyncExtractor(config_from_case({**case, "image_size": 32})), sd)


def test_convert_checkpoint_writes_the_sync_part_and_the_pool_loads_it(
    sync_dir, parity_dir, released_like, case, tmp_path, capsys
):
    from model.sync.verify import config_from_case

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(parity_dir / "tiny_state_dict.safetensors")}, ckpt)
    parts = tmp_path / "parts"
    assert main(["convert-checkpoint", str(ckpt), str(parts), "--synchformer", str(released_like)]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert set(paths) == {"encoder", "sampler", "sync"} and paths["sync"].endswith("sync.safetensors")
    written = load_file(paths["sync"])
    source = load_file(sync_dir / "sync_state_dict.safetensors")
    assert written.keys() == source.keys()  # the visual branch only, released names
    assert all(torch.equal(written[k], v) for k, v in source.items())
    from_folder = read_sync_weights(parts)
    assert from_folder.keys() == source.keys()
    extractor = SyncExtractor(config_from_case(case))
    load_extractor_weights(extractor, from_folder)
    assert torch.equal(extractor.vfeat_extractor.cls_token, source["vfeat_extractor.cls_token"].float())
    # The pools build from the same folder: its sync part is read (here: the vectors' 32-wide layout,
    # which the full preset's 768-wide extractor refuses by name).
    with pytest.raises(
        CheckpointMismatchError, match=r"blocks\.0\.attn\.proj\.bias: checkpoint \[32\] vs module \[768\]"
    ):
        build_sync_extractor(get_preset("full"), weights=parts)
    # The released layout with weights that hold no extractor: none (video jobs fail clearly), not random.
    assert build_sync_extractor(get_preset("full"), weights=ckpt) is None
    # A test preset's extractor has no trained weights: random, the same for the same seed.
    a, b = build_sync_extractor(get_preset("tiny"), weights=ckpt), build_sync_extractor(get_preset("tiny"))
    assert a is not None and b is not None
    assert torch.equal(a.vfeat_extractor.pos_embed, b.vfeat_extractor.pos_embed)

    capsys.readouterr()
    not_sync = tmp_path / "not_sync.pth"
    torch.save({"afeat_extractor.x": torch.zeros(1)}, not_sync)
    assert main(["convert-checkpoint", str(ckpt), str(tmp_path / "p2"), "--synchformer", str(not_sync)]) == 2
    assert "holds no 'vfeat_extractor.*' tensors" in capsys.readouterr().err
    assert not (tmp_path / "p2" / "sampler.safetensors").exists()  # refused before converting the model


# --------------------------------------------------------------------------- config


def test_config_section_round_trips_and_is_checked():
    tiny, full = get_preset("tiny"), get_preset("full")
    assert full.sync_extractor == SyncExtractorConfig()  # the released layout, not written to the JSON
    assert "extractor" not in full.to_dict()["model"]["conditioning"]["configs"][1]["config"]
    section = tiny.to_dict()["model"]["conditioning"]["configs"][1]
    assert section["id"] == SYNC_ID and section["config"]["extractor"]["embed_dim"] == tiny.cond_dim
    assert AudioOmniConfig.from_dict(tiny.to_dict()) == tiny
    # Both test presets give their sync conditioner exactly what it takes for a 10 s window.
    for name in ("tiny", "small", "full"):
        cfg = get_preset(name)
        assert sync_token_count(sync_frame_count(10.0), cfg) == cfg.sync.seq_in == 240
        assert cfg.sync_extractor.embed_dim == cfg.cond_dim == 768

    d = copy.deepcopy(RELEASED_CONFIG)
    sync_cfg = d["model"]["conditioning"]["configs"][1]["config"]
    sync_cfg["extractor"] = {"depth": 2}  # absent fields keep the released values
    assert AudioOmniConfig.from_dict(d).sync_extractor == SyncExtractorConfig(depth=2)
    sync_cfg["extractor"] = {"depht": 2}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['depht'\] in .*sync_feature.*extractor"):
        AudioOmniConfig.from_dict(d)
    sync_cfg["extractor"] = {"embed_dim": 512, "num_heads": 8}
    with pytest.raises(ValueError, match="must equal cond_dim = 768"):
        AudioOmniConfig.from_dict(d)
    sync_cfg["extractor"] = {"patch_size_temp": 4}  # 4 tokens per segment: 120 for 10 s, not 240
    cfg = AudioOmniConfig.from_dict(d)
    with pytest.raises(ValueError, match=r"gives 120 tokens for a 10 s window but .* sync_seq_dim is 240"):
        cfg.require_job_support()
    for bad, message in (
        ({"mlp_ratio": 0.3333}, "must be a whole number"),
        ({"image_size": 100}, "multiple of patch_size"),
        ({"num_heads": 5}, "divisible by num_heads"),
        ({"layernorm_eps": 0}, "positive number"),
        ({"segment_frames": 15}, "multiple of patch_size_temp"),
    ):
        with pytest.raises(ValueError, match=message):
            SyncExtractorConfig(**bad)


def test_frame_and_token_counts():
    cfg = SyncExtractorConfig()
    assert sync_frame_count(10.0) == 250 and sync_frame_count(3.0) == 75
    assert sync_token_count(250, cfg) == 240 and sync_token_count(16, cfg) == 8 and sync_token_count(23, cfg) == 8
    assert sync_token_count(24, cfg) == 16 and sync_token_count(32, cfg) == 24
    with pytest.raises(ValueError, match="at least 16 frames"):
        sync_token_count(15, cfg)
    with pytest.raises(ValueError, match="duration_s must be > 0"):
        sync_frame_count(0)


# --------------------------------------------------------------------------- the tiny extractor on frames


@pytest.fixture(scope="module")
def tiny_extractor() -> SyncExtractor:
    extractor = build_sync_extractor(get_preset("tiny"))
    assert extractor is not None
    return extractor


def _frames(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SYNC_SIZE, SYNC_SIZE), dtype=torch.uint8, generator=g)


def test_ten_seconds_give_the_sync_conditioners_input(tiny_extractor):
    config = get_preset("tiny")
    features = tiny_extractor(_frames(sync_frame_count(10.0), 0)[None])
    assert features.shape == (1, config.sync.seq_in, config.cond_dim) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and float(features.std()) > 0
    from model.conditioners.sync import SyncConditioner

    conditioner = SyncConditioner(seq_in=config.sync.seq_in, seq_out=config.sync.seq_out, dim=config.cond_dim)
    tokens, _ = conditioner(features)  # accepted unchanged by the preset's sync conditioner
    assert tokens.shape == (1, config.sync.seq_out, config.cond_dim)


def test_clips_of_different_lengths_batch_together(tiny_extractor):
    clips = [_frames(16, 1), _frames(40, 2), _frames(24, 3)]
    together = tiny_extractor.clip_features(clips, max_segments_per_pass=3)
    assert [f.shape[0] for f in together] == [8, 32, 16]
    for clip, feats in zip(clips, together, strict=True):
        alone = tiny_extractor.clip_features([clip])[0]
        torch.testing.assert_close(feats, alone, atol=1e-5, rtol=1e-5)
    # A segment's features depend on its own frames only: the second segment of a clip is the first
    # segment of the same clip shifted by the stride.
    clip = _frames(24, 4)
    torch.testing.assert_close(
        tiny_extractor.clip_features([clip])[0][8:], tiny_extractor.clip_features([clip[8:]])[0], atol=1e-5, rtol=1e-5
    )


def test_bad_frames_are_refused_clearly(tiny_extractor):
    with pytest.raises(ValueError, match="must be uint8"):
        tiny_extractor.clip_features([_frames(16, 0).float()])
    with pytest.raises(ValueError, match=r"must be \(T, 3, 224, 224\) RGB frames, got \(16, 3, 112, 112\)"):
        tiny_extractor.clip_features([torch.zeros(16, 3, 112, 112, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="needs at least 16 frames"):
        tiny_extractor.clip_features([_frames(10, 0)])
    with pytest.raises(ValueError, match=r"frames must be \(B, T, 3, 224, 224\)"):
        tiny_extractor(_frames(16, 0))
    with pytest.raises(ValueError, match="max_segments_per_pass must be >= 1"):
        tiny_extractor.clip_features([_frames(16, 0)], max_segments_per_pass=0)
    assert tiny_extractor.clip_features([]) == []
