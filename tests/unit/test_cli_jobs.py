"""Service-free parts of `audio-omni submit/status/cancel/results/dead-letters` and of what backs
`submit --out` (`run_jsonl`'s manifest reading, chunk keys, journal and limit learning): which path
the CLI takes, the refusals it makes before any request, and the journal's replay rules."""

from __future__ import annotations

import json

import pytest

from orchestrator.api_errors import ApiError
from orchestrator.cli import build_parser, main
from orchestrator.commands.jobs import uses_api
from orchestrator.sdk import Client, RetryPolicy
from orchestrator.sdk.run_state import Journal, chunk_key, learn_limit, read_manifest
from orchestrator.tenants import QuotaExceeded

T2A = {"task": "text_to_audio", "prompt": "rain"}


@pytest.fixture()
def api_env(monkeypatch):
    """The API path, pointed at a port nothing listens on: any request would fail loudly."""
    monkeypatch.setenv("AUDIO_OMNI_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AUDIO_OMNI_API_KEY", "aok_test")


def test_the_api_path_needs_both_variables(monkeypatch):
    monkeypatch.delenv("AUDIO_OMNI_API_URL", raising=False)
    monkeypatch.delenv("AUDIO_OMNI_API_KEY", raising=False)
    assert not uses_api()
    monkeypatch.setenv("AUDIO_OMNI_API_URL", "http://x")
    assert not uses_api()
    with pytest.raises(ValueError, match="set AUDIO_OMNI_API_KEY"):
        Client.from_env()
    monkeypatch.setenv("AUDIO_OMNI_API_KEY", "k")
    assert uses_api() and Client.from_env().base_url == "http://x"


def test_api_path_refuses_direct_only_flags_before_any_request(api_env, capsys):
    assert main(["submit", json.dumps(T2A), "--tenant", "acme"]) == 1
    assert "the API key decides the tenant" in capsys.readouterr().err
    assert main(["submit", json.dumps(T2A), "--batch-id", "b1"]) == 1
    assert "--idempotency-key" in capsys.readouterr().err
    assert main(["submit", json.dumps(T2A), "--out", "dir"]) == 1
    assert "give a .jsonl file" in capsys.readouterr().err
    assert main(["submit", "{not json"]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_parsers_of_the_job_commands():
    parser = build_parser()
    args = parser.parse_args(["submit", "m.jsonl", "--idempotency-key", "k", "--out", "o"])
    assert args.idempotency_key == "k" and str(args.out) == "o"
    args = parser.parse_args(["dead-letters", "--redis-prefix", "p:", "list", "--limit", "5", "--json"])
    assert (args.action, args.limit, args.json, args.redis_prefix) == ("list", 5, True, "p:")
    assert parser.parse_args(["dead-letters", "requeue", "j1"]).job_id == "j1"
    with pytest.raises(SystemExit):
        parser.parse_args(["dead-letters"])  # an action is required


def test_client_settings_are_checked():
    with pytest.raises(ValueError, match="base_url"):
        Client("ftp://x", "k")
    with pytest.raises(ValueError, match="api_key"):
        Client("http://x", "a key")
    with pytest.raises(ValueError, match="timeout_s"):
        Client("http://x", "k", timeout_s=0)
    client = Client("http://x/", "k", max_retries=2, retry=RetryPolicy(initial_s=1.5))
    assert client.base_url == "http://x" and client.retry.max_retries == 2 and client.retry.initial_s == 1.5
    client.close()


# --------------------------------------------------------------------------- run_jsonl's manifest and journal


def test_read_manifest_reports_every_bad_line_with_its_number(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            [
                json.dumps(T2A),
                "# a comment",
                "",
                "{oops",
                json.dumps([1]),
                json.dumps({"task": "text_to_audio"}),
                json.dumps({**T2A, "reasoning": True}),
                json.dumps({"steps": [{"id": "a", **T2A}, {"id": "b", **T2A}, {"id": "c", **T2A}]}),
            ]
        )
    )
    with pytest.raises(ValueError) as bad:
        read_manifest(manifest)
    message = str(bad.value)
    assert "3 invalid line(s); nothing was submitted" in message
    assert f"{manifest}:4: not valid JSON" in message and f"{manifest}:5: expected a JSON object" in message
    assert f"{manifest}:6: prompt" in message
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(manifest.read_text().splitlines()[i] for i in (0, 1, 6, 7)))
    entries = read_manifest(good)
    assert [(e.line, e.jobs) for e in entries] == [(1, 1), (3, 2), (4, 3)]  # a chain is 2 jobs, a workflow its steps
    (tmp_path / "empty.jsonl").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no jobs"):
        read_manifest(tmp_path / "empty.jsonl")


def test_chunk_keys_name_the_manifest_and_its_lines(tmp_path):
    manifest = tmp_path / "m.jsonl"
    key = chunk_key(manifest, "abc", [1, 2, 3])
    assert key == chunk_key(manifest, "abc", [1, 2, 3]) and key.startswith("rj-") and len(key) <= 200
    assert key != chunk_key(manifest, "abd", [1, 2, 3])  # other content
    assert key != chunk_key(manifest, "abc", [1, 2])  # other lines
    assert key != chunk_key(tmp_path / "other.jsonl", "abc", [1, 2, 3])  # another file


def test_limits_are_learnt_from_the_api_s_own_messages():
    quota = QuotaExceeded("acme", in_flight=38, requested=25, limit=40)
    assert learn_limit(ApiError(429, "quota_exceeded", str(quota))) == (40, 38)
    too_large = "the batch has 60 jobs but this tenant may have at most 40 in flight; split it"
    assert learn_limit(ApiError(413, "too_large", too_large)) == (40, None)
    assert learn_limit(ApiError(429, "rate_limited", "slow down")) == (None, None)


def test_the_journal_replays_and_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "run_state.jsonl"
    journal = Journal(path)
    journal.write({"op": "manifest", "path": "m", "sha256": "s"})
    journal.write({"op": "chunk", "key": "k1", "lines": [1, 2]})
    journal.write({"op": "refused", "key": "k1"})
    journal.write({"op": "chunk", "key": "k2", "lines": [1]})
    journal.write({"op": "batch", "key": "k2", "batch_id": "b", "jobs": {"1": ["b-0", None]}})
    journal.write({"op": "chunk", "key": "k1", "lines": [1, 2]})  # the same lines again: no longer refused
    journal.write({"op": "done", "line": 1, "job_id": "b-0", "status": "succeeded", "result_path": "results/x"})
    journal.close()
    with path.open("a") as handle:
        handle.write('{"op": "done", "line": 2, "job_')  # a crash mid-write
    again = Journal(path)
    state = again.state
    again.close()
    assert again.header == {"op": "manifest", "path": "m", "sha256": "s"}
    assert state.pending_chunks() == ["k1"] and state.batches == {"k2": "b"}
    assert state.jobs == {1: ("b-0", None, "b")} and list(state.done) == [1]
    assert state.done[1].result_path == "results/x"
