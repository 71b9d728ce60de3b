"""`training.evaluate`'s held-out classifiers (the issue's and the audible-range one) and their codec ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import AUDIBLE_RANGE_DB, CLASSIFIERS, SR, EvalSettings, held_out_data, logmel_stats, mel_matrix
from training.recipes.small import CLASSES


@pytest.fixture(scope="module")
def mel() -> np.ndarray:
    return mel_matrix(11025.0)


def test_an_identity_round_trip_scores_what_the_real_samples_score(mel):
    data = held_out_data(EvalSettings(pairs=1, per_class=2, threads=1), mel, lambda x: x)
    assert set(data.classifiers) == set(CLASSIFIERS)
    for suffix in CLASSIFIERS:
        assert data.real_accuracy[suffix] == data.codec_accuracy[suffix] == 1.0
        assert set(data.classifiers[suffix].classes) == set(CLASSES)
    assert len(data.params) == 1


def test_a_round_trip_that_loses_the_class_scores_chance(mel):
    t = np.arange(SR, dtype=np.float32) / SR
    same = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = held_out_data(EvalSettings(pairs=1, per_class=2, threads=1), mel, lambda x: same)
    # Every clip comes back as the same tone: one class for all of them, right for one class in five.
    for suffix in CLASSIFIERS:
        assert data.codec_accuracy[suffix] == pytest.approx(1 / len(CLASSES))
        assert data.real_accuracy[suffix] == 1.0
    assert logmel_stats(same, mel).shape == (81,)


def _tone_with_flicker(level_db: float) -> tuple[np.ndarray, np.ndarray]:
    """A steady 440 Hz tone, alone and with white noise `level_db` below it in every other 0.1 s."""
    rng = np.random.default_rng(0)
    t = np.arange(SR, dtype=np.float32) / SR
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    gate = (np.arange(SR) // (SR // 10)) % 2
    noise = rng.standard_normal(SR).astype(np.float32) * gate * 0.3 * 10 ** (level_db / 20)
    return tone, (tone + noise).astype(np.float32)


def test_the_audible_features_ignore_flicker_far_below_the_sound(mel):
    tone, flickering = _tone_with_flicker(-60.0)
    # Every band-frame counts in the issue's features: the flicker, 60 dB down, moves the high bands' std.
    full = np.abs(logmel_stats(flickering, mel) - logmel_stats(tone, mel))
    assert full[40:80].max() > 5.0
    # The audible features raise everything more than AUDIBLE_RANGE_DB below the loudest to that floor.
    audible = np.abs(logmel_stats(flickering, mel, AUDIBLE_RANGE_DB) - logmel_stats(tone, mel, AUDIBLE_RANGE_DB))
    assert audible.max() < 0.5


def test_the_audible_features_still_see_what_is_within_range(mel):
    tone, flickering = _tone_with_flicker(-20.0)
    audible = np.abs(logmel_stats(flickering, mel, AUDIBLE_RANGE_DB) - logmel_stats(tone, mel, AUDIBLE_RANGE_DB))
    assert audible[40:80].max() > 10.0  # noise 20 dB down, on and off: the high bands' std sees it
