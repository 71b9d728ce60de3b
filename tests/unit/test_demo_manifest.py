"""`make demo`'s manifests: every line of `demo.jsonl` is a valid job, and the trained jobs ask the
`small` model for exactly the prompts it was trained on (training/recipes/small.py);
`workflows.jsonl` holds one workflow of each shape, and `make_inputs.py` writes every local input
both name."""

from __future__ import annotations

import json
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


WORKFLOWS = ROOT / "examples" / "workflows.jsonl"


def _demo_workflows():
    from orchestrator.jobs import JobSpec
    from orchestrator.references import scan_references
    from orchestrator.workflows import expand_job, parse_workflow

    out = []
    for line in WORKFLOWS.read_text().splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        if isinstance(data.get("steps"), list):
            out.append(("workflow", parse_workflow(data)))
        else:
            spec = JobSpec.model_validate_json(line)  # a built-in chain is a valid spec, not a runnable job
            out.append(("job", expand_job(spec) if spec.chain is not None else spec))
    return out, scan_references


def test_the_workflow_demo_has_one_of_each_shape_and_every_line_is_valid():
    from orchestrator.jobs import JobSpec
    from orchestrator.workflows import WorkflowSpec

    lines, scan_references = _demo_workflows()
    workflows = [w for kind, w in lines if kind == "workflow"]
    chains = [w for kind, w in lines if kind == "job" and isinstance(w, WorkflowSpec)]
    plain = [s for kind, s in lines if kind == "job" and isinstance(s, JobSpec)]

    def refs(wf: WorkflowSpec) -> list[tuple[str, str, str]]:
        return [(r.field, r.step, r.kind) for step in wf.steps for r in scan_references(step.__dict__)[0]]

    # understand -> generate through {{describe.text}}
    assert any(
        [s.task for s in wf.steps] == [TaskName.UNDERSTAND, TaskName.TEXT_TO_AUDIO]
        and ("prompt", wf.steps[0].id, "text") in refs(wf)
        for wf in workflows
    )
    # edit(remove) -> edit(add) on the first's audio -> understand on the second's audio
    assert any(
        [(s.task, s.op) for s in wf.steps]
        == [(TaskName.EDIT, EditOp.REMOVE), (TaskName.EDIT, EditOp.ADD), (TaskName.UNDERSTAND, None)]
        and refs(wf) == [("input_audio_uri", wf.steps[0].id, "audio"), ("input_audio_uri", wf.steps[1].id, "audio")]
        for wf in workflows
    )
    # the two built-in chains, as the system expands them
    assert sorted([s.id for s in wf.steps] for wf in chains) == [["reason", "generate"], ["transcribe", "convert"]]
    # and one understanding job on audio longer than the thinker's window
    from model.limits import THINKER_WINDOW_S

    (long_job,) = plain
    assert long_job.task is TaskName.UNDERSTAND and long_job.input_audio_uri == "long.wav"
    assert make_inputs_module().LONG_S > THINKER_WINDOW_S


def make_inputs_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_inputs", ROOT / "examples" / "make_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_inputs_writes_every_local_input_the_demo_manifests_name(tmp_path):
    written = {p.name for p in make_inputs_module().make_inputs(tmp_path)}
    named = set()
    for manifest in (DEMO, WORKFLOWS):
        for line in manifest.read_text().splitlines():
            if line.strip():
                data = json.loads(line)
                for item in data["steps"] if isinstance(data.get("steps"), list) else [data]:
                    for field in ("input_audio_uri", "voice_prompt_uri", "video_uri", "sync_feature_uri"):
                        value = item.get(field)
                        if value and "{{" not in value:
                            named.add(value)
    assert named <= written, named - written
    import soundfile as sf

    assert sf.info(tmp_path / "long.wav").duration == 45.0
    assert sf.info(tmp_path / "speech.wav").duration == 3.0
