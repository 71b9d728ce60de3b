"""`training.evaluate`'s held-out classifier and its codec ceiling (`classifier_accuracy_on_codec`)."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import SR, EvalSettings, held_out_data, logmel_stats, mel_matrix
from training.recipes.small import CLASSES


@pytest.fixture(scope="module")
def mel() -> np.ndarray:
    return mel_matrix(11025.0)


def test_an_identity_round_trip_scores_what_the_real_samples_score(mel):
    data = held_out_data(EvalSettings(pairs=1, per_class=2, threads=1), mel, lambda x: x)
    assert data.real_accuracy == data.codec_accuracy == 1.0
    assert set(data.classifier.classes) == set(CLASSES)
    assert len(data.params) == 1


def test_a_round_trip_that_loses_the_class_scores_chance(mel):
    t = np.arange(SR, dtype=np.float32) / SR
    same = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = held_out_data(EvalSettings(pairs=1, per_class=2, threads=1), mel, lambda x: same)
    # Every clip comes back as the same tone: one class for all of them, right for one class in five.
    assert data.codec_accuracy == pytest.approx(1 / len(CLASSES))
    assert data.real_accuracy == 1.0
    assert logmel_stats(same, mel).shape == (81,)
