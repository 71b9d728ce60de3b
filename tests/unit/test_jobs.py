"""The job schema, the Redis key builder, the error mapping and the typed settings (no services)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from orchestrator.errors import (
    ErrorCode,
    InvalidJobSpec,
    JobCancelled,
    JobNotFound,
    LeaseLost,
    Outcome,
    PermanentError,
    RetryableError,
    error_code_of,
    outcome_of,
)
from orchestrator.job_fields import MAX_METADATA_BYTES, TASK_EXAMPLES
from orchestrator.jobs import (
    DEFAULT_CFG_SCALE,
    DEFAULT_DURATION_S,
    DEFAULT_STEPS,
    FINAL_STATUSES,
    MAX_SPEC_JSON_BYTES,
    EditOp,
    JobSpec,
    JobStatus,
    OutputFormat,
    Priority,
    TaskName,
    batch_job_id,
    derive_seed,
    new_batch_id,
    parse_spec,
    parse_spec_json,
    validate_id,
)
from orchestrator.keys import RedisKeys
from orchestrator.settings import Settings

T2A_SPEC = {"task": "text_to_audio", "prompt": "rain on a tin roof"}


def errors_of(data) -> dict[str, str]:
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec(data)
    return dict(err.value.errors)


# --------------------------------------------------------------------------- JobSpec


def test_minimal_spec_and_defaults():
    spec = JobSpec.model_validate({"task": "text_to_audio", "prompt": "rain on a tin roof"})
    assert spec.task is TaskName.TEXT_TO_AUDIO
    assert (spec.duration_s, spec.steps, spec.cfg_scale) == (
        DEFAULT_DURATION_S,
        DEFAULT_STEPS,
        DEFAULT_CFG_SCALE,
    )
    assert (spec.duration_s, spec.steps, spec.cfg_scale) == (10.0, 100, 7.0)
    assert spec.seed is None and spec.output_format is OutputFormat.WAV
    assert spec.reasoning is False and spec.workflow is None and spec.chain is None
    assert (spec.tenant, spec.priority, spec.idempotency_key, spec.batch_id) == (
        "default", Priority.NORMAL, None, None,
    )  # fmt: skip
    assert spec.generates_audio


def test_spec_json_round_trip_is_compact_and_lossless():
    spec = JobSpec(task="edit", op="style_transfer", prompt="a violin", source_prompt="a piano",
                   input_audio_uri="s3://bucket/in.wav", seed=7, output_format="flac")  # fmt: skip
    raw = spec.to_json()
    assert "voice_prompt_uri" not in raw  # unset optionals are left out
    assert parse_spec_json(raw) == spec
    assert json.loads(raw)["op"] == "style_transfer"


@pytest.mark.parametrize(
    "data",
    [
        {"task": "understand", "prompt": "What instrument is this?", "input_audio_uri": "s3://b/a.wav"},
        {"task": "understand", "prompt": "Describe the video.", "video_uri": "/data/in/v.mp4"},
        {"task": "text_to_music", "prompt": "calm lo-fi beat", "duration_s": 30.0},
        {"task": "tts", "transcript": "Hello, welcome to Audio-Omni."},
        {"task": "tts", "transcript": "Hi.", "voice_prompt_uri": "s3://b/v.wav", "voice_prompt_text": "Ref."},
        {"task": "video_to_audio", "video_uri": "s3://b/v.mp4"},
        {
            "task": "video_to_music",
            "video_uri": "s3://b/v.mp4",
            "prompt": "epic",
            "sync_feature_uri": "s3://b/f.npy",
        },
        {"task": "edit", "op": "add", "prompt": "dog barking", "input_audio_uri": "file:///data/in/a.wav"},
        {"task": "edit", "op": "remove", "prompt": "wind noise", "input_audio_uri": "in/a.wav"},
        {"task": "edit", "op": "extract", "prompt": "vocals", "input_audio_uri": "s3://b/a.wav"},
        {"task": "voice_conversion", "transcript": "Good morning.", "voice_prompt_uri": "s3://b/v.wav"},
        {"task": "text_to_audio", "prompt": "thunder", "priority": "high", "seed": 0},
    ],
)
def test_valid_specs_per_task(data):
    spec = parse_spec(data)
    assert spec.task.value == data["task"]


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"task": "text_to_audio"}, "prompt", "required for task 'text_to_audio'"),
        ({"task": "text_to_audio", "prompt": "   "}, "prompt", "required"),
        ({"task": "tts"}, "transcript", "required for task 'tts'"),
        ({"task": "video_to_audio"}, "video_uri", "required"),
        ({"task": "edit", "prompt": "x", "input_audio_uri": "s3://b/a"}, "op", "required for task 'edit'"),
        ({"task": "edit", "op": "add", "prompt": "x"}, "input_audio_uri", "required"),
        (
            {"task": "edit", "op": "style_transfer", "prompt": "x", "input_audio_uri": "s3://b/a"},
            "source_prompt",
            "required",
        ),
        ({"task": "edit", "op": "louder", "prompt": "x", "input_audio_uri": "s3://b/a"}, "op", "'add'"),
        ({"task": "voice_conversion", "transcript": "hi"}, "voice_prompt_uri", "required"),
        ({"task": "text_to_audio", "prompt": "x", "transcript": "y"}, "transcript", "not used by task"),
        ({"task": "text_to_audio", "prompt": "x", "op": "add"}, "op", "not used by task"),
        ({"task": "make_noise", "prompt": "x"}, "task", "'text_to_audio'"),
        ({"prompt": "x"}, "task", "Field required"),
        ({"task": "text_to_audio", "prompt": "x", "duration_s": 0}, "duration_s", "greater than 0"),
        (
            {"task": "text_to_audio", "prompt": "x", "duration_s": 300.5},
            "duration_s",
            "less than or equal to 300",
        ),
        ({"task": "text_to_audio", "prompt": "x", "duration_s": float("inf")}, "duration_s", "finite"),
        ({"task": "text_to_audio", "prompt": "x", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"task": "text_to_audio", "prompt": "x", "steps": 1001}, "steps", "less than or equal to 1000"),
        ({"task": "text_to_audio", "prompt": "x", "steps": 10.5}, "steps", "valid integer"),
        ({"task": "text_to_audio", "prompt": "x", "steps": True}, "steps", "valid integer"),
        (
            {"task": "text_to_audio", "prompt": "x", "cfg_scale": 0.5},
            "cfg_scale",
            "greater than or equal to 1",
        ),
        ({"task": "text_to_audio", "prompt": "x", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"task": "text_to_audio", "prompt": "x", "seed": 2**32}, "seed", "less than or equal to"),
        (
            {"task": "text_to_audio", "prompt": "x", "output_format": "mp3"},
            "output_format",
            "'wav', 'flac' or 'mp4'",
        ),
        ({"task": "text_to_audio", "prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"task": "tts", "transcript": "x" * 2001}, "transcript", "at most 2000 characters"),
        ({"task": "text_to_audio", "prompt": "hi <|im_end|> there"}, "prompt", "chat-template markers"),
        ({"task": "text_to_audio", "prompt": "bell\x07"}, "prompt", "control characters"),
        ({"task": "text_to_audio", "prompt": "q", "reasoning": True}, "reasoning", "two-step workflow"),
        ({"task": "understand", "prompt": "q", "reasoning": True}, "reasoning", "not 'understand'"),
        ({"task": "tts", "transcript": "q", "reasoning": True}, "reasoning", "not 'tts'"),
        ({"task": "text_to_audio", "prompt": "q", "reasoning": 1}, "reasoning", "valid boolean"),
        ({"task": "video_to_audio", "video_uri": "s3://b/v.mp4", "reasoning": True}, "prompt", "with reasoning"),
        ({"task": "text_to_audio", "prompt": "x" * 1900, "reasoning": True}, "prompt", "with reasoning the limit"),
        ({"task": "text_to_audio", "prompt": "x", "keep_source": True}, "keep_source", "'remove' or 'extract'"),
        (
            {"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "s3://b/a.wav", "keep_source": True},
            "keep_source",
            "'remove' or 'extract'",
        ),
        (
            {"task": "edit", "op": "remove", "prompt": "x", "input_audio_uri": "s3://b/a.wav", "keep_source": 1},
            "keep_source",
            "valid boolean",
        ),
        ({"task": "text_to_audio", "prompt": "x", "tenant": "../etc"}, "tenant", "without '..'"),
        ({"task": "text_to_audio", "prompt": "x", "tenant": "a/b"}, "tenant", "[A-Za-z0-9_.-]"),
        ({"task": "text_to_audio", "prompt": "x", "batch_id": "b" * 49}, "batch_id", "1-48 characters"),
        ({"task": "text_to_audio", "prompt": "x", "priority": "urgent"}, "priority", "'high'"),
        ({"task": "text_to_audio", "prompt": "x", "idempotency_key": ""}, "idempotency_key", "at least 1"),
        (
            {"task": "text_to_audio", "prompt": "x", "promt": "typo"},
            "promt",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_invalid_specs_name_the_field(data, field, needle):
    errors = errors_of(data)
    assert field in errors, errors
    assert needle in errors[field]


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("http://example.com/a.wav", "scheme 'http' is not supported"),
        ("gs://bucket/a.wav", "scheme 'gs' is not supported"),
        ("s3://bucket", "s3://bucket/key"),
        ("s3:///key", "s3://bucket/key"),
        ("s3://bucket/../other/a.wav", "'..' path segments"),
        ("/data/in/../../etc/passwd", "'..' path segments"),
        ("s3://bucket/a b.wav", "whitespace"),
        ("x" * 2049, "at most 2048 characters"),
    ],
)
def test_obviously_bad_uris_are_refused(uri, needle):
    errors = errors_of({"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": uri})
    assert needle in errors["input_audio_uri"]


def test_uri_that_only_looks_odd_is_left_to_storage():
    # Tenant prefixes and bucket policies are storage's decision; the schema only checks the shape.
    spec = parse_spec({"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "s3://other-tenant/a.wav"})
    assert spec.input_audio_uri == "s3://other-tenant/a.wav"
    assert parse_spec({"task": "edit", "op": "add", "prompt": "x", "input_audio_uri": "C:/in/a.wav"})


def test_all_errors_are_reported_at_once_in_a_readable_message():
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec({"task": "text_to_audio", "steps": 0, "cfg_scale": 99})
    assert [f for f, _ in err.value.errors] == ["prompt", "steps", "cfg_scale"]
    text = str(err.value)
    assert text.startswith("invalid job spec: prompt: required for task 'text_to_audio'; steps: ")
    assert isinstance(err.value, PermanentError) and isinstance(err.value, ValueError)


def test_pydantic_error_is_per_field_too():
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate({"task": "tts", "steps": 0})
    assert {e["loc"] for e in err.value.errors()} == {("transcript",), ("steps",)}


def test_parse_spec_json_reports_malformed_and_oversized_input():
    with pytest.raises(InvalidJobSpec, match="spec is not valid JSON"):
        parse_spec_json('{"task": "tts", ')
    with pytest.raises(InvalidJobSpec, match="Input should be an object"):
        parse_spec_json("[1, 2]")
    with pytest.raises(InvalidJobSpec, match=f"over the limit of {MAX_SPEC_JSON_BYTES}"):
        parse_spec_json(" " * (MAX_SPEC_JSON_BYTES + 1))
    with pytest.raises(InvalidJobSpec, match="expected a JSON object"):
        parse_spec(["task", "tts"])  # type: ignore[arg-type]


def test_spec_is_immutable():
    spec = parse_spec({"task": "tts", "transcript": "hi"})
    with pytest.raises(ValidationError):
        spec.steps = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- seeds and ids


def test_seed_is_derived_deterministically_from_the_job_id():
    assert derive_seed("job-1") == derive_seed("job-1")
    seeds = {derive_seed(f"job-{i}") for i in range(2000)}
    assert len(seeds) > 1990  # distinct ids, (almost surely) distinct seeds
    assert all(0 <= s <= 2**32 - 1 for s in seeds)
    spec = parse_spec({"task": "tts", "transcript": "hi"})
    assert spec.effective_seed("job-1") == derive_seed("job-1")
    assert parse_spec({"task": "tts", "transcript": "hi", "seed": 5}).effective_seed("job-1") == 5


def test_ids():
    bid = new_batch_id()
    assert validate_id(bid, max_chars=48) == bid
    assert batch_job_id(bid, 9999999) == f"{bid}-9999999"
    assert validate_id(batch_job_id(bid, 10**15)) is not None  # fits the 64-character id rule
    for bad in ["", ".hidden", "-flag", "a/b", "a..b", "x" * 65, 5]:
        with pytest.raises(ValueError, match="is invalid"):
            validate_id(bad, "job_id")


def test_status_enum():
    assert JobStatus("queued") is JobStatus.QUEUED and JobStatus.DEAD == "dead"
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "cancelled", "dead"]
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD} == FINAL_STATUSES
    assert not JobStatus.RUNNING.is_final and JobStatus.CANCELLED.is_final
    assert [op.value for op in EditOp] == ["add", "remove", "extract", "style_transfer"]


# --------------------------------------------------------------------------- keys


def test_every_key_starts_with_the_prefix():
    k = RedisKeys("tenantA:")
    keys = [
        *k.streams(), k.delayed("low"), k.autoclaim_cursor("high"), k.claim_seq, k.dead_letter,
        k.job("j1"), k.batch("b1"), k.batch_failures("b1"), k.idempotency("t", "key"),
        k.tenant("t"), k.api_key("ab" * 32), k.batch_jobs("b1"), k.tenant_jobs("t"), k.tenant_batches("t"),
        k.webhook_events,
    ]  # fmt: skip
    assert all(key.startswith("tenantA:") for key in keys)
    assert len(set(keys)) == len(keys)
    assert k.job("j1") == k.job_base + "j1" and k.batch("b1") == k.batch_base + "b1"
    assert k.delayed("low") == k.delayed_base + "low"
    assert k.batch_jobs("b1") == k.batch_jobs_base + "b1" and k.tenant_jobs("t") == k.tenant_jobs_base + "t"
    assert k.tenant_batches("t") == k.tenant_batches_base + "t"
    assert k.webhook_events == "tenantA:webhooks:events"  # the contract's key (the dispatcher reads it)
    assert k.streams() == [k.stream("high"), k.stream("normal"), k.stream("low")]
    with pytest.raises(ValueError):
        k.stream("urgent")
    for bad in ["", "a b", "pre*", "x" * 101]:
        with pytest.raises(ValueError, match="prefix"):
            RedisKeys(bad)


# --------------------------------------------------------------------------- errors


def test_outcomes_of_exceptions():
    assert outcome_of(RetryableError("storage throttled")) is Outcome.RETRY
    assert outcome_of(RuntimeError("unexpected")) is Outcome.RETRY  # bounded retries, then dead
    assert outcome_of(PermanentError("bad input")) is Outcome.FAILED
    assert outcome_of(InvalidJobSpec([("prompt", "required")])) is Outcome.FAILED
    assert outcome_of(JobCancelled("j1")) is Outcome.CANCELLED
    assert outcome_of(LeaseLost("j1", "ack")) is Outcome.ABANDONED
    # One vocabulary: the engine's JobResult.outcome and the job statuses use the same words.
    assert {o.value for o in Outcome} == {"succeeded", "failed", "retry", "cancelled", "abandoned"}
    for final in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.CANCELLED):
        assert JobStatus(final.value).is_final
    assert RetryableError("x", retry_after_s=3).retry_after_s == 3
    with pytest.raises(ValueError):
        RetryableError("x", retry_after_s=-1)
    assert str(JobNotFound("j1")) == "job 'j1' not found" and isinstance(JobNotFound("j1"), KeyError)


# --------------------------------------------------------------------------- settings


def test_settings_from_env_and_flags(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("AUDIO_OMNI_LEASE_S", "45")
    monkeypatch.setenv("S3_BUCKET", "results")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("AUDIO_OMNI_ALLOWED_INPUT_S3", "shared-inputs, s3://media/{tenant}/")
    s = Settings.from_env(max_attempts=3, lease_s=None)  # None = flag not given
    assert s.redis_url == "redis://cache:6380/2" and s.lease_s == 45.0 and s.max_attempts == 3
    assert s.effective_renew_interval_s == 15.0
    assert s.queue_kwargs()["lease_s"] == 45.0 and s.queue_kwargs()["prefix"] == "aomni:"
    kw = s.storage_kwargs(embedded=False)
    assert kw["bucket"] == "results" and kw["secret_access_key"] == "hunter2"
    assert kw["allowed_input_s3"] == ["shared-inputs", "s3://media/{tenant}/"]
    assert "hunter2" not in repr(s)  # credentials are not printed
    assert Settings.from_env(redis_url="redis://other:1/0").redis_url == "redis://other:1/0"


def test_settings_defaults_and_embedded_mode(monkeypatch, tmp_path):
    for name in ("REDIS_URL", "S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(output_root=tmp_path)
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.lease_s == 60.0
    assert s.storage_kwargs(embedded=True)["local_root"] == tmp_path
    with pytest.raises(ValueError, match="s3_bucket"):
        s.storage_kwargs(embedded=False)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"backoff_base_s": 10, "backoff_max_s": 5},
            r"backoff_base_s \(10.0\) must not exceed backoff_max_s \(5.0\)",
        ),
        (
            {"lease_s": 3, "renew_interval_s": 9},
            r"renew_interval_s \(9.0\) must be less than lease_s \(3.0\)",
        ),
        ({"s3_access_key_id": "AKIA"}, "must be given together"),
        ({"lease_s": 0}, "greater than 0"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
        ({"redis_url": "http://x"}, "redis://"),
        ({"redis_prefix": "a b"}, "prefix"),
        ({"s3_endpoint_url": "minio:9000"}, "http://"),
    ],
)
def test_settings_cross_field_checks(monkeypatch, kwargs, needle):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=needle):
        Settings(**kwargs)


@pytest.mark.parametrize("op", ["remove", "extract"])
def test_keep_source_is_accepted_for_remove_and_extract(op):
    spec = JobSpec.model_validate(
        {"task": "edit", "op": op, "prompt": "dog", "input_audio_uri": "s3://b/a.wav", "keep_source": True}
    )
    assert spec.keep_source is True


def test_a_spec_stored_with_reasoning_false_still_parses_and_a_stored_chain_is_refused():
    stored = '{"task": "text_to_audio", "prompt": "rain", "reasoning": false}'
    assert parse_spec_json(stored) == parse_spec({"task": "text_to_audio", "prompt": "rain"})
    with pytest.raises(InvalidJobSpec, match="reasoning: true makes the job a two-step workflow"):
        parse_spec_json('{"task": "text_to_audio", "prompt": "rain", "reasoning": true}')


def test_specs_stored_before_workflows_parse_and_plain_specs_store_no_link():
    stored = (
        '{"task":"edit","op":"remove","prompt":"hum","input_audio_uri":"s3://b/a.wav","duration_s":10.0,'
        '"steps":100,"cfg_scale":7.0,"output_format":"wav","keep_source":false,"tenant":"t1","priority":"low"}'
    )
    spec = parse_spec_json(stored)
    assert (spec.workflow, spec.reasoning, spec.chain, spec.tenant) == (None, False, None, "t1")
    assert "workflow" not in json.loads(spec.to_json())
    assert parse_spec_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"task": "text_to_audio", "prompt": "a {{b}} c"}, "prompt", "'{{b}}' is not a reference"),
        ({"task": "tts", "transcript": "{{x.text}}"}, "transcript", "only a workflow step can do"),
        (
            {"task": "video_to_audio", "video_uri": "{{x.audio}}"},
            "video_uri",
            "cannot use another step's output",
        ),
    ],
)
def test_references_and_braces_in_a_plain_job_are_refused(data, field, needle):
    assert needle in errors_of(data)[field]


def test_error_codes_of_the_exceptions_work_code_raises():
    from orchestrator.audio_io import BadAudio
    from orchestrator.engine import _PoolError
    from orchestrator.storage.errors import (
        ChecksumMismatch,
        InputNotAllowed,
        InputNotFound,
        InputTooLarge,
        ObjectNotFound,
        StorageUnavailable,
    )
    from orchestrator.video_io import BadVideo

    expected = {
        InvalidJobSpec([("prompt", "required")]): "invalid_spec",
        InputNotFound("s3://b/k.wav"): "input_not_found",
        InputNotAllowed("s3://b/k.wav", "not this tenant's bucket"): "input_not_allowed",
        InputTooLarge("s3://b/k.wav", 10, 5): "input_too_large",
        ChecksumMismatch("k", "aa", "bb"): "input_corrupt",
        ObjectNotFound("k"): "storage_error",
        BadAudio("input audio", "lasts 400 s; the limit is 300 s"): "bad_audio",
        BadVideo("input video", "has no video stream"): "bad_video",
        PermanentError("the thinker refused the prompt"): "invalid_input",
        StorageUnavailable("throttled"): "storage_unavailable",
        _PoolError("generate failed: replica died"): "worker_unavailable",
        RetryableError("busy"): "internal",
        RuntimeError("a bug"): "internal",
        MemoryError(): "internal",
        JobCancelled("j1"): "cancelled",
    }
    for exc, code in expected.items():
        assert error_code_of(exc) == code, exc
        assert isinstance(error_code_of(exc), ErrorCode)
    # The codes the queue's scripts write themselves are in the one vocabulary too.
    assert {"retries_exhausted", "cancelled", "dependency_failed"} <= {c.value for c in ErrorCode}


# --------------------------------------------------------------------------- the client's own fields


def test_metadata_custom_id_and_webhook_url_are_stored_and_echoed_verbatim():
    data = {
        **T2A_SPEC,
        "metadata": {"project": "trailer", "take": 3, "tags": ["a", "b"], "nested": {"ok": True}},
        "custom_id": "row 17 / take 3",
        "webhook_url": "https://hooks.example.com/audio?x=1",
    }
    spec = parse_spec(data)
    again = parse_spec_json(spec.to_json())
    assert again == spec and again.metadata == data["metadata"] and again.custom_id == "row 17 / take 3"
    assert again.webhook_url == data["webhook_url"]
    assert "metadata" not in parse_spec(T2A_SPEC).to_json()  # unset: nothing stored


@pytest.mark.parametrize(
    ("extra", "field", "needle"),
    [
        ({"metadata": {f"k{i}": i for i in range(17)}}, "metadata", "at most 16"),
        ({"metadata": {"": 1}}, "metadata", "1-64 characters"),
        ({"metadata": {"k" * 65: 1}}, "metadata", "1-64 characters"),
        ({"metadata": {"k": "x" * MAX_METADATA_BYTES}}, "metadata", "bytes as JSON"),
        ({"metadata": ["not", "an", "object"]}, "metadata", "dictionary"),
        ({"custom_id": ""}, "custom_id", "at least 1"),
        ({"custom_id": "x" * 65}, "custom_id", "at most 64"),
        ({"custom_id": "a\x07b"}, "custom_id", "control characters"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", "http:// or https://"),
        ({"webhook_url": "https:///no-host"}, "webhook_url", "must name a host"),
        ({"webhook_url": "https://user:pw@example.com/h"}, "webhook_url", "credentials"),
        ({"webhook_url": "https://example.com/h#frag"}, "webhook_url", "fragment"),
        ({"webhook_url": "https://example.com:99999/h"}, "webhook_url", "not a valid URL"),
        ({"webhook_url": "https://exa mple.com/h"}, "webhook_url", "whitespace"),
        ({"webhook_url": "https://example.com/" + "a" * 2048}, "webhook_url", "at most 2048"),
    ],
)
def test_client_fields_are_checked_against_their_limits(extra, field, needle):
    errors = errors_of({**T2A_SPEC, **extra})
    assert set(errors) == {field} and needle in errors[field], errors


def test_every_task_has_a_valid_example_in_the_schema():
    schema = JobSpec.model_json_schema()
    assert schema["examples"] == TASK_EXAMPLES
    assert {e["task"] for e in TASK_EXAMPLES} == {t.value for t in TaskName}
    for example in TASK_EXAMPLES:
        parse_spec(example)  # every example is a runnable job
    properties = schema["properties"]
    undocumented = [name for name, prop in properties.items() if not prop.get("description")]
    assert undocumented == [], undocumented
