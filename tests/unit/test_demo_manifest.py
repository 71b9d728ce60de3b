"""`make demo`'s manifest: every line is a valid job, and the trained jobs ask the `small` model for
exactly the prompts it was trained on (training/recipes/small.py)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.jobs import EditOp, TaskName, parse_spec_json

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.jsonl"


def test_every_demo_line_is_a_valid_job_and_the_trained_ones_use_trained_prompts():
    from training.recipes.small import CLASSES

    trained_labels = {c.replace("_", " ") for c in CLASSES}
    specs = [parse_spec_json(line) for line in DEMO.read_text().splitlines() if line.strip()]
    trained = [
        s
        for s in specs
        if s.task is TaskName.TEXT_TO_AUDIO
        or (s.task is TaskName.EDIT and s.op in (EditOp.ADD, EditOp.REMOVE, EditOp.EXTRACT))
    ]
    assert len(trained) >= 6
    for spec in trained:
        assert spec.prompt in trained_labels, spec.prompt
    assert {s.task for s in specs} == set(TaskName)  # the demo still runs one job of every task
