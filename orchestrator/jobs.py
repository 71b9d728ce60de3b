"""The job schema: what a client submits (`JobSpec`), what the queue records (`JobRecord`,
`BatchStatus`) and the status enum shared by the queue, engine, CLI and HTTP API.

Validation happens here, at the boundary, and every problem is reported against its field::

    >>> JobSpec.model_validate({"task": "text_to_audio", "prompt": "rain on a tin roof"})
    >>> JobSpec.model_validate({"task": "text_to_audio", "steps": 0})
    ValidationError: prompt: required for task 'text_to_audio'; steps: Input should be >= 1 ...

`parse_spec` / `parse_spec_json` wrap pydantic's error into `InvalidJobSpec` (a `PermanentError`)
with one `(field, message)` pair per problem, which is what the queue records for a bad job.

Defaults follow the model's reference settings (10 s, 100 Euler steps, CFG 7.0). A spec without a
seed gets one derived from the job id (`derive_seed`), so a replayed job produces the same bytes.
Input URIs are kept as strings; this module only refuses obviously bad ones (control characters,
unknown schemes, `..` segments). Whether a tenant may read a URI is decided by storage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails

from model.limits import (
    DEFAULT_CFG_SCALE,
    DEFAULT_DURATION_S,
    DEFAULT_STEPS,
    MAX_CFG_SCALE,
    MAX_DURATION_S,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_TRANSCRIPT_CHARS,
    MAX_VOICE_PROMPT_TEXT_CHARS,
    MIN_CFG_SCALE,
    MIN_STEPS,
)
from orchestrator.errors import InvalidJobSpec
from orchestrator.ids import (
    CONTROL_RE,
    MAX_BATCH_ID_CHARS,
    MAX_ID_CHARS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    BatchId,
    IdempotencyKey,
    TenantId,
    batch_job_id,
    derive_seed,
    new_batch_id,
    new_job_id,
    validate_id,
)
from orchestrator.job_fields import (
    CUSTOM_ID_DESCRIPTION,
    METADATA_DESCRIPTION,
    TASK_EXAMPLES,
    WEBHOOK_URL_DESCRIPTION,
    CustomId,
    Metadata,
    WebhookUrl,
)
from orchestrator.references import (
    REFERENCE_TEXT_FIELDS,
    REFERENCE_URI_FIELDS,
    STEP_ID_RE,
    Reference,
    check_step_id,
    length_problems,
    scan_references,
)
from orchestrator.task_inputs import (
    TEXT_FIELDS,
    URI_FIELDS,
    BuiltinChain,
    EditOp,
    TaskName,
    input_problem,
    task_input_problems,
)

__all__ = [
    "DEFAULT_CFG_SCALE",
    "DEFAULT_DURATION_S",
    "DEFAULT_STEPS",
    "FINAL_STATUSES",
    "MAX_BATCH_ID_CHARS",
    "MAX_CFG_SCALE",
    "MAX_DURATION_S",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_ID_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_SPEC_JSON_BYTES",
    "MAX_STEPS",
    "MAX_TRANSCRIPT_CHARS",
    "MAX_VOICE_PROMPT_TEXT_CHARS",
    "MIN_CFG_SCALE",
    "MIN_STEPS",
    "PRIORITIES",
    "REFERENCE_TEXT_FIELDS",
    "REFERENCE_URI_FIELDS",
    "STEP_ID_RE",
    "VIDEO_OUTPUT_TASKS",
    "BatchFailure",
    "BatchStatus",
    "BuiltinChain",
    "EditOp",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "OutputFormat",
    "Priority",
    "Reference",
    "TaskName",
    "WorkflowLink",
    "batch_job_id",
    "check_runnable",
    "check_step_id",
    "derive_seed",
    "format_validation_error",
    "new_batch_id",
    "new_job_id",
    "parse_spec",
    "parse_spec_json",
    "validate_id",
]

# --------------------------------------------------------------------------- limits and defaults

# The model's own limits (durations, steps, guidance, seed, text lengths) live in `model.limits`
# and are re-exported here; the ones below belong to the job system itself.
MAX_URI_CHARS = 2048
MAX_SPEC_JSON_BYTES = 64 * 1024  # a stored spec larger than this is refused before parsing

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_URI_SCHEMES = frozenset({"s3", "file"})
# Chat-template markers such as <|im_end|> would be tokenized as control tokens if let through.
SPECIAL_TOKEN_RE = re.compile(r"<\|[^|<>]{0,40}\|>")  # the thinker's chat markers: never in a job's text


# --------------------------------------------------------------------------- enums


class OutputFormat(StrEnum):
    WAV = "wav"
    FLAC = "flac"
    MP4 = "mp4"  # video tasks only: the input's video stream with the generated audio as its track


# The tasks whose result may be returned as the input video with a new soundtrack.
VIDEO_OUTPUT_TASKS = frozenset({TaskName.VIDEO_TO_AUDIO, TaskName.VIDEO_TO_MUSIC})


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


# Highest first: the order in which the queue looks at the priority streams.
PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting in a stream, or in the delayed set before a retry
    RUNNING = "running"  # claimed under a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # permanent error (bad input); not retried
    CANCELLED = "cancelled"
    DEAD = "dead"  # retries exhausted; also in the dead-letter stream

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD})

# --------------------------------------------------------------------------- workflow steps


class WorkflowLink(BaseModel):
    """Where a job stands in a workflow; `orchestrator.workflows.plan_workflow` sets it on each step.

    `uses` maps each step this one references to that step's job id. `original` holds, for a step
    of a built-in chain, the fields as the client submitted them before the chain rewrote them
    (e.g. the prompt of a `reasoning: true` job), so the result's metadata can show both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    step: str
    uses: dict[str, str] = Field(default_factory=dict)
    original: dict[str, str] = Field(default_factory=dict)

    @field_validator("workflow_id")
    @classmethod
    def _check_workflow_id(cls, value: str) -> str:
        return validate_id(value, "workflow_id")

    @field_validator("step")
    @classmethod
    def _check_step(cls, value: str) -> str:
        return check_step_id(value)

    @field_validator("uses")
    @classmethod
    def _check_uses(cls, value: dict[str, str]) -> dict[str, str]:
        for step in value:
            check_step_id(step)
        return value

    @model_validator(mode="after")
    def _uses_are_steps_of_this_workflow(self) -> WorkflowLink:
        # A step's job id is "{workflow_id}-{step}" (`orchestrator.workflows.step_job_id`): a link
        # can name only the steps of its own workflow.
        for step, job_id in self.uses.items():
            expected = f"{self.workflow_id}-{step}"
            if job_id != expected:
                raise ValueError(f"uses: step {step!r} must map to its job id {expected!r}, not {job_id!r}")
        return self

    @field_validator("original")
    @classmethod
    def _check_original(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(REFERENCE_TEXT_FIELDS))
        if unknown:
            raise ValueError(
                f"original holds text fields only ({', '.join(REFERENCE_TEXT_FIELDS)}), not {unknown[0]!r}"
            )
        return value


# --------------------------------------------------------------------------- the spec


class JobSpec(BaseModel):
    """One unit of work as a client submits it.

    Inputs by task (`prompt` is the instruction / description):

    - `understand`: `prompt` (the question), optional `input_audio_uri`, `video_uri`.
    - `text_to_audio`, `text_to_music`: `prompt`.
    - `tts`: `transcript`, optional `voice_prompt_uri` (+ `voice_prompt_text`, its transcript).
    - `video_to_audio`, `video_to_music`: `video_uri`, optional `prompt`, `sync_feature_uri`
      (precomputed Synchformer features).
    - `edit`: `op`, `prompt` (what to add/remove/extract, or the target style), `input_audio_uri`;
      `style_transfer` also needs `source_prompt` (the sound to change).
    - `voice_conversion`: `transcript`, `voice_prompt_uri`, optional `voice_prompt_text`.

    Built-in chains (`chain`): `reasoning: true` on a task whose prompt describes a sound, and
    `voice_conversion` with `input_audio_uri` (the speech to convert) instead of a transcript, are
    valid specs but not runnable jobs: the submission paths expand them into a workflow
    (`orchestrator.workflows.expand_job`), and `parse_spec`, `parse_spec_json` and so the queue
    refuse them as a single job (`check_runnable`). A plain voice conversion still needs its
    transcript.

    Workflow steps: `workflow` (a `WorkflowLink`) marks a step's job, whose text fields may hold
    `{{<step>.text}}` and whose audio URI fields may be `{{<step>.audio}}` for the steps it
    `uses`; a spec without `workflow` may hold no reference.

    Parameters (limits from `model.limits`): `duration_s` in (0, 300], `steps` in [1, 1000],
    `cfg_scale` in [1, 30], `seed` in [0, 2**32 - 1] (None = derived from the job id),
    `output_format` wav/flac (mp4 for video tasks), `keep_source` (remove / extract edits only: the
    result keeps the source's phase and untouched parts, the model's output acting as a
    time-frequency mask on the source; see `model.postprocess.source_mask`). Routing: `tenant`, `priority`,
    `idempotency_key` (a re-submit with the same key returns the existing job), `batch_id`.

    The client's own fields (`orchestrator.job_fields`), stored and echoed, never interpreted:
    `metadata` (a small JSON object), `custom_id` (a label), `webhook_url` (called when the job ends).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": TASK_EXAMPLES},
    )

    task: TaskName = Field(description="what to do; the other fields needed depend on it (see the examples)")
    op: EditOp | None = Field(default=None, description="edit only: add, remove, extract or style_transfer")

    prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="the question (understand), the description of the sound or music, or the edit instruction",
    )
    source_prompt: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="style_transfer only: the sound to change"
    )
    transcript: str | None = Field(
        default=None, max_length=MAX_TRANSCRIPT_CHARS, description="tts, voice_conversion: the words to speak"
    )
    voice_prompt_text: str | None = Field(
        default=None, max_length=MAX_VOICE_PROMPT_TEXT_CHARS, description="the transcript of the voice prompt"
    )
    input_audio_uri: str | None = Field(
        default=None,
        max_length=MAX_URI_CHARS,
        description="audio to listen to or edit: s3://bucket/key (e.g. from POST /v1/uploads) or a local path",
    )
    voice_prompt_uri: str | None = Field(
        default=None, max_length=MAX_URI_CHARS, description="tts, voice_conversion: a recording of the voice to use"
    )
    video_uri: str | None = Field(
        default=None, max_length=MAX_URI_CHARS, description="video_to_audio, video_to_music, understand: the video"
    )
    sync_feature_uri: str | None = Field(
        default=None, max_length=MAX_URI_CHARS, description="precomputed Synchformer features of the video"
    )

    duration_s: float = Field(
        default=DEFAULT_DURATION_S, gt=0.0, le=MAX_DURATION_S, strict=True, description="seconds of audio to make"
    )
    steps: int = Field(
        default=DEFAULT_STEPS, ge=MIN_STEPS, le=MAX_STEPS, strict=True, description="sampling (Euler) steps"
    )
    cfg_scale: float = Field(
        default=DEFAULT_CFG_SCALE,
        ge=MIN_CFG_SCALE,
        le=MAX_CFG_SCALE,
        strict=True,
        description="classifier-free guidance scale",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, strict=True, description="sampling seed; none: derived from the job id"
    )
    output_format: OutputFormat = Field(
        default=OutputFormat.WAV,
        description="wav or flac; mp4 (the input video with the new soundtrack) for video tasks",
    )
    keep_source: bool = Field(
        default=False, strict=True, description="remove / extract edits: keep the source's phase and untouched parts"
    )
    reasoning: bool = Field(
        default=False, strict=True, description="let the thinker first rewrite the prompt (runs as a two-step workflow)"
    )

    tenant: TenantId = Field(default="default", description="set from the API key; only operators name it")
    priority: Priority = Field(default=Priority.NORMAL, description="high, normal or low (6:3:1 share of claims)")
    idempotency_key: IdempotencyKey | None = Field(
        default=None, description="a re-submit with the same key (per tenant) returns the existing job"
    )
    batch_id: BatchId | None = Field(default=None, description="set by POST /v1/batches for the jobs of a batch")
    metadata: Metadata | None = Field(None, description=METADATA_DESCRIPTION, examples=[{"project": "demo"}])
    custom_id: CustomId | None = Field(None, description=CUSTOM_ID_DESCRIPTION, examples=["row-0017"])
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_URL_DESCRIPTION)
    # Set by the system on a workflow step's job (`orchestrator.workflows.plan_workflow`), never by a
    # client: left out of the JSON schema, and the API refuses it.
    workflow: Annotated[WorkflowLink | None, SkipJsonSchema()] = None

    # Whether a reference needs `workflow` (a `WorkflowStep` is checked against its workflow instead).
    _references_need_link: ClassVar[bool] = True

    @field_validator(*TEXT_FIELDS, mode="before")
    @classmethod
    def _blank_is_missing(cls, value: Any) -> Any:
        # An empty or all-blank text counts as not given, so "required" errors say so plainly.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(*TEXT_FIELDS)
    @classmethod
    def _check_text(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if CONTROL_RE.search(value):
            raise ValueError("must not contain control characters (other than tab and newline)")
        marker = SPECIAL_TOKEN_RE.search(value)
        if marker:
            raise ValueError(f"must not contain chat-template markers such as {marker.group(0)!r}")
        return value

    @field_validator(*URI_FIELDS, mode="before")
    @classmethod
    def _blank_uri_is_missing(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(*URI_FIELDS)
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is None or "{{" in value:
            return value  # a reference (checked on the whole spec), or refused there if it is not one
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain whitespace or control characters")
        match = _SCHEME_RE.match(value)
        # A one-letter "scheme" is a Windows drive letter, i.e. a local path.
        scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else ""
        if scheme and scheme not in _URI_SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not supported: use s3://bucket/key, file:///path or a local path")
        if scheme == "s3":
            bucket, _, key = value[len("s3://") :].partition("/")
            if not value.lower().startswith("s3://") or not bucket or not key:
                raise ValueError(f"{value!r} is not of the form s3://bucket/key")
        path = value.split("://", 1)[-1]
        if ".." in re.split(r"[/\\]", path):
            raise ValueError("must not contain '..' path segments")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _check_task_inputs(cls, data: Any, handler: ModelWrapValidatorHandler[JobSpec]) -> JobSpec:
        # Which inputs a task needs depends on the task (and the edit op), so it is checked on the
        # whole spec, but each problem is still reported against its own field, together with any
        # field-level errors.
        try:
            spec = handler(data)
        except ValidationError as exc:
            field_errors = exc.errors()
            if not isinstance(data, Mapping):
                raise
            failed = {err["loc"][0] for err in field_errors if err["loc"]}
            problems = [p for p in task_input_problems(data) if p["loc"][0] not in failed]
            if not problems:
                raise
            details = [
                InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {}))
                for e in field_errors
            ]
            # Report in the order the fields are declared, as pydantic does.
            order = {name: i for i, name in enumerate(cls.model_fields)}
            details = sorted(details + problems, key=lambda d: order.get(str(d["loc"][0]) if d["loc"] else "", -1))
            raise ValidationError.from_exception_data(cls.__name__, details) from None
        problems = task_input_problems(spec.__dict__) + cls._spec_problems(spec)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return spec

    @classmethod
    def _spec_problems(cls, spec: JobSpec) -> list[InitErrorDetails]:
        """Whole-spec checks beyond the task's inputs: its references (a subclass may add more)."""
        refs, found = scan_references(spec.__dict__)
        problems = [input_problem(field, message, None) for field, message in found]
        if spec.output_format is OutputFormat.MP4 and spec.task not in VIDEO_OUTPUT_TASKS:
            message = "'mp4' is for video_to_audio and video_to_music only (the input video with a new soundtrack)"
            problems.append(input_problem("output_format", message, spec.output_format.value))
        if problems or not refs:
            return problems
        link = spec.workflow
        for ref in refs:
            if link is None:
                if cls._references_need_link:
                    message = f"{ref.token} uses another step's output, which only a workflow step can do"
                    problems.append(input_problem(ref.field, message, None))
            elif ref.step == link.step:
                problems.append(input_problem(ref.field, f"{ref.token}: a step cannot use its own output", None))
            elif ref.step not in link.uses:
                uses = ", ".join(sorted(link.uses)) or "none"
                message = f"{ref.token}: step {ref.step!r} is not among the steps this one uses ({uses})"
                problems.append(input_problem(ref.field, message, None))
        return problems + [
            input_problem(field, message, None) for field, message in length_problems(spec.__dict__, refs)
        ]

    # ----------------------------------------------------------------------- helpers

    def effective_seed(self, job_id: str) -> int:
        """The seed to sample with: the given one, else one derived from the job id."""
        return self.seed if self.seed is not None else derive_seed(job_id)

    def to_json(self) -> str:
        """Compact JSON as stored in Redis (unset optional fields left out)."""
        return self.model_dump_json(exclude_none=True)

    @property
    def generates_audio(self) -> bool:
        return self.task is not TaskName.UNDERSTAND

    @property
    def chain(self) -> BuiltinChain | None:
        """The built-in workflow this spec stands for, or None for a job that runs as one."""
        if self.reasoning:
            return BuiltinChain.REASONING
        if self.task is TaskName.VOICE_CONVERSION and self.transcript is None and self.input_audio_uri is not None:
            return BuiltinChain.VOICE_CONVERSION_FROM_SPEECH
        return None


def check_runnable(spec: JobSpec) -> JobSpec:
    """Return `spec` if it runs as one job; a built-in chain is refused (`InvalidJobSpec`)."""
    how = "submit it through the API, CLI or SDK, which run it as a workflow (orchestrator.workflows.expand_job)"
    if spec.chain is BuiltinChain.REASONING:
        raise InvalidJobSpec([("reasoning", f"true makes the job a two-step workflow, not one job: {how}")])
    if spec.chain is BuiltinChain.VOICE_CONVERSION_FROM_SPEECH:
        message = f"required for a single voice_conversion job; without it the speech is transcribed first: {how}"
        raise InvalidJobSpec([("transcript", message)])
    return spec


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def format_validation_error(exc: ValidationError, *, prefix: str = "") -> list[tuple[str, str]]:
    """One `(field, message)` pair per error of a pydantic `ValidationError`; inputs are shortened."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err.get("loc", ()))
        field = f"{prefix}.{field}" if prefix and field else (prefix or field)
        message = err.get("msg", "invalid")
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err.get("input") is not None and err.get("type") not in ("missing", "json_invalid"):
            message = f"{message} (got {_short_repr(err['input'])})"
        out.append((field, message))
    return out


def parse_spec(data: JobSpec | Mapping[str, Any], *, runnable: bool = True) -> JobSpec:
    """Validate a spec given as a mapping; raise `InvalidJobSpec` with per-field errors.

    With `runnable` (the queue's view) a built-in chain is refused as well (`check_runnable`);
    `runnable=False` accepts it, for callers that expand it (`orchestrator.workflows.expand_job`)."""
    if isinstance(data, JobSpec):
        return check_runnable(data) if runnable else data
    if not isinstance(data, Mapping):
        raise InvalidJobSpec([("", f"expected a JSON object, got {type(data).__name__}")])
    try:
        spec = JobSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidJobSpec(format_validation_error(exc)) from None
    return check_runnable(spec) if runnable else spec


def parse_spec_json(raw: str | bytes) -> JobSpec:
    """Validate a spec given as JSON text; malformed JSON and oversized text are clear errors."""
    size = len(raw)
    if size > MAX_SPEC_JSON_BYTES:
        raise InvalidJobSpec([("", f"spec is {size} bytes, over the limit of {MAX_SPEC_JSON_BYTES}")])
    try:
        spec = JobSpec.model_validate_json(raw)
    except ValidationError as exc:
        errors = format_validation_error(exc)
        if any(err.get("type") == "json_invalid" for err in exc.errors(include_url=False)):
            errors = [("", f"spec is not valid JSON ({msg})") for _, msg in errors]
        raise InvalidJobSpec(errors) from None
    return check_runnable(spec)  # a stored spec is a queued job, never a chain still to expand


# Records live in orchestrator.records; re-exported here for the modules that import them from jobs.
from orchestrator.records import BatchFailure, BatchStatus, JobRecord  # noqa: E402
