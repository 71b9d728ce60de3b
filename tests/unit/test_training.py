"""Rectified-flow training pieces on the tiny preset (CPU)."""

from __future__ import annotations

import io

import pytest
import torch

from model.build import build_sampler
from model.config import get_preset
from training.flow import (
    EMA,
    FlowObjective,
    FlowTrainer,
    TrainExample,
    TrainHyper,
    condition_batch,
    draw_step,
    drop_context,
    interpolate,
    velocity_target,
)


@pytest.fixture(scope="module")
def config():
    return get_preset("tiny")


def _batch(config, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, config.dit.io_channels, config.latent_length, generator=g) * 0.5
    window = config.mel.window_samples
    examples = [
        TrainExample(
            mllm_features=torch.randn(5 + i, config.mllm.hidden_size, generator=g),
            audio_window=None if i % 2 else torch.randn(window, generator=g) * 0.1,
        )
        for i in range(n)
    ]
    return latents, examples


def _trainer(config, **hyper):
    torch.manual_seed(0)
    part = build_sampler(config, seed=0)
    part.dit.init_weights()
    return FlowTrainer(part, TrainHyper(**{"lr": 2e-3, "warmup_steps": 0, **hyper}))


def test_interpolation_follows_spec_convention():
    x = torch.randn(3, 2, 5)
    eps = torch.randn(3, 2, 5)
    t = torch.tensor([0.0, 1.0, 0.25])
    xt = interpolate(x, eps, t)
    torch.testing.assert_close(xt[0], x[0])  # t = 0 is data
    torch.testing.assert_close(xt[1], eps[1])  # t = 1 is noise
    torch.testing.assert_close(xt[2], 0.75 * x[2] + 0.25 * eps[2])
    # an Euler step from t with the exact velocity lands on the data at t = 0
    torch.testing.assert_close(xt[2] - 0.25 * velocity_target(x, eps)[2], x[2])


def test_drop_context_zeroes_whole_items():
    cross = torch.randn(3, 4, 6)
    out = drop_context(cross, torch.tensor([False, True, False]))
    assert torch.equal(out[1], torch.zeros(4, 6))
    assert torch.equal(out[0], cross[0]) and torch.equal(out[2], cross[2])
    with pytest.raises(ValueError, match="drop must be"):
        drop_context(cross, torch.tensor([1, 0, 1]))


def test_draw_step_is_reproducible_and_validated():
    a = draw_step(torch.Generator().manual_seed(3), 4, (2, 7), 0.5)
    b = draw_step(torch.Generator().manual_seed(3), 4, (2, 7), 0.5)
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise) and torch.equal(a.drop, b.drop)
    assert bool(((a.t >= 0) & (a.t < 1)).all())
    with pytest.raises(ValueError, match="cond_dropout"):
        draw_step(torch.Generator(), 4, (2, 7), 1.0)


def test_ema_tracks_parameters():
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.5)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], before + 0.5)
    with pytest.raises(ValueError, match="decay"):
        EMA(m, decay=1.0)


def test_hyper_validation():
    with pytest.raises(ValueError, match="cond_dropout"):
        TrainHyper(cond_dropout=-0.1)
    with pytest.raises(ValueError, match="lr"):
        TrainHyper(lr=0.0)


def test_twenty_steps_reduce_the_loss(config):
    torch.set_num_threads(1)
    trainer = _trainer(config, cond_dropout=0.0)
    latents, examples = _batch(config)
    losses = [trainer.step(latents, examples)["loss"] for _ in range(20)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
    # the VAE stays frozen, the DiT moved
    assert not any(p.requires_grad for p in trainer.part.vae.parameters())


def test_resume_takes_the_same_next_steps(config):
    torch.set_num_threads(1)
    latents, examples = _batch(config, seed=1)
    straight = _trainer(config, cond_dropout=0.3)
    expected = [straight.step(latents, examples)["loss"] for _ in range(4)]

    first = _trainer(config, cond_dropout=0.3)
    got = [first.step(latents, examples)["loss"] for _ in range(2)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = _trainer(config, cond_dropout=0.3)  # a fresh process would build the same way
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert resumed.step_index == 2
    got += [resumed.step(latents, examples)["loss"] for _ in range(2)]
    assert got == expected
    for (name, a), b in zip(straight.part.named_parameters(), resumed.part.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in straight.ema.shadow)


def test_a_cached_source_log_mel_conditions_exactly_like_its_waveform(config):
    part = build_sampler(config, seed=0)
    _, examples = _batch(config)
    cached = [
        TrainExample(
            mllm_features=e.mllm_features,
            source_mel=None if e.audio_window is None else part.mel.log_mel(e.audio_window[None])[0],
        )
        for e in examples
    ]
    with torch.no_grad():
        want, got = condition_batch(part, examples), condition_batch(part, cached)
    for name in ("cross", "cross_mask", "prefix"):
        assert torch.equal(getattr(want, name), getattr(got, name)), name


def test_bad_source_windows_are_refused(config):
    part = build_sampler(config, seed=0)
    feats = torch.zeros(3, config.mllm.hidden_size)
    with pytest.raises(ValueError, match="audio_window must be"):
        condition_batch(part, [TrainExample(mllm_features=feats, audio_window=torch.zeros(10))])
    nan = torch.full((config.mel.window_samples,), float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        condition_batch(part, [TrainExample(mllm_features=feats, audio_window=nan)])
    with pytest.raises(ValueError, match="log-mel must be"):
        condition_batch(part, [TrainExample(mllm_features=feats, source_mel=torch.zeros(3, 4))])


def test_lr_scale_multiplies_the_step_learning_rate(config):
    trainer = _trainer(config, lr=1e-3)
    latents, examples = _batch(config, n=2)
    assert trainer.step(latents, examples, lr_scale=0.25)["lr"] == pytest.approx(2.5e-4)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert trainer.step(latents, examples)["lr"] == pytest.approx(1e-3)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="lr_scale"):
            trainer.step(latents, examples, lr_scale=bad)


def test_frame_weights_weight_each_latent_frame_of_the_loss(config):
    """Ones (or any constant) give the plain MSE; for a split of the frames into two sets A and B,
    |A| * loss(on A) + |B| * loss(on B) = T * loss; bad weights are refused with the example named."""
    part = build_sampler(config, seed=0).eval()
    objective = FlowObjective(part)
    latents, examples = _batch(config, n=3)
    frames = latents.shape[-1]
    draws = draw_step(torch.Generator().manual_seed(3), 3, tuple(latents.shape[1:]), cond_dropout=0.0)

    def loss(weights):
        exs = [
            TrainExample(e.mllm_features, e.audio_window, frame_weights=w)
            for e, w in zip(examples, weights, strict=True)
        ]
        with torch.no_grad():
            return float(objective(latents, exs, draws, None))

    plain = loss([None] * 3)
    assert loss([torch.ones(frames)] * 3) == pytest.approx(plain, rel=1e-6)
    assert loss([torch.full((frames,), 3.0)] * 3) == pytest.approx(plain, rel=1e-6)
    a = torch.zeros(frames)
    a[: frames // 3] = 1.0
    on_a, on_b = loss([a] * 3), loss([1 - a] * 3)
    assert on_a != pytest.approx(on_b)
    n_a = float(a.sum())
    assert n_a * on_a + (frames - n_a) * on_b == pytest.approx(frames * plain, rel=1e-5)
    # one example weighted, the others default to ones
    assert loss([None, torch.ones(frames), None]) == pytest.approx(plain, rel=1e-6)

    with pytest.raises(ValueError, match=r"examples\[1\].frame_weights must be"):
        loss([None, torch.ones(frames + 1), None])
    with pytest.raises(ValueError, match=">= 0"):
        loss([-torch.ones(frames)] * 3)
    with pytest.raises(ValueError, match="all be zero"):
        loss([torch.zeros(frames)] * 3)


def test_source_latents_for_an_input_concat_dit_are_cached_encoded_or_zero():
    small = get_preset("small")
    part = build_sampler(small, seed=0)
    g = torch.Generator().manual_seed(1)
    window = torch.randn(small.mel.window_samples, generator=g) * 0.1
    feats = torch.randn(3, small.mllm.hidden_size, generator=g)
    latent = part.encode_audio(window[None])[0]  # (C, T)
    with torch.no_grad():
        from_window = condition_batch(part, [TrainExample(mllm_features=feats, audio_window=window)])
        cached = condition_batch(
            part,
            [TrainExample(mllm_features=feats, source_mel=part.mel.log_mel(window[None])[0], source_latent=latent)],
        )
        silent = condition_batch(part, [TrainExample(mllm_features=feats)])
    assert torch.equal(from_window.source[0], latent) and torch.equal(cached.source[0], latent)
    assert torch.equal(from_window.prefix, cached.prefix)
    assert silent.source.shape == (1, small.dit.io_channels, small.latent_length) and not silent.source.any()
    with pytest.raises(ValueError, match="no audio_window or source_latent"):
        condition_batch(part, [TrainExample(mllm_features=feats, source_mel=part.mel.log_mel(window[None])[0])])
    with pytest.raises(ValueError, match=r"source_latent must be \(64, 216\)"):
        condition_batch(part, [TrainExample(mllm_features=feats, source_latent=latent[:, :10])])
    # The released layout takes no input concat: a cached latent is not used.
    tiny = build_sampler(get_preset("tiny"), seed=0)
    tiny_feats = torch.randn(3, get_preset("tiny").mllm.hidden_size)
    assert condition_batch(tiny, [TrainExample(mllm_features=tiny_feats, source_latent=latent)]).source is None


def test_a_training_step_trains_the_input_concat_channels():
    small = get_preset("small")
    torch.manual_seed(0)
    part = build_sampler(small, seed=0)
    part.dit.init_weights()
    trainer = FlowTrainer(part, TrainHyper(lr=1e-3, warmup_steps=0))
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, small.dit.io_channels, small.latent_length, generator=g)
    examples = [
        TrainExample(
            mllm_features=torch.randn(3, small.mllm.hidden_size, generator=g), source_latent=latents[i].flip(-1)
        )
        for i in range(2)
    ]
    before = part.dit.transformer.project_in.weight[:, small.dit.io_channels :].clone()
    trainer.step(latents, examples)
    assert not torch.equal(part.dit.transformer.project_in.weight[:, small.dit.io_channels :], before)
