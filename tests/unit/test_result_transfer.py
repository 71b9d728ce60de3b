"""What a pool call sends back: each caller's own result, cut to what its job uses.

A row of a batch's output is a view of the whole batch's storage, and torch serialises a view with
all of it; the sampler also renders a whole window (about 10 s) for every segment. Both used to
come back to the engine (and across nodes, through the object stores): 7 MB for a 1 s clip in a
batch of two. These tests pin the cut (`workers.batching.own_result`, `ServePools.generate`'s
`keep_samples`) and that the engine's result is the same with it (`segment_keep_samples`).
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from model.pipeline import plan_task
from orchestrator.engine import EngineSettings, segment_keep_samples
from orchestrator.jobs import JobSpec
from orchestrator.model_inputs import load_inputs
from workers.app import InProcessPools, ServePools
from workers.batching import own_result
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)


def _pickled_bytes(t: torch.Tensor) -> int:
    return len(pickle.dumps(t, protocol=5))


def _plan(task: str, duration_s: float):
    config = SETTINGS.load_config()
    spec = JobSpec.model_validate({"task": task, "prompt": "a bell", "duration_s": duration_s, "steps": 2})
    loaded = load_inputs(spec, seed=1, tenant="t", inputs=None, config=config, limits=EngineSettings().input_limits)  # type: ignore[arg-type]
    return config, plan_task(config, loaded.inputs)


# --------------------------------------------------------------------------- own_result


def test_a_row_of_a_batch_comes_back_without_its_batch_mates():
    batch = torch.randn(4, 2, 10_000)
    row = batch[1]
    assert _pickled_bytes(row) > 4 * row.numel() * 4  # the view drags the whole batch along
    own = own_result(row)
    assert torch.equal(own, row)
    assert own.untyped_storage().nbytes() == row.numel() * 4
    assert _pickled_bytes(own) < row.numel() * 4 + 2_000


def test_keep_samples_cuts_the_last_axis_and_owns_only_those_bytes():
    batch = torch.randn(3, 2, 10_000)
    own = own_result(batch[2], 1234)
    assert own.shape == (2, 1234) and own.is_contiguous()
    assert torch.equal(own, batch[2][..., :1234])
    assert own.untyped_storage().nbytes() == 2 * 1234 * 4
    assert torch.equal(own_result(batch[0], 50_000), batch[0])  # more than there is: all of it
    with pytest.raises(ValueError, match="keep_samples must be >= 1"):
        own_result(batch[0], 0)


def test_own_result_does_not_share_memory_with_the_batch():
    batch = torch.zeros(2, 2, 100)
    own = own_result(batch[0], 10)
    batch.fill_(1.0)
    assert own.abs().sum().item() == 0.0


# --------------------------------------------------------------------------- what the engine keeps


def _joined_both_ways(plan, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`finish` of random whole segments, and of the same segments cut as the engine asks."""
    gen = plan.generation
    g = torch.Generator().manual_seed(seed)
    whole = [torch.rand(2, gen.output_samples, generator=g) * 2 - 1 for _ in range(gen.num_segments)]
    cut = []
    for k, seg in enumerate(whole):
        keep = segment_keep_samples(gen, k)
        cut.append(seg if keep is None else own_result(seg, keep))
    return gen.finish(whole), gen.finish(cut)


@pytest.mark.parametrize(
    ("task", "duration_s", "segments"),
    [("text_to_audio", 1.0, 1), ("text_to_music", 2.0, 1), ("text_to_music", 25.0, 3), ("text_to_audio", 10.5, 2)],
)
def test_the_result_is_identical_with_the_unused_samples_never_sent(task, duration_s, segments):
    config, plan = _plan(task, duration_s)
    gen = plan.generation
    assert gen.num_segments == segments
    assert gen.output_samples == config.output_samples
    keep = segment_keep_samples(gen, gen.num_segments - 1)
    assert keep is not None and keep <= gen.output_samples
    if segments > 1:  # the last segment is crossfaded into the one before: keeps more than the fade
        assert keep > gen.fade_samples
    else:
        assert keep == round(duration_s * config.sample_rate)  # a 1 s job: a tenth of the window
    assert all(segment_keep_samples(gen, k) is None for k in range(gen.num_segments - 1))
    whole, cut = _joined_both_ways(plan)
    assert torch.equal(whole, cut)


def test_a_dropped_voice_prompt_head_is_counted_in_what_is_kept():
    _, plan = _plan("text_to_audio", 2.0)
    gen = dataclasses.replace(plan.generation, drop_head_samples=5_000)
    assert segment_keep_samples(gen, 0) == gen.total_samples + 5_000
    whole, cut = _joined_both_ways(dataclasses.replace(plan, generation=gen))
    assert torch.equal(whole, cut) and whole.shape[-1] == gen.total_samples


def test_segment_index_is_checked():
    _, plan = _plan("text_to_audio", 1.0)
    with pytest.raises(ValueError, match="segment index"):
        segment_keep_samples(plan.generation, 1)


# --------------------------------------------------------------------------- the pools


def test_in_process_pool_returns_the_same_audio_cut_to_what_is_kept():
    config, plan = _plan("text_to_audio", 1.0)
    pools = InProcessPools.build(SETTINGS)
    request = plan.generation.request(0, pools.encode(plan.encode), None)
    whole = pools.generate(request)
    cut = pools.generate(request, keep_samples=config.sample_rate)
    assert whole.shape[-1] == config.output_samples
    assert torch.equal(cut, whole[..., : config.sample_rate])
    assert _pickled_bytes(cut) < _pickled_bytes(whole) / 5


def test_serve_pools_pass_keep_samples_to_the_sampler_replica():
    sent: list[tuple] = []

    class Method:
        def remote(self, *args):
            sent.append(args)

            class Response:
                def result(self, timeout_s):
                    return "audio"

            return Response()

    class Handle:
        generate = Method()

    pools = ServePools(Handle(), Handle())  # type: ignore[arg-type]
    assert pools.generate("r", keep_samples=44_100) == "audio"  # type: ignore[arg-type]
    pools.generate("r")  # type: ignore[arg-type]
    # Always two arguments: Serve's batching needs every call of one batch to pass the same number.
    assert sent == [("r", 44_100), ("r", None)]
