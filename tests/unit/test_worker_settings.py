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


def test_small_is_the_default_preset_and_tiny_has_no_packaged_weights(packaged):
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(b"x")
    assert WorkerSettings().preset == "small" and WorkerSettings().resolved_weights == str(packaged)
    s = WorkerSettings(preset="tiny")
    assert s.resolved_weights is None and s.uses_random_weights
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


class _Handle:
    """Stands in for a Serve deployment handle: records the timeout each call waits with."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def __getattr__(self, method: str):
        handle = self

        class _Method:
            def remote(self, arg):
                class _Response:
                    def result(self, timeout_s):
                        handle.timeouts.append(timeout_s)
                        return arg

                return _Response()

        return _Method()


def test_pool_calls_wait_at_most_one_job_budget_which_drain_outlasts():
    from workers.app import ServePools

    settings = WorkerSettings()
    encoder, sampler = _Handle(), _Handle()
    pools = ServePools(encoder, sampler)
    pools.encode("p"), pools.understand("q"), pools.generate("r")
    assert encoder.timeouts == [settings.max_job_s] * 2
    assert sampler.timeouts == [settings.max_job_s]
    assert settings.max_job_s < settings.sampler.graceful_shutdown_timeout_s
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        ServePools(encoder, sampler, timeout_s=0)
