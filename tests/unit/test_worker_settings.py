"""Which weights the worker pools load: given, packaged with the preset, or none (random)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from model import config as model_config
from workers.settings import PoolSettings, WorkerSettings


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
    assert path.parent.parent == Path(model_config.__file__).resolve().parent.parent / "data"  # model/data


class _Handle:
    """Stands in for a Serve deployment handle: records the timeout each call waits with."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def __getattr__(self, method: str):
        handle = self

        class _Method:
            def remote(self, arg, *rest):
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


# --------------------------------------------------------------------------- environment


def test_from_env_reads_top_level_and_pool_variables_from_the_given_mapping_only(monkeypatch):
    monkeypatch.setenv("AUDIO_OMNI_PRESET", "full")  # ignored: a mapping was given
    env = {
        "AUDIO_OMNI_PRESET": "tiny",
        "AUDIO_OMNI_MAX_JOB_S": "120",
        "AUDIO_OMNI_BATCH_INVARIANT": "false",
        "AUDIO_OMNI_ENCODER_NUM_GPUS": "0.25",
        "AUDIO_OMNI_SAMPLER_MAX_BATCH_SIZE": "16",
        "AUDIO_OMNI_SAMPLER_MAX_ONGOING_REQUESTS": "48",
        "AUDIO_OMNI_SAMPLER_INITIAL_REPLICAS": "none",
        "UNRELATED": "x",
    }
    s = WorkerSettings.from_env(env)
    assert (s.preset, s.max_job_s, s.batch_invariant) == ("tiny", 120.0, False)
    assert s.encoder.num_gpus == 0.25 and s.encoder.max_batch_size == PoolSettings().max_batch_size
    assert (s.sampler.max_batch_size, s.sampler.max_ongoing_requests) == (16, 48)
    assert s.sampler.initial_replicas is None


def test_pool_resources_place_a_pool_on_nodes_that_offer_them():
    s = WorkerSettings.from_env({"AUDIO_OMNI_SAMPLER_RESOURCES": '{"gpu_node": 0.01}'})
    assert s.sampler.resources == {"gpu_node": 0.01} and s.encoder.resources == {}
    from workers.app import build_apps

    options = {name: app._bound_deployment.ray_actor_options for name, app in build_apps(s).items()}
    assert options["audio-omni-sampler"]["resources"] == {"gpu_node": 0.01}
    assert options["audio-omni-encoder"]["resources"] == {}
    with pytest.raises(ValueError, match=r"resources must be >= 0 each"):
        WorkerSettings.from_env({"AUDIO_OMNI_ENCODER_RESOURCES": '{"cpu_node": -1}'})


def test_from_env_defaults_to_the_process_environment_and_flags_win(monkeypatch):
    monkeypatch.setenv("AUDIO_OMNI_DEVICE", "cuda")
    monkeypatch.setenv("AUDIO_OMNI_PRESET", "tiny")
    monkeypatch.setenv("AUDIO_OMNI_SAMPLER_MAX_REPLICAS", "4")
    s = WorkerSettings.from_env(preset="full", weights=None)  # None = flag not given
    assert (s.device, s.preset, s.weights, s.sampler.max_replicas) == ("cuda", "full", None, 4)
    assert s.resolved_precision == "bf16"


def test_an_empty_value_counts_as_unset_and_none_clears_an_optional_field():
    s = WorkerSettings.from_env({"AUDIO_OMNI_PRESET": "", "AUDIO_OMNI_WEIGHTS": "none"})
    assert s.preset == WorkerSettings().preset and s.weights is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUDIO_OMNI_SAMPLER_MAX_BATCH_SIZE": "0"}, r"max_batch_size must be in \[1, 256\], got 0"),
        ({"AUDIO_OMNI_SAMPLER_MAX_BATCH_SIZE": "eight"}, r"sampler.max_batch_size\s+Input should be a valid integer"),
        (
            {"AUDIO_OMNI_ENCODER_MAX_BATCH_SIZE": "64"},
            r"max_ongoing_requests \(32\) must be >= max_batch_size \(64\)",
        ),
        (
            {"AUDIO_OMNI_MAX_JOB_S": "1000"},
            r"encoder.graceful_shutdown_timeout_s \(900.0\) must exceed max_job_s \(1000.0\)",
        ),
        (
            {"AUDIO_OMNI_ENCODER_MIN_REPLICAS": "3", "AUDIO_OMNI_ENCODER_MAX_REPLICAS": "2"},
            r"need 0 <= min_replicas <= max_replicas, got 3 and 2",
        ),
        ({"AUDIO_OMNI_PRECISION": "fp64"}, r"precision\s+Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ({"AUDIO_OMNI_SAMPLER_MAX_BATCHSIZE": "4"}, r"sampler.max_batchsize\s+Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_with_the_value_and_the_rule(env, message):
    with pytest.raises(ValueError, match=message) as info:
        WorkerSettings.from_env(env)
    assert "input_value" not in str(info.value)  # no repr of what was passed


def test_keyword_construction_checks_the_same_rules():
    rule = r"initial_replicas \(5\) must lie in \[min_replicas, max_replicas\] = \[1, 2\]"
    with pytest.raises(ValueError, match=rule):
        PoolSettings(max_replicas=2, initial_replicas=5)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        WorkerSettings(presets="tiny")


def test_settings_are_frozen_and_survive_pickling_unchanged(monkeypatch):
    s = WorkerSettings.from_env({"AUDIO_OMNI_PRESET": "tiny", "AUDIO_OMNI_SAMPLER_MAX_BATCH_SIZE": "4"})
    monkeypatch.setenv("AUDIO_OMNI_PRESET", "full")  # a replica's environment does not re-read into it
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and copy.preset == "tiny" and copy.sampler.max_batch_size == 4
    with pytest.raises(ValueError, match="frozen"):
        s.preset = "full"  # type: ignore[misc]


def test_replace_checks_the_copy_and_reads_no_environment(monkeypatch):
    s = WorkerSettings.from_env({"AUDIO_OMNI_PRESET": "tiny"})
    monkeypatch.setenv("AUDIO_OMNI_DEVICE", "cuda")
    copy = s.replace(sampler=s.sampler.replace(max_batch_size=16), backlog_prefix="p:")
    assert (copy.preset, copy.device, copy.sampler.max_batch_size, copy.backlog_prefix) == ("tiny", "cpu", 16, "p:")
    assert s.sampler.max_batch_size == PoolSettings().max_batch_size  # the original is unchanged
    with pytest.raises(ValueError, match=r"max_ongoing_requests \(32\) must be >= max_batch_size \(64\)"):
        s.sampler.replace(max_batch_size=64)
    with pytest.raises(ValueError, match=r"sampler.graceful_shutdown_timeout_s \(60.0\) must exceed max_job_s"):
        s.replace(sampler=s.sampler.replace(graceful_shutdown_timeout_s=60.0))


def test_serve_and_batch_default_to_the_same_preset():
    import argparse

    from orchestrator.commands import batch, serve
    from workers.settings import DEFAULT_PRESET

    parsed = {}
    for module in (batch, serve):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser, module.__name__.rsplit(".", 1)[1])
        args = parser.parse_args(["x.jsonl", "--out", "o"] if module is batch else [])
        parsed[module.__name__] = args
    assert parsed["orchestrator.commands.batch"].preset == DEFAULT_PRESET == WorkerSettings().preset
    assert serve._worker_settings(parsed["orchestrator.commands.serve"]).preset == DEFAULT_PRESET


def test_the_backlog_key_is_the_one_orchestrator_keys_lists():
    from orchestrator.keys import RedisKeys

    s = WorkerSettings(backlog_prefix="dep1:")
    assert s.backlog_key == RedisKeys("dep1:").autoscale_backlog == "dep1:autoscale:backlog"
