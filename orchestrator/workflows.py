"""Workflows: ordered steps whose later steps use earlier steps' outputs (issue 18).

A workflow is a list of steps; each step is a job spec plus an `id` (1-32 of `[a-z0-9_-]`). A step
may use the output of an EARLIER step through a reference (`orchestrator.references`):

    {"steps": [
        {"id": "describe", "task": "understand", "prompt": "What is heard?", "input_audio_uri": "s3://b/a.wav"},
        {"id": "score", "task": "text_to_music", "prompt": "Music for: {{describe.text}}"}
    ]}

`{{<id>.text}}` (inside a text field) is the text answer of an `understand` step; `{{<id>.audio}}`
(the whole value of `input_audio_uri` / `voice_prompt_uri`) is the result audio of a generating
step. Only earlier steps may be named, which is also how cycles are refused. Everything is checked
at submission (`parse_workflow`): errors carry the loc `("steps", i, field)` and a message that
names the step.

Each step runs as its own job (`plan_workflow` gives its job id, `step_job_id`, and its spec with a
`WorkflowLink`); when a step is claimed, `resolve_step` pastes the outputs of the steps it uses into
its spec. Two built-in chains are workflows the system makes from one job spec (`expand_job`):
`reasoning: true` (the thinker rewrites the prompt, then the generation uses it) and voice
conversion from speech (transcribe, then speak). `WorkflowStatus` / `workflow_state` are the
status views. Torch-free: the API and the CLI import this module.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from model.limits import MAX_REFERENCED_TEXT_CHARS
from model.prompts import ASR_INSTRUCTION, reasoning_question
from orchestrator.errors import InvalidJobSpec, PermanentError
from orchestrator.job_fields import WEBHOOK_URL_DESCRIPTION, WebhookUrl
from orchestrator.jobs import (
    CONTROL_RE,
    MAX_ID_CHARS,
    SPECIAL_TOKEN_RE,
    STEP_ID_RE,
    BatchId,
    BuiltinChain,
    EditOp,
    IdempotencyKey,
    JobSpec,
    JobStatus,
    Priority,
    TaskName,
    TenantId,
    WorkflowLink,
    format_validation_error,
    validate_id,
)
from orchestrator.references import Reference, check_step_id, scan_references

__all__ = [
    "MAX_WORKFLOW_STEPS",
    "STEP_ID_RE",
    "PlannedStep",
    "StepOutput",
    "StepStatus",
    "WorkflowSpec",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowStep",
    "expand_job",
    "failed_step",
    "find_references",
    "is_workflow_data",
    "new_workflow_id",
    "parse_workflow",
    "plan_workflow",
    "resolve_step",
    "step_job_id",
    "workflow_id_for_key",
    "workflow_state",
]

MAX_WORKFLOW_STEPS = 16
WORKFLOW_ID_CHARS = 24  # "w" + 23 hex characters
# Step job ids are "{workflow_id}-{step}" and must stay valid job ids (at most MAX_ID_CHARS).
MAX_WORKFLOW_ID_CHARS = MAX_ID_CHARS - 1 - 32

# Fields a workflow sets for all its steps; a step may not set them itself.
_WORKFLOW_FIELDS = ("tenant", "batch_id", "idempotency_key", "workflow")
_ROUTING_FIELDS = ("tenant", "priority", "batch_id", "idempotency_key", "workflow", "reasoning")


def _problem(loc: tuple[str | int, ...], message: str, value: Any = None) -> InitErrorDetails:
    error = PydanticCustomError("workflow", "{message}", {"message": message})
    return InitErrorDetails(type=error, loc=loc, input=value)


def find_references(spec: JobSpec) -> list[Reference]:
    """Every reference in a valid spec or step, in field order."""
    return scan_references(spec.__dict__)[0]


# --------------------------------------------------------------------------- schema


class WorkflowStep(JobSpec):
    """One step: the `JobSpec` fields plus `id`. References to other steps are allowed here (the
    workflow checks them against its earlier steps); `tenant`, `batch_id`, `idempotency_key` and
    `workflow` belong to the workflow, and the built-in chains are not available inside one (write
    the understand step yourself)."""

    model_config = ConfigDict(json_schema_extra=None)  # the job examples have no step id

    id: str = Field(description="the step's id (1-32 of [a-z0-9_-]), used in {{<id>.text}} / {{<id>.audio}}")

    _references_need_link: ClassVar[bool] = False

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return check_step_id(value)

    @model_serializer(mode="wrap")
    def _dump_own_routing_only(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A step's routing fields default from the workflow: dump only those the client gave, so a
        # dumped workflow parses back to the same workflow (its priority still the default of the
        # steps that gave none).
        data = handler(self)
        if isinstance(data, dict):
            for name in (*_WORKFLOW_FIELDS, "priority"):
                if name not in self.model_fields_set:
                    data.pop(name, None)
        return data

    @classmethod
    def _spec_problems(cls, spec: JobSpec) -> list[InitErrorDetails]:
        problems = super()._spec_problems(spec)
        for name in _WORKFLOW_FIELDS:
            if name in spec.model_fields_set and getattr(spec, name) is not None:
                problems.append(_problem((name,), f"{name} is set on the workflow, not on a step"))
        if spec.chain is BuiltinChain.REASONING:
            message = (
                "not available on a workflow step: add an understand step that rewrites the prompt, use {{<step>.text}}"
            )
            problems.append(_problem(("reasoning",), message, True))
        elif spec.chain is BuiltinChain.VOICE_CONVERSION_FROM_SPEECH:
            message = (
                "required for voice_conversion in a workflow step: add an understand step that transcribes "
                "the speech and use {{<step>.text}}"
            )
            problems.append(_problem(("transcript",), message))
        return problems


class WorkflowSpec(BaseModel):
    """A workflow as a client submits it. `priority` is the default of the steps that give none;
    `tenant`, `batch_id` and `idempotency_key` apply to the whole workflow; `webhook_url` is
    called once when the workflow ends (`workflow.succeeded`, `.failed` or `.cancelled`; a step
    may have a `webhook_url` of its own)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "steps": [
                        {
                            "id": "describe",
                            "task": "understand",
                            "prompt": "Describe the scene in one sentence.",
                            "input_audio_uri": "s3://my-bucket/street.wav",
                        },
                        {"id": "score", "task": "text_to_music", "prompt": "Music for: {{describe.text}}"},
                    ],
                    "webhook_url": "https://example.com/hooks/audio-omni",
                }
            ]
        },
    )

    steps: list[WorkflowStep] = Field(min_length=1, max_length=MAX_WORKFLOW_STEPS)
    idempotency_key: IdempotencyKey | None = None
    tenant: TenantId = "default"
    priority: Priority = Priority.NORMAL
    batch_id: BatchId | None = None
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_URL_DESCRIPTION)

    # Set by `expand_job` only: step id -> the fields as the client gave them before a built-in
    # chain rewrote them (carried into `WorkflowLink.original` by `plan_workflow`).
    _original: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _check(cls, data: Any, handler: ModelWrapValidatorHandler[WorkflowSpec]) -> WorkflowSpec:
        try:
            wf = handler(data)
        except ValidationError as exc:
            raise _naming_steps(exc, data) from None
        problems = _cross_step_problems(wf.steps)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return wf

    @property
    def step_ids(self) -> list[str]:
        return [step.id for step in self.steps]


def _naming_steps(exc: ValidationError, data: Any) -> ValidationError:
    """`exc` with every message about `steps[i]` prefixed by that step's id (where it has one)."""
    if isinstance(data, str | bytes):  # model_validate_json: read the ids back, best effort
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    raw = data.get("steps") if isinstance(data, Mapping) else None
    details: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and isinstance(raw, list):
            item = raw[loc[1]] if loc[1] < len(raw) else None
            step_id = item.get("id") if isinstance(item, Mapping) else None
            if isinstance(step_id, str) and STEP_ID_RE.fullmatch(step_id):
                message = f"step {step_id!r}: {message}"
        details.append(_problem(loc, message, err["input"]))
    return ValidationError.from_exception_data(exc.title, details)


def _cross_step_problems(steps: list[WorkflowStep]) -> list[InitErrorDetails]:
    """Duplicate ids and references that do not name an earlier step of the right kind."""
    problems: list[InitErrorDetails] = []
    first_at: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in first_at:
            message = f"step {step.id!r}: the id is already used by steps[{first_at[step.id]}]"
            problems.append(_problem(("steps", i, "id"), message, step.id))
        else:
            first_at[step.id] = i
    for i, step in enumerate(steps):
        earlier = {s.id: s for s in steps[:i]}
        for ref in find_references(step):
            wrong = _reference_problem(step, ref, earlier, first_at)
            if wrong:
                problems.append(_problem(("steps", i, ref.field), f"step {step.id!r}: {ref.token}: {wrong}"))
    return problems


def _reference_problem(
    step: WorkflowStep, ref: Reference, earlier: Mapping[str, WorkflowStep], first_at: Mapping[str, int]
) -> str | None:
    if ref.step == step.id:
        return "a step cannot use its own output"
    used = earlier.get(ref.step)
    if used is None:
        if ref.step in first_at:
            return f"step {ref.step!r} comes later (steps[{first_at[ref.step]}]); a step may only use earlier steps"
        known = ", ".join(earlier) or "none"
        return f"there is no step {ref.step!r} before this one (earlier steps: {known})"
    if ref.kind == "audio" and used.task is TaskName.UNDERSTAND:
        return f"step {ref.step!r} is an understand step: it answers in text, use {{{{{ref.step}.text}}}}"
    if ref.kind == "text" and used.task is not TaskName.UNDERSTAND:
        return f"step {ref.step!r} ({used.task.value}) makes audio, not text: use {{{{{ref.step}.audio}}}}"
    return None


def is_workflow_data(data: object) -> bool:
    """Whether a submitted JSON object is a workflow rather than a job. A workflow's `steps` is a
    list; a job's `steps` is its number of sampling steps (an integer), so test the type."""
    return isinstance(data, Mapping) and isinstance(data.get("steps"), list)


def parse_workflow(data: Mapping[str, Any] | WorkflowSpec) -> WorkflowSpec:
    """Validate a workflow (raises pydantic's `ValidationError`; see `WorkflowSpec`)."""
    if isinstance(data, WorkflowSpec):
        return data
    return WorkflowSpec.model_validate(data)


# --------------------------------------------------------------------------- ids and planning


def new_workflow_id() -> str:
    """A fresh random workflow id ("w" + 23 hex characters)."""
    return "w" + uuid.uuid4().hex[: WORKFLOW_ID_CHARS - 1]


def workflow_id_for_key(tenant: str, key: str) -> str:
    """The workflow id of a tenant's idempotency key (distinct across tenants, stable across calls)."""
    return "w" + hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[: WORKFLOW_ID_CHARS - 1]


def step_job_id(workflow_id: str, step_id: str) -> str:
    """The job id of a step. Deterministic, so re-submitting a workflow cannot duplicate a step."""
    return f"{workflow_id}-{step_id}"


@dataclass(frozen=True)
class PlannedStep:
    """One step as the queue records it: its job id, its spec (with `workflow` set, routing filled
    in from the workflow) and the job ids of the steps it uses (in order of first use, each once)."""

    step: str
    job_id: str
    spec: JobSpec
    uses: tuple[str, ...]


def plan_workflow(wf: WorkflowSpec, workflow_id: str) -> list[PlannedStep]:
    """The job of every step, in order."""
    validate_id(workflow_id, "workflow_id", max_chars=MAX_WORKFLOW_ID_CHARS)
    planned: list[PlannedStep] = []
    for step in wf.steps:
        uses = {ref.step: step_job_id(workflow_id, ref.step) for ref in find_references(step)}
        link = WorkflowLink(workflow_id=workflow_id, step=step.id, uses=uses, original=wf._original.get(step.id, {}))
        data = step.model_dump(exclude={"id", *_WORKFLOW_FIELDS}, exclude_none=True)
        data.update(tenant=wf.tenant, batch_id=wf.batch_id, workflow=link)
        if "priority" not in step.model_fields_set:
            data["priority"] = wf.priority
        spec = JobSpec.model_validate(data)
        planned.append(PlannedStep(step.id, step_job_id(workflow_id, step.id), spec, tuple(uses.values())))
    return planned


# --------------------------------------------------------------------------- resolving a step


@dataclass(frozen=True)
class StepOutput:
    """What a finished step gives later steps: its text answer and / or its result audio."""

    text: str | None = None
    audio_uri: str | None = None


def _clean_answer(text: str) -> str:
    """A text answer as it may stand inside another spec: no control characters or chat-template
    markers, and no `{{` (which would read as a reference). `_cut` then bounds its length."""
    return SPECIAL_TOKEN_RE.sub("", CONTROL_RE.sub(" ", text)).replace("{{", "{ {").strip()


def _cut(text: str, limit: int = MAX_REFERENCED_TEXT_CHARS) -> tuple[str, bool]:
    """`text` cut to at most `limit` characters, at the last whitespace before the limit."""
    if len(text) <= limit:
        return text, False
    head = text[: limit + 1]
    at = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return (head[:at] if at > 0 else text[:limit]).rstrip(), True


def resolve_step(spec: JobSpec, outputs: Mapping[str, StepOutput]) -> tuple[JobSpec, dict[str, Any]]:
    """The concrete spec of a step (its references replaced by the used steps' outputs, validated
    again like any spec, `workflow` kept) and `resolved`: each substituted field's final value, plus
    `"truncated": [field, ...]` where a text answer was cut to MAX_REFERENCED_TEXT_CHARS.

    `outputs` is keyed by step id (a step's job id is accepted too). A missing output, or one of the
    wrong kind, raises `PermanentError` naming the step; so does a spec that is invalid after
    substitution (e.g. an empty answer where a prompt is required). A spec without `workflow` (or
    without references) comes back unchanged with an empty `resolved`."""
    link = spec.workflow
    refs = find_references(spec)
    if link is None or not refs:
        return spec, {}
    values = {ref.field: getattr(spec, ref.field) for ref in refs}
    truncated: list[str] = []
    for ref in refs:
        out = outputs.get(ref.step)
        if out is None and ref.step in link.uses:
            out = outputs.get(link.uses[ref.step])
        if out is None:
            raise PermanentError(f"step {link.step!r}: the output of step {ref.step!r} ({ref.token}) is not available")
        if ref.kind == "audio":
            if not out.audio_uri:
                raise PermanentError(f"step {link.step!r}: step {ref.step!r} has no result audio for {ref.field}")
            values[ref.field] = out.audio_uri
            continue
        if out.text is None:
            raise PermanentError(f"step {link.step!r}: step {ref.step!r} has no text answer for {ref.field}")
        answer, cut = _cut(_clean_answer(out.text))
        if cut and ref.field not in truncated:
            truncated.append(ref.field)
        values[ref.field] = values[ref.field].replace(ref.token, answer)
    data = spec.model_dump(exclude_none=True)
    data.update(values)
    try:
        concrete = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidJobSpec(format_validation_error(exc), what=f"step {link.step!r} after substitution") from None
    resolved: dict[str, Any] = {field: getattr(concrete, field) for field in values}
    if truncated:
        resolved["truncated"] = truncated
    return concrete, resolved


# --------------------------------------------------------------------------- built-in chains

_KEEP_OUT_OF_STEPS = frozenset((*_ROUTING_FIELDS, "webhook_url"))  # the workflow's, not a step's
_CLIENT_FIELDS = ("metadata", "custom_id")  # echoed on every step of a built-in chain


def _model_task(spec: JobSpec) -> str:
    if spec.task is TaskName.EDIT and isinstance(spec.op, EditOp):
        return f"edit_{spec.op.value}"
    return spec.task.value


def expand_job(spec: JobSpec) -> WorkflowSpec | None:
    """The workflow a built-in chain stands for (`JobSpec.chain`), or None for a plain job.

    - `reasoning: true`: step `reason` (understand: the thinker rewrites the request,
      `model.prompts.reasoning_question`), then step `generate` (the job with prompt
      `{{reason.text}}`; its `WorkflowLink.original` keeps the prompt as submitted).
    - `voice_conversion` with `input_audio_uri` and no transcript: step `transcribe` (understand
      with `model.prompts.ASR_INSTRUCTION`), then step `convert` (transcript `{{transcribe.text}}`).

    The workflow keeps the job's tenant, priority, batch, idempotency key and webhook URL (called
    once, when the workflow ends); both steps keep its `metadata` and `custom_id`."""
    chain = spec.chain
    if chain is None:
        return None
    job = {k: v for k, v in spec.model_dump(exclude_none=True).items() if k not in _KEEP_OUT_OF_STEPS}
    client = {k: job[k] for k in _CLIENT_FIELDS if k in job}
    original: dict[str, dict[str, str]] = {}
    if chain is BuiltinChain.REASONING:
        assert spec.prompt is not None  # JobSpec requires it with reasoning
        try:
            question = reasoning_question(_model_task(spec), spec.prompt)
        except ValueError as exc:  # JobSpec checks the same rules; kept as a clear refusal anyway
            raise InvalidJobSpec([("prompt", str(exc))]) from None
        steps = [
            {"id": "reason", "task": TaskName.UNDERSTAND, "prompt": question, **client},
            {**job, "id": "generate", "prompt": "{{reason.text}}"},
        ]
        original["generate"] = {"prompt": spec.prompt}
    else:
        convert = {k: v for k, v in job.items() if k != "input_audio_uri"}
        steps = [
            {
                "id": "transcribe",
                "task": TaskName.UNDERSTAND,
                "prompt": ASR_INSTRUCTION,
                "input_audio_uri": spec.input_audio_uri,
                **client,
            },
            {**convert, "id": "convert", "transcript": "{{transcribe.text}}"},
        ]
    wf = WorkflowSpec.model_validate(
        {
            "steps": steps,
            "tenant": spec.tenant,
            "priority": spec.priority,
            "batch_id": spec.batch_id,
            "idempotency_key": spec.idempotency_key,
            "webhook_url": spec.webhook_url,
        }
    )
    wf._original = original
    return wf


# --------------------------------------------------------------------------- status views


class WorkflowState(StrEnum):
    QUEUED = "queued"  # no step has started
    RUNNING = "running"  # a step runs, or some have succeeded and others wait
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed or died (`failed_step`); the others were not run
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (WorkflowState.SUCCEEDED, WorkflowState.FAILED, WorkflowState.CANCELLED)


class StepStatus(BaseModel):
    """One step of a workflow as the status views show it."""

    id: str
    task: TaskName
    job_id: str
    status: JobStatus
    text: str | None = None  # an understand step's answer, once it succeeded
    result_uri: str | None = None
    result_available: bool = False
    error: str | None = None
    error_code: str | None = None


class WorkflowStatus(BaseModel):
    """A workflow's state and its steps, in order."""

    workflow_id: str
    tenant: str
    status: WorkflowState
    steps: list[StepStatus]
    failed_step: str | None = None  # the id of the first step that failed or died
    error: str | None = None
    created_at: float | None = None
    batch_id: str | None = None
    webhook_url: str | None = None

    def step(self, step_id: str) -> StepStatus | None:
        return next((s for s in self.steps if s.id == step_id), None)


_FAILED = frozenset({JobStatus.FAILED, JobStatus.DEAD})


def workflow_state(steps: Iterable[StepStatus | JobStatus], *, cancelled: bool = False) -> WorkflowState:
    """A workflow's state from its steps' statuses (and whether it was cancelled).

    Succeeded when every step succeeded (a cancel that came too late changes nothing); else
    cancelled if the workflow was cancelled; failed if a step failed or died; cancelled if a step
    was cancelled on its own (the workflow cannot finish); running if a step runs or has
    succeeded; queued otherwise."""
    statuses = [s.status if isinstance(s, StepStatus) else JobStatus(s) for s in steps]
    if statuses and all(s is JobStatus.SUCCEEDED for s in statuses):
        return WorkflowState.SUCCEEDED
    if cancelled:
        return WorkflowState.CANCELLED
    if any(s in _FAILED for s in statuses):
        return WorkflowState.FAILED
    if JobStatus.CANCELLED in statuses:
        return WorkflowState.CANCELLED
    if any(s in (JobStatus.RUNNING, JobStatus.SUCCEEDED) for s in statuses):
        return WorkflowState.RUNNING
    return WorkflowState.QUEUED


def failed_step(steps: Iterable[StepStatus]) -> StepStatus | None:
    """The first step (in workflow order) that failed or died, if any."""
    return next((s for s in steps if s.status in _FAILED), None)
