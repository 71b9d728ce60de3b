"""The embedded `small` model's recipe (`training.recipes.small`) end to end at toy size: features,
codec, a few DiT steps, export. The exported file must have the committed checkpoint's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from training.recipes.small import (
    CLASSES,
    TASKS,
    SmallRun,
    phase_codec,
    phase_dit,
    phase_export,
    phase_features,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "model" / "data" / "small" / "model.safetensors"


def _layout(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def test_the_recipe_runs_phase_by_phase_into_the_committed_layout(tmp_path):
    work, dst = tmp_path / "run", tmp_path / "dst"
    features = phase_features(work)
    assert features["prompts"] == len(CLASSES) * len(TASKS)
    assert features["min_max_abs_diff"] > 0  # distinct prompts give distinct thinker rows

    run = SmallRun(work=work, threads=1, workers=1, pairs=4, per_class=1, batch=2, dit_s=2.0, save_every_s=600.0)
    codec = phase_codec(run)
    low, high = codec["band_std_range"]
    assert 0 < low <= high  # fitted per-band statistics, not the defaults
    trained = phase_dit(run)
    assert trained["dit_steps"] >= 1
    summary = json.loads((work / "train_summary.json").read_text())
    assert summary["history"][-1] == {"dit_steps_total": trained["dit_steps"]}

    exported = phase_export(work, dst, work)
    assert exported["tensors"] > 0
    assert (dst / "config.json").is_file() and (dst / "train_summary.json").is_file()
    if COMMITTED.is_file():
        assert _layout(dst / "model.safetensors") == _layout(COMMITTED)


def test_refusals_name_the_value():
    with pytest.raises(ValueError, match="per-class must be an integer >= 1, got 0"):
        SmallRun(per_class=0)
    with pytest.raises(ValueError, match=r"event-weight must be in \(0, 100\], got 101"):
        SmallRun(event_weight=101)
