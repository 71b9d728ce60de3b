"""Workflows (issue 18): the schema and its refusals, ids and planning, resolving a step's
references, the built-in chains and the status views (no services)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model.limits import MAX_PROMPT_CHARS, MAX_REFERENCED_TEXT_CHARS, MAX_VOICE_PROMPT_TEXT_CHARS
from model.prompts import ASR_INSTRUCTION, reasoning_question
from model.tasks import Task
from orchestrator.errors import InvalidJobSpec, PermanentError
from orchestrator.jobs import (
    BuiltinChain,
    JobSpec,
    JobStatus,
    Priority,
    TaskName,
    WorkflowLink,
    parse_spec,
    parse_spec_json,
    validate_id,
)
from orchestrator.workflows import (
    MAX_WORKFLOW_STEPS,
    StepOutput,
    StepStatus,
    WorkflowSpec,
    WorkflowState,
    WorkflowStatus,
    expand_job,
    failed_step,
    find_references,
    is_workflow_data,
    new_workflow_id,
    parse_workflow,
    plan_workflow,
    resolve_step,
    step_job_id,
    workflow_id_for_key,
    workflow_state,
)

AUDIO = "s3://bucket/in.wav"
VOICE = "s3://bucket/voice.wav"


def describe(step_id: str = "describe", **extra: object) -> dict[str, object]:
    return {"id": step_id, "task": "understand", "prompt": "What is heard?", "input_audio_uri": AUDIO, **extra}


def t2a(step_id: str, prompt: str, **extra: object) -> dict[str, object]:
    return {"id": step_id, "task": "text_to_audio", "prompt": prompt, **extra}


def edit(step_id: str, source: str, op: str = "remove", prompt: str = "traffic") -> dict[str, object]:
    return {"id": step_id, "task": "edit", "op": op, "prompt": prompt, "input_audio_uri": source}


def refusals(data: object) -> dict[tuple[object, ...], str]:
    """loc -> message of every error of an invalid workflow."""
    with pytest.raises(ValidationError) as err:
        parse_workflow(data)  # type: ignore[arg-type]
    return {tuple(e["loc"]): e["msg"] for e in err.value.errors()}


# --------------------------------------------------------------------------- schema: accepted


def test_a_two_step_workflow_parses_with_workflow_defaults():
    wf = parse_workflow({"steps": [describe(), t2a("score", "Music for: {{describe.text}}")]})
    assert wf.step_ids == ["describe", "score"]
    assert (wf.tenant, wf.priority, wf.idempotency_key, wf.batch_id) == ("default", Priority.NORMAL, None, None)
    assert [r.step for r in find_references(wf.steps[1])] == ["describe"]
    assert parse_workflow(wf) is wf


def test_whitespace_inside_the_braces_is_allowed_and_audio_references_need_no_uri_form():
    wf = parse_workflow(
        {
            "steps": [
                edit("first", AUDIO),
                edit("second", "{{ first.audio }}", op="add", prompt="birdsong"),
                describe("third", input_audio_uri="{{second.audio}}"),
            ]
        }
    )
    refs = find_references(wf.steps[1]) + find_references(wf.steps[2])
    assert [(r.field, r.step, r.kind) for r in refs] == [
        ("input_audio_uri", "first", "audio"),
        ("input_audio_uri", "second", "audio"),
    ]


def test_a_step_may_use_several_earlier_steps_and_the_same_one_twice():
    wf = parse_workflow(
        {
            "steps": [
                describe("a"),
                describe("b"),
                {"id": "c", "task": "tts", "transcript": "{{b.text}}{{ a.text }}"},
                {"id": "d", "task": "tts", "transcript": "{{a.text}}{{a.text}}"},
            ]
        }
    )
    assert [r.step for r in find_references(wf.steps[2])] == ["b", "a"]
    plan = plan_workflow(wf, "wx")
    assert (plan[2].uses, plan[3].uses) == (("wx-b", "wx-a"), ("wx-a",))
    concrete, resolved = resolve_step(plan[3].spec, {"a": StepOutput(text="la")})
    assert concrete.transcript == "lala" and resolved == {"transcript": "lala"}


# --------------------------------------------------------------------------- schema: refused


@pytest.mark.parametrize(
    ("steps", "loc", "needles"),
    [
        pytest.param(
            [describe(), t2a("gen", "{{nothere.text}}")],
            ("steps", 1, "prompt"),
            ["step 'gen'", "no step 'nothere'", "earlier steps: describe"],
            id="unknown step",
        ),
        pytest.param(
            [t2a("gen", "{{describe.text}}"), describe()],
            ("steps", 0, "prompt"),
            ["step 'gen'", "'describe' comes later (steps[1])"],
            id="later step (a cycle)",
        ),
        pytest.param(
            [describe("loop", prompt="Again: {{loop.text}}")],
            ("steps", 0, "prompt"),
            ["step 'loop'", "cannot use its own output"],
            id="self reference",
        ),
        pytest.param(
            [describe(), edit("clean", "{{describe.audio}}")],
            ("steps", 1, "input_audio_uri"),
            ["step 'clean'", "'describe' is an understand step", "{{describe.text}}"],
            id="audio of an understand step",
        ),
        pytest.param(
            [t2a("gen", "rain"), t2a("again", "like {{gen.text}}")],
            ("steps", 1, "prompt"),
            ["step 'again'", "'gen' (text_to_audio) makes audio, not text", "{{gen.audio}}"],
            id="text of a generating step",
        ),
        pytest.param(
            [describe(), t2a("gen", "x" * (MAX_PROMPT_CHARS - MAX_REFERENCED_TEXT_CHARS + 1) + "{{describe.text}}")],
            ("steps", 1, "prompt"),
            ["step 'gen'", "2001 characters after substitution", "limit of 2000"],
            id="over-long after substitution",
        ),
        pytest.param(
            [describe(), {"id": "say", "task": "tts", "transcript": "hi", "voice_prompt_text": "a {{describe.text}}"}],
            ("steps", 1, "voice_prompt_text"),
            ["step 'say'", f"limit of {MAX_VOICE_PROMPT_TEXT_CHARS}"],
            id="over-long voice prompt text",
        ),
        pytest.param(
            [describe(), t2a("gen", "a {{describe.txt}} b")],
            ("steps", 1, "prompt"),
            ["step 'gen'", "'{{describe.txt}}' is not a reference"],
            id="malformed reference",
        ),
        pytest.param(
            [describe(), t2a("gen", "a {{describe.text b")],
            ("steps", 1, "prompt"),
            ["step 'gen'", "'{{' without a matching '}}'"],
            id="unclosed braces",
        ),
        pytest.param(
            [describe(), t2a("gen", "{{describe.audio}}")],
            ("steps", 1, "prompt"),
            ["step 'gen'", "is audio, which a text field cannot take"],
            id="audio reference in a text field",
        ),
        pytest.param(
            [describe(), edit("clean", "{{describe.text}}")],
            ("steps", 1, "input_audio_uri"),
            ["step 'clean'", "is text, which an audio URI cannot take"],
            id="text reference in a URI field",
        ),
        pytest.param(
            [t2a("gen", "rain"), edit("clean", "s3://b/{{gen.audio}}")],
            ("steps", 1, "input_audio_uri"),
            ["step 'clean'", "must be the whole value"],
            id="audio reference inside a URI",
        ),
        pytest.param(
            [t2a("gen", "rain"), {"id": "v", "task": "video_to_audio", "video_uri": "{{gen.audio}}"}],
            ("steps", 1, "video_uri"),
            ["step 'v'", "cannot use another step's output"],
            id="reference in video_uri",
        ),
        pytest.param(
            [describe(), describe()],
            ("steps", 1, "id"),
            ["step 'describe'", "already used by steps[0]"],
            id="duplicate id",
        ),
        pytest.param(
            [describe("Bad.Id")],
            ("steps", 0, "id"),
            ["step id 'Bad.Id' is invalid", "1-32 characters from [a-z0-9_-]"],
            id="bad step id",
        ),
        pytest.param(
            [describe("x" * 33)],
            ("steps", 0, "id"),
            ["is invalid", "1-32 characters"],
            id="step id too long",
        ),
        pytest.param(
            [{"task": "understand", "prompt": "q"}],
            ("steps", 0, "id"),
            ["Field required"],
            id="missing step id",
        ),
        pytest.param(
            [describe(tenant="other")],
            ("steps", 0, "tenant"),
            ["step 'describe'", "set on the workflow, not on a step"],
            id="tenant on a step",
        ),
        pytest.param(
            [describe(idempotency_key="k")],
            ("steps", 0, "idempotency_key"),
            ["step 'describe'", "set on the workflow"],
            id="idempotency key on a step",
        ),
        pytest.param(
            [t2a("gen", "rain", reasoning=True)],
            ("steps", 0, "reasoning"),
            ["step 'gen'", "not available on a workflow step"],
            id="reasoning on a step",
        ),
        pytest.param(
            [{"id": "vc", "task": "voice_conversion", "input_audio_uri": AUDIO, "voice_prompt_uri": VOICE}],
            ("steps", 0, "transcript"),
            ["step 'vc'", "add an understand step that transcribes"],
            id="voice conversion from speech on a step",
        ),
        pytest.param(
            [t2a("gen", "rain", steps=0)],
            ("steps", 0, "steps"),
            ["step 'gen'", "greater than or equal to 1"],
            id="a field error names the step",
        ),
        pytest.param(
            [{"id": "gen", "task": "text_to_audio"}],
            ("steps", 0, "prompt"),
            ["step 'gen'", "required for task 'text_to_audio'"],
            id="a missing input names the step",
        ),
    ],
)
def test_refusals_name_the_step_and_the_field(steps, loc, needles):
    errors = refusals({"steps": steps})
    assert loc in errors, errors
    for needle in needles:
        assert needle in errors[loc], errors[loc]


def test_a_text_field_at_its_limit_after_substitution_is_accepted():
    at_limit = "x" * (MAX_PROMPT_CHARS - MAX_REFERENCED_TEXT_CHARS) + "{{describe.text}}"
    assert parse_workflow({"steps": [describe(), t2a("gen", at_limit)]}).steps[1].prompt == at_limit


def test_every_problem_is_reported_not_only_the_first():
    errors = refusals({"steps": [describe(), describe(), t2a("gen", "{{later.text}}"), t2a("later", "rain")]})
    assert set(errors) == {("steps", 1, "id"), ("steps", 2, "prompt")}


def test_a_workflow_is_told_from_a_job_by_the_type_of_steps():
    assert is_workflow_data({"steps": [describe()]}) and is_workflow_data({"steps": []})
    assert not is_workflow_data({"task": "text_to_audio", "prompt": "rain", "steps": 2})  # sampling steps
    assert not is_workflow_data({"task": "text_to_audio", "prompt": "rain"}) and not is_workflow_data([1])


def test_too_many_steps_and_no_steps_are_refused():
    steps = [describe(f"s{i}") for i in range(MAX_WORKFLOW_STEPS + 1)]
    errors = refusals({"steps": steps})
    assert "at most 16 items" in errors[("steps",)]
    assert len(parse_workflow({"steps": steps[:MAX_WORKFLOW_STEPS]}).steps) == MAX_WORKFLOW_STEPS
    assert "at least 1 item" in refusals({"steps": []})[("steps",)]
    assert ("steps",) in refusals({})


@pytest.mark.parametrize(
    ("extra", "loc", "needle"),
    [
        ({"tenant": "bad tenant"}, ("tenant",), "tenant 'bad tenant' is invalid"),
        ({"batch_id": "b" * 49}, ("batch_id",), "1-48 characters"),
        ({"priority": "urgent"}, ("priority",), "'high'"),
        ({"idempotency_key": "a\nb"}, ("idempotency_key",), "control characters"),
        ({"idempotency_key": ""}, ("idempotency_key",), "at least 1"),
        ({"stepz": []}, ("stepz",), "Extra inputs are not permitted"),
    ],
)
def test_workflow_level_fields_are_checked(extra, loc, needle):
    errors = refusals({"steps": [describe()], **extra})
    assert needle in errors[loc], errors


def test_references_outside_a_workflow_are_refused():
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec({"task": "text_to_audio", "prompt": "like {{describe.text}}"})
    assert "only a workflow step can do" in dict(err.value.errors)["prompt"]
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec({"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "{{gen.audio}}"})
    assert "only a workflow step can do" in dict(err.value.errors)["input_audio_uri"]
    with pytest.raises(InvalidJobSpec) as err:  # a lone "{{" is never plain text in a spec
        parse_spec({"task": "text_to_audio", "prompt": "curly {{ braces"})
    assert "without a matching" in dict(err.value.errors)["prompt"]


def test_a_linked_spec_may_only_name_the_steps_it_uses():
    link = WorkflowLink(workflow_id="wabc", step="gen", uses={"describe": "wabc-describe"})
    spec = JobSpec(task="text_to_audio", prompt="{{describe.text}}", workflow=link)
    assert parse_spec_json(spec.to_json()) == spec  # a stored step spec parses back
    with pytest.raises(ValidationError, match="step 'other' is not among the steps this one uses"):
        JobSpec(task="text_to_audio", prompt="{{other.text}}", workflow=link)
    with pytest.raises(ValidationError, match="cannot use its own output"):
        JobSpec(task="text_to_audio", prompt="{{gen.text}}", workflow=link)
    with pytest.raises(ValidationError, match="step id 'Gen' is invalid"):
        WorkflowLink(workflow_id="wabc", step="Gen")
    with pytest.raises(ValidationError, match="original holds text fields only"):
        WorkflowLink(workflow_id="wabc", step="gen", original={"seed": "1"})
    with pytest.raises(ValidationError, match="step 'describe' must map to its job id 'wabc-describe'"):
        WorkflowLink(workflow_id="wabc", step="gen", uses={"describe": "wother-describe"})  # another workflow's job


def test_the_link_is_not_part_of_the_client_schema():
    assert "workflow" not in JobSpec.model_json_schema()["properties"]
    assert "reasoning" in JobSpec.model_json_schema()["properties"]
    assert "id" in WorkflowSpec.model_json_schema()["$defs"]["WorkflowStep"]["properties"]


def test_json_input_is_checked_the_same_and_round_trips():
    with pytest.raises(ValidationError) as err:
        WorkflowSpec.model_validate_json(
            '{"steps": [{"id": "gen", "task": "text_to_audio", "prompt": "x", "steps": 0}]}'
        )
    assert "step 'gen': " in err.value.errors()[0]["msg"] and err.value.errors()[0]["loc"] == ("steps", 0, "steps")
    wf = parse_workflow(
        {"steps": [describe(), t2a("gen", "{{describe.text}}", seed=1, priority="low")], "priority": "high"}
    )
    for dumped in (wf.model_dump_json(), wf.model_dump_json(exclude_none=True)):
        again = WorkflowSpec.model_validate_json(dumped)
        assert again == wf
        assert [p.spec.priority for p in plan_workflow(again, "wabc")] == [Priority.HIGH, Priority.LOW]
    assert "tenant" not in wf.model_dump()["steps"][0] and wf.model_dump()["steps"][1]["priority"] == "low"


# --------------------------------------------------------------------------- ids and planning


def test_workflow_and_step_ids():
    wid = new_workflow_id()
    assert wid.startswith("w") and len(wid) == 24 and wid != new_workflow_id()
    assert workflow_id_for_key("acme", "k1") == workflow_id_for_key("acme", "k1")
    assert workflow_id_for_key("acme", "k1") != workflow_id_for_key("other", "k1")
    assert len(workflow_id_for_key("acme", "k1")) == 24
    longest = step_job_id(wid, "x" * 32)
    assert longest == f"{wid}-{'x' * 32}" and validate_id(longest) == longest


def test_plan_fills_routing_links_and_uses():
    wf = parse_workflow(
        {
            "steps": [describe(), t2a("score", "Music: {{describe.text}}", priority="high", seed=7)],
            "tenant": "acme",
            "priority": "low",
            "batch_id": "b1",
            "idempotency_key": "k",
        }
    )
    first, second = plan_workflow(wf, "wabc")
    assert (first.step, first.job_id, first.uses) == ("describe", "wabc-describe", ())
    assert (second.step, second.job_id, second.uses) == ("score", "wabc-score", ("wabc-describe",))
    assert first.spec.workflow == WorkflowLink(workflow_id="wabc", step="describe")
    assert second.spec.workflow == WorkflowLink(workflow_id="wabc", step="score", uses={"describe": "wabc-describe"})
    assert (first.spec.tenant, first.spec.priority, first.spec.batch_id) == ("acme", Priority.LOW, "b1")
    assert (second.spec.priority, second.spec.seed) == (Priority.HIGH, 7)  # a step's own priority wins
    assert first.spec.idempotency_key is None and second.spec.idempotency_key is None  # the workflow's key
    assert type(second.spec) is JobSpec and parse_spec_json(second.spec.to_json()) == second.spec


def test_plan_refuses_a_workflow_id_that_would_make_too_long_job_ids():
    wf = parse_workflow({"steps": [describe()]})
    with pytest.raises(ValueError, match="workflow_id"):
        plan_workflow(wf, "w" * 32)


# --------------------------------------------------------------------------- resolve_step


def planned(steps: list[dict[str, object]], index: int) -> JobSpec:
    return plan_workflow(parse_workflow({"steps": steps}), "wabc")[index].spec


def test_resolve_substitutes_text_and_audio_and_records_it():
    spec = planned([describe(), t2a("gen", "Music for: {{ describe.text }}.")], 1)
    concrete, resolved = resolve_step(spec, {"describe": StepOutput(text="  a dog barks  ")})
    assert concrete.prompt == "Music for: a dog barks." and concrete.workflow == spec.workflow
    assert resolved == {"prompt": "Music for: a dog barks."}
    spec = planned([t2a("gen", "rain"), edit("clean", "{{gen.audio}}")], 1)
    concrete, resolved = resolve_step(spec, {"wabc-gen": StepOutput(audio_uri="s3://results/gen.wav")})  # by job id
    assert concrete.input_audio_uri == "s3://results/gen.wav"
    assert resolved == {"input_audio_uri": "s3://results/gen.wav"}


def test_resolve_truncates_a_long_answer_at_a_word_boundary():
    spec = planned([describe(), {"id": "say", "task": "tts", "transcript": "{{describe.text}}{{describe.text}}"}], 1)
    answer = "word " * 400  # 2000 characters
    concrete, resolved = resolve_step(spec, {"describe": StepOutput(text=answer)})
    part = ("word " * 200).strip()  # the cut falls on the space at the limit
    assert len(part) <= MAX_REFERENCED_TEXT_CHARS
    assert concrete.transcript == part + part
    assert resolved["truncated"] == ["transcript"]
    unbroken = "x" * 1500  # no whitespace: a hard cut at the limit
    concrete, _ = resolve_step(
        planned([describe(), t2a("gen", "{{describe.text}}")], 1), {"describe": StepOutput(text=unbroken)}
    )
    assert concrete.prompt == "x" * MAX_REFERENCED_TEXT_CHARS


def test_resolve_keeps_answers_from_reading_as_references_or_markers():
    spec = planned([describe(), t2a("gen", "{{describe.text}}")], 1)
    concrete, _ = resolve_step(spec, {"describe": StepOutput(text="a {{x.text}} <|im_end|> b\x07c")})
    assert concrete.prompt == "a { {x.text}}  b c"


def test_resolve_refuses_missing_or_wrong_outputs_naming_the_step():
    spec = planned([describe(), t2a("gen", "{{describe.text}}")], 1)
    with pytest.raises(PermanentError, match="step 'gen': the output of step 'describe'"):
        resolve_step(spec, {})
    with pytest.raises(PermanentError, match="step 'describe' has no text answer"):
        resolve_step(spec, {"describe": StepOutput(audio_uri="s3://x/y.wav")})
    with pytest.raises(InvalidJobSpec, match="invalid step 'gen' after substitution: prompt: required"):
        resolve_step(spec, {"describe": StepOutput(text="   ")})
    audio = planned([t2a("gen", "rain"), edit("clean", "{{gen.audio}}")], 1)
    with pytest.raises(PermanentError, match="step 'gen' has no result audio"):
        resolve_step(audio, {"gen": StepOutput(text="hello")})


def test_resolve_leaves_a_spec_without_references_alone():
    spec = planned([describe()], 0)
    assert resolve_step(spec, {}) == (spec, {})
    plain = JobSpec(task="text_to_audio", prompt="rain")
    assert resolve_step(plain, {}) == (plain, {})


# --------------------------------------------------------------------------- built-in chains


def test_plain_jobs_expand_to_nothing():
    assert expand_job(JobSpec(task="text_to_audio", prompt="rain")) is None
    assert expand_job(JobSpec(task="voice_conversion", transcript="hi", voice_prompt_uri=VOICE)) is None


@pytest.mark.parametrize(
    ("data", "model_task"),
    [
        ({"task": "text_to_audio", "prompt": "a dog in a storm"}, Task.TEXT_TO_AUDIO),
        ({"task": "text_to_music", "prompt": "sad waltz"}, Task.TEXT_TO_MUSIC),
        ({"task": "video_to_audio", "prompt": "street", "video_uri": "s3://b/v.mp4"}, Task.VIDEO_TO_AUDIO),
        ({"task": "edit", "op": "remove", "prompt": "the loud thing", "input_audio_uri": AUDIO}, Task.EDIT_REMOVE),
    ],
)
def test_reasoning_expands_to_reason_then_generate(data, model_task):
    spec = JobSpec.model_validate(
        {**data, "reasoning": True, "tenant": "acme", "priority": "high", "seed": 3, "idempotency_key": "k"}
    )
    assert spec.chain is BuiltinChain.REASONING
    wf = expand_job(spec)
    assert isinstance(wf, WorkflowSpec) and wf.step_ids == ["reason", "generate"]
    assert (wf.tenant, wf.priority, wf.idempotency_key) == ("acme", Priority.HIGH, "k")
    reason, generate = plan_workflow(wf, "wabc")
    assert reason.spec.task is TaskName.UNDERSTAND
    assert reason.spec.prompt == reasoning_question(model_task, data["prompt"])
    assert reason.spec.input_audio_uri is None and reason.spec.video_uri is None
    assert generate.spec.task.value == data["task"] and generate.spec.prompt == "{{reason.text}}"
    assert generate.spec.reasoning is False and generate.spec.seed == 3 and generate.uses == ("wabc-reason",)
    assert generate.spec.workflow is not None and generate.spec.workflow.original == {"prompt": data["prompt"]}
    assert (generate.spec.tenant, generate.spec.priority) == ("acme", Priority.HIGH)
    concrete, resolved = resolve_step(generate.spec, {"reason": StepOutput(text="thunder and a barking dog")})
    assert concrete.prompt == "thunder and a barking dog" and resolved == {"prompt": concrete.prompt}
    assert concrete.video_uri == data.get("video_uri") and concrete.input_audio_uri == data.get("input_audio_uri")


def test_voice_conversion_from_speech_expands_to_transcribe_then_convert():
    spec = JobSpec(
        task="voice_conversion", input_audio_uri=AUDIO, voice_prompt_uri=VOICE, voice_prompt_text="hello", seed=5
    )
    assert spec.chain is BuiltinChain.VOICE_CONVERSION_FROM_SPEECH
    wf = expand_job(spec)
    assert wf is not None and wf.step_ids == ["transcribe", "convert"]
    transcribe, convert = plan_workflow(wf, "wabc")
    assert (transcribe.spec.task, transcribe.spec.prompt) == (TaskName.UNDERSTAND, ASR_INSTRUCTION)
    assert transcribe.spec.input_audio_uri == AUDIO
    assert convert.spec.task is TaskName.VOICE_CONVERSION and convert.spec.input_audio_uri is None
    assert (convert.spec.transcript, convert.spec.voice_prompt_uri) == ("{{transcribe.text}}", VOICE)
    assert (convert.spec.voice_prompt_text, convert.spec.seed) == ("hello", 5)
    concrete, _ = resolve_step(convert.spec, {"transcribe": StepOutput(text="good morning")})
    assert concrete.transcript == "good morning" and concrete.chain is None


def test_chains_are_valid_specs_but_not_runnable_jobs():
    vc = {"task": "voice_conversion", "input_audio_uri": AUDIO, "voice_prompt_uri": VOICE}
    assert parse_spec(vc, runnable=False).chain is BuiltinChain.VOICE_CONVERSION_FROM_SPEECH
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec(vc)  # what the queue does with a single job
    assert "transcribed first" in dict(err.value.errors)["transcript"]
    with pytest.raises(InvalidJobSpec, match="reasoning"):
        parse_spec(JobSpec(task="text_to_audio", prompt="rain", reasoning=True))
    with pytest.raises(InvalidJobSpec, match="transcript"):
        parse_spec_json(JobSpec.model_validate(vc).to_json())


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"task": "voice_conversion", "voice_prompt_uri": VOICE}, "transcript", "required"),
        ({"task": "voice_conversion", "input_audio_uri": AUDIO}, "voice_prompt_uri", "required"),
        (
            {"task": "voice_conversion", "transcript": "hi", "input_audio_uri": AUDIO, "voice_prompt_uri": VOICE},
            "input_audio_uri",
            "when a transcript is given",
        ),
        ({"task": "tts", "transcript": "hi", "input_audio_uri": AUDIO}, "input_audio_uri", "not used by task 'tts'"),
    ],
)
def test_voice_conversion_inputs(data, field, needle):
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec(data, runnable=False)
    assert needle in dict(err.value.errors)[field]


# --------------------------------------------------------------------------- status views


def steps_with(*statuses: JobStatus) -> list[StepStatus]:
    return [
        StepStatus(id=f"s{i}", task=TaskName.TEXT_TO_AUDIO, job_id=f"w-s{i}", status=status)
        for i, status in enumerate(statuses)
    ]


Q, R, S, F, D, C = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.DEAD,
    JobStatus.CANCELLED,
)


@pytest.mark.parametrize(
    ("statuses", "cancelled", "state"),
    [
        ((Q, Q), False, WorkflowState.QUEUED),
        ((R, Q), False, WorkflowState.RUNNING),
        ((S, Q), False, WorkflowState.RUNNING),  # between steps
        ((S, S), False, WorkflowState.SUCCEEDED),
        ((S, S), True, WorkflowState.SUCCEEDED),  # a cancel after the last step changes nothing
        ((F, C), False, WorkflowState.FAILED),
        ((S, D), False, WorkflowState.FAILED),
        ((R, C), True, WorkflowState.CANCELLED),
        ((S, F), True, WorkflowState.CANCELLED),  # the cancel came first
        ((S, C), False, WorkflowState.CANCELLED),  # a step cancelled on its own
        ((C, F), False, WorkflowState.FAILED),
    ],
)
def test_workflow_state(statuses, cancelled, state):
    assert workflow_state(steps_with(*statuses), cancelled=cancelled) is state
    assert workflow_state(statuses, cancelled=cancelled) is state


def test_status_views():
    steps = steps_with(S, D, C)
    assert failed_step(steps) is steps[1] and failed_step(steps_with(S, S)) is None
    status = WorkflowStatus(
        workflow_id="wabc", tenant="acme", status=workflow_state(steps), steps=steps, failed_step="s1"
    )
    assert status.status is WorkflowState.FAILED and status.status.is_final and not WorkflowState.RUNNING.is_final
    assert status.step("s2") is steps[2] and status.step("nope") is None
    assert WorkflowStatus.model_validate_json(status.model_dump_json()) == status
