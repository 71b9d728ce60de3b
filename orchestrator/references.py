"""References between workflow steps: the grammar, checked on a job spec's fields.

A workflow step (`orchestrator.workflows`) uses an earlier step's output through a reference:
`{{<step>.text}}` anywhere inside a text field (`prompt`, `source_prompt`, `transcript`,
`voice_prompt_text`) is that step's text answer; `{{<step>.audio}}` as the whole value of an audio
URI field (`input_audio_uri`, `voice_prompt_uri`) is its result audio. Whitespace inside the braces
is allowed. In every spec field `{{` starts a reference, so one that is not well formed is refused,
in a plain job as in a step. Which steps a spec may name is decided by its workflow
(`orchestrator.jobs.JobSpec`, `orchestrator.workflows.WorkflowSpec`); this module only reads.

A referenced text answer is cut to `MAX_REFERENCED_TEXT_CHARS`, so a text field's length after
substitution is bounded at submission (`length_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from model.limits import (
    MAX_PROMPT_CHARS,
    MAX_REFERENCED_TEXT_CHARS,
    MAX_TRANSCRIPT_CHARS,
    MAX_VOICE_PROMPT_TEXT_CHARS,
)

__all__ = [
    "REFERENCE_TEXT_FIELDS",
    "REFERENCE_URI_FIELDS",
    "STEP_ID_RE",
    "Reference",
    "check_step_id",
    "length_problems",
    "scan_references",
]

STEP_ID_RE = re.compile(r"[a-z0-9_-]{1,32}")
REFERENCE_TEXT_FIELDS = ("prompt", "source_prompt", "transcript", "voice_prompt_text")
REFERENCE_URI_FIELDS = ("input_audio_uri", "voice_prompt_uri")
# Fields that are never a reference (a `{{` in them is refused).
_OTHER_FIELDS = ("video_uri", "sync_feature_uri")
TEXT_LIMITS: dict[str, int] = {
    "prompt": MAX_PROMPT_CHARS,
    "source_prompt": MAX_PROMPT_CHARS,
    "transcript": MAX_TRANSCRIPT_CHARS,
    "voice_prompt_text": MAX_VOICE_PROMPT_TEXT_CHARS,
}

_BRACES_RE = re.compile(r"\{\{([^{}]*)\}\}")
_BODY_RE = re.compile(r"\s*([a-z0-9_-]{1,32})\.(text|audio)\s*")
_FORM = "write {{<step>.text}} in a text field or {{<step>.audio}} as a whole audio URI (<step>: 1-32 of [a-z0-9_-])"


class Reference(NamedTuple):
    """One use of another step's output in a spec field."""

    field: str
    step: str
    kind: str  # "text" or "audio"
    token: str  # as written, e.g. "{{describe.text}}"


def check_step_id(value: Any) -> str:
    """Return `value` if it is a valid workflow step id, else raise `ValueError`."""
    if not isinstance(value, str) or not STEP_ID_RE.fullmatch(value):
        shown = repr(value) if isinstance(value, str) else f"of type {type(value).__name__}"
        raise ValueError(f"step id {_clip(shown)} is invalid: expected 1-32 characters from [a-z0-9_-]")
    return value


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _scan_field(field: str, value: str) -> tuple[list[Reference], list[str]]:
    refs: list[Reference] = []
    problems: list[str] = []
    for match in _BRACES_RE.finditer(value):
        body = _BODY_RE.fullmatch(match.group(1))
        if body is None:
            problems.append(f"{_clip(repr(match.group(0)))} is not a reference: {_FORM}")
        else:
            refs.append(Reference(field, body.group(1), body.group(2), match.group(0)))
    if "{{" in _BRACES_RE.sub("", value):
        problems.append(f"has '{{{{' without a matching '}}}}': {_FORM}")
    if field in REFERENCE_TEXT_FIELDS:
        problems += [
            f"{ref.token} is audio, which a text field cannot take: use {{{{{ref.step}.text}}}}"
            for ref in refs
            if ref.kind != "text"
        ]
    elif field in REFERENCE_URI_FIELDS:
        for ref in refs:
            if ref.kind != "audio":
                problems.append(f"{ref.token} is text, which an audio URI cannot take: use {{{{{ref.step}.audio}}}}")
            elif ref.token != value:
                problems.append(f"a reference must be the whole value, as in {{{{{ref.step}.audio}}}}")
    else:
        places = ", ".join((*REFERENCE_TEXT_FIELDS, *REFERENCE_URI_FIELDS))
        problems.append(f"cannot use another step's output (references are allowed in: {places})")
    return (refs, []) if not problems else ([], problems)


def scan_references(values: Mapping[str, Any]) -> tuple[list[Reference], list[tuple[str, str]]]:
    """The references in a spec's fields (its validated fields, or raw input), in field order, and
    one `(field, message)` per malformed or misplaced one. Non-string values are skipped."""
    refs: list[Reference] = []
    problems: list[tuple[str, str]] = []
    for field in (*REFERENCE_TEXT_FIELDS, *REFERENCE_URI_FIELDS, *_OTHER_FIELDS):
        value = values.get(field)
        if isinstance(value, str) and "{{" in value:
            found, messages = _scan_field(field, value)
            refs += found
            problems += [(field, message) for message in messages]
    return refs, problems


def length_problems(values: Mapping[str, Any], refs: list[Reference]) -> list[tuple[str, str]]:
    """`(field, message)` for each text field that, with every reference counted at
    `MAX_REFERENCED_TEXT_CHARS`, could exceed its limit after substitution."""
    problems: list[tuple[str, str]] = []
    for field, limit in TEXT_LIMITS.items():
        used = [ref for ref in refs if ref.field == field]
        if not used:
            continue
        longest = len(values[field]) - sum(len(ref.token) for ref in used) + len(used) * MAX_REFERENCED_TEXT_CHARS
        if longest > limit:
            problems.append(
                (
                    field,
                    f"could reach {longest} characters after substitution, over the limit of {limit} "
                    f"(each reference counts as {MAX_REFERENCED_TEXT_CHARS}, the most a text answer brings)",
                )
            )
    return problems
