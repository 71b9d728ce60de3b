"""Which weights the worker pools load: given, packaged with the preset, or none (random)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import config as model_config
from workers.settings import WorkerSettings


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """Point the `small` preset's packaged weights at a file under tmp_path (created by the test)."""
    path = tmp_path / "small" / "model.safetensors"
    monkeypatch.setitem(model_config.PACKAGED_WEIGHTS, "small", path)
    return path


def test_tiny_is_the_default_preset_and_has_no_packaged_weights(packaged):
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(b"x")
    s = WorkerSettings()
    assert s.preset == "tiny" and s.resolved_weights is None and s.uses_random_weights
    assert s.model_version == "tiny-random"


def test_small_uses_its_packaged_weights_when_the_file_exists(packaged):
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(b"x")
    s = WorkerSettings(preset="small")
    assert s.resolved_weights == str(packaged)
    assert not s.uses_random_weights
    assert s.model_version == "model.safetensors"


def test_without_the_packaged_file_the_preset_is_random(packaged):
    s = WorkerSettings(preset="small")
    assert s.resolved_weights is None and s.uses_random_weights
    assert s.model_version == "small-random"


def test_explicit_weights_and_config_files_never_take_packaged_weights(packaged, tmp_path):
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(b"x")
    assert WorkerSettings(preset="small", weights="/w/model.ckpt").resolved_weights == "/w/model.ckpt"
    assert WorkerSettings(preset="small", config_path=str(tmp_path / "c.json")).resolved_weights is None


def test_the_packaged_path_lies_in_the_package():
    path = model_config.PACKAGED_WEIGHTS["small"]
    assert path.parent.parent == Path(model_config.__file__).resolve().parent / "data"
