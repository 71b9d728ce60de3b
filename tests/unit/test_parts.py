"""The sampler part end to end on the tiny preset: batching must not change a job's result."""

from __future__ import annotations

import pytest
import torch

from model.build import build_sampler
from model.config import get_preset
from model.requests import GenerationRequest


@pytest.fixture(scope="module")
def sampler():
    return build_sampler(get_preset("tiny"))


def _requests(n: int) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(0)
    cfg = get_preset("tiny")
    out = []
    for i in range(n):
        feats = torch.randn(8 + 5 * i, cfg.mllm.hidden_size, generator=g).bfloat16()
        audio = torch.randn(cfg.mel.window_samples, generator=g) * 0.1 if i == 2 else None
        sync = torch.randn(240, 768, generator=g) if i == 3 else None
        out.append(
            GenerationRequest(
                mllm_features=feats,
                seed=100 + i,
                steps=3,
                cfg_scale=[7.0, 1.0, 3.5, 6.0][i % 4],
                transcript="hello world" if i % 2 else None,
                audio_window=audio,
                sync_features=sync,
            )
        )
    return out


def test_fixed_shape_batches_are_bit_identical_alone_or_batched(sampler):
    reqs = _requests(4)
    batched = sampler.generate(reqs, pad_to=4)
    reversed_batch = sampler.generate(reqs[::-1], pad_to=4)
    for i, r in enumerate(reqs):
        alone = sampler.generate([r], pad_to=4)[0]
        assert torch.equal(alone, batched[i]), f"item {i} differs alone vs batched"
        assert torch.equal(alone, reversed_batch[3 - i]), f"item {i} depends on its position"


def test_unpadded_batches_agree_to_rounding(sampler):
    reqs = _requests(4)
    batched = sampler.generate(reqs)
    for i, r in enumerate(reqs):
        alone = sampler.generate([r])[0]
        torch.testing.assert_close(alone, batched[i], atol=1e-5, rtol=0)


def test_output_shape_is_one_window(sampler):
    cfg = sampler.config
    out = sampler.generate(_requests(1))
    assert out.shape == (1, 2, cfg.output_samples)
    assert cfg.output_samples / cfg.sample_rate >= 10.0
    assert torch.isfinite(out).all()


def test_bad_requests_raise_value_error(sampler):
    good = _requests(2)
    with pytest.raises(ValueError, match="share `steps`"):
        sampler.generate([good[0], GenerationRequest(**{**good[1].__dict__, "steps": 5})])
    with pytest.raises(ValueError, match="mllm_features"):
        sampler.generate([GenerationRequest(mllm_features=torch.zeros(4, 3), seed=0)])
    with pytest.raises(ValueError, match="audio_window"):
        sampler.generate(
            [GenerationRequest(mllm_features=good[0].mllm_features, seed=0, audio_window=torch.zeros(100))]
        )
    with pytest.raises(ValueError, match="pad_to"):
        sampler.generate(good, pad_to=1)
    for scale in (0.5, 31.0):
        with pytest.raises(ValueError, match=r"cfg_scale must be in \[1, 30\]"):
            sampler.generate([GenerationRequest(**{**good[0].__dict__, "cfg_scale": scale})])


def test_the_model_and_the_job_schema_share_one_set_of_limits():
    import model.pipeline
    from model import limits
    from orchestrator import jobs

    for name in ("MAX_DURATION_S", "MAX_STEPS", "MIN_STEPS", "MIN_CFG_SCALE", "MAX_CFG_SCALE", "MAX_SEED"):
        assert getattr(jobs, name) is getattr(limits, name), name
    assert model.pipeline.MAX_SEED == jobs.MAX_SEED == 2**32 - 1  # the reference's uint32 seeds
