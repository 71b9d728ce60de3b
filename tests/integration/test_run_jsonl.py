"""`run_jsonl` (orchestrator.sdk.bulk) end to end: a 200-line manifest through a real API process
(`audio-omni api`, uvicorn, SIGKILLed mid-run and started again on the same port), real Redis, the
moto S3 endpoint, and a real engine (`Engine` over `RedisSource` and `InProcessPools` on the `tiny`
preset: understanding jobs, the cheapest there are). The tenant may have 40 jobs in flight, so the
run must chunk under the quota; the run itself is also stopped half-way once and resumed.

Checked: every line finished once, in manifest order in results.jsonl with its custom_id and
metadata; one job per line in the store (no chunk queued twice, across the client's stop and the
API's restart); every result downloaded exactly once (one `done` per line in the journal, one file
per line, byte-identical to the stored object)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.queue import JobQueue
from orchestrator.sdk import Client, RetryPolicy, WaitTimeout, run_jsonl
from orchestrator.sdk.bulk import RESULTS_DIR, STATE_FILE
from orchestrator.tenants import TenantLimits, TenantStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LINES = 200
QUOTA = 40
REPO_ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiProcess:
    """`audio-omni api` as a subprocess on a fixed port: start, kill -9, start again."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "orchestrator.cli", "api", "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture()
def engine(redis_url, redis_prefix, s3_endpoint, s3_bucket):
    """A real engine on the test's queue and bucket, in a thread (no Ray: InProcessPools)."""
    from orchestrator.engine import Engine, EngineSettings
    from orchestrator.sources import RedisSource
    from orchestrator.storage import S3Storage, input_resolver_from_settings, make_s3_client
    from workers.app import InProcessPools
    from workers.settings import WorkerSettings

    settings = WorkerSettings(preset="tiny", understand_max_new_tokens=1)
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30)
    storage = S3Storage(
        s3_bucket, client=make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    )
    engine = Engine(
        RedisSource(queue, "test-engine"),
        storage,
        input_resolver_from_settings(storage),
        InProcessPools.build(settings),
        settings.load_config(),
        EngineSettings(claim_block_s=0.1, max_in_flight=4),
    )
    thread = threading.Thread(target=engine.run, name="engine", daemon=True)
    thread.start()
    yield storage
    engine.stop()
    thread.join(timeout=60)
    queue.close()


def test_run_jsonl_survives_an_api_restart_and_its_own_stop(
    engine, redis_url, redis_prefix, s3_endpoint, s3_bucket, tmp_path
):
    storage = engine
    tenants = TenantStore(redis_url, prefix=redis_prefix)
    tenants.create("acme", TenantLimits(max_in_flight=QUOTA))
    key = tenants.issue_key("acme")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": redis_prefix,
        "S3_BUCKET": s3_bucket,
        "S3_ENDPOINT_URL": s3_endpoint,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
        "AUDIO_OMNI_LOG_LEVEL": "WARNING",
    }
    api = ApiProcess(env, _port(), tmp_path / "api.log")
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {"task": "understand", "prompt": f"Question number {i}?", "custom_id": f"q{i}", "metadata": {"i": i}}
        for i in range(LINES)
    ]
    manifest.write_text("# a comment line, skipped\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    state = out / STATE_FILE
    policy = RetryPolicy(max_retries=60, initial_s=0.1, max_wait_s=1.0, jitter_s=0.1)

    def done_lines() -> int:
        if not state.exists():
            return 0
        return sum(1 for raw in state.read_text().splitlines() if '"op":"done"' in raw)

    api.start()
    try:
        with Client(api.url, key, retry=policy) as client:
            # 1. The run stops early (as a crashed or interrupted client would) ...
            with pytest.raises(WaitTimeout, match="run it again with the same out_dir"):
                run_jsonl(client, manifest, out, chunk_size=25, poll_s=0.2, timeout_s=4, progress=False)
            first = done_lines()
            assert first < LINES

            # 2. ... and is run again: the API is SIGKILLed and restarted on its port meanwhile.
            def restart_midway() -> None:
                deadline = time.monotonic() + 300
                while done_lines() < first + 40 and time.monotonic() < deadline:
                    time.sleep(0.05)
                api.kill()
                time.sleep(1.0)  # the run meets refused connections, then a fresh process
                api.start()

            restarter = threading.Thread(target=restart_midway)
            restarter.start()
            summary = run_jsonl(client, manifest, out, chunk_size=25, poll_s=0.2, timeout_s=400, progress=False)
            restarter.join()
            stored_jobs = list(client.iter_jobs())
    finally:
        api.stop()
        tenants.close()

    assert summary.total == LINES and summary.counts == {"succeeded": LINES}
    assert summary.downloaded == LINES - first  # this call fetched only what the stopped one had not

    # one job per line in the store: no chunk was queued twice
    assert len(stored_jobs) == LINES and len({j.job_id for j in stored_jobs}) == LINES

    # results.jsonl: one line per manifest line, in order, echoing custom_id and metadata
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(LINES)]
    assert [r["metadata"] for r in results] == [{"i": i} for i in range(LINES)]
    assert [r["line"] for r in results] == list(range(2, LINES + 2))  # the comment is line 1
    assert all(r["status"] == "succeeded" and isinstance(r["text"], str) and r["error"] is None for r in results)

    # every result downloaded exactly once, byte-identical to the stored object
    journal = [json.loads(raw) for raw in state.read_text().splitlines()]
    done = [r["line"] for r in journal if r["op"] == "done"]
    assert sorted(done) == [r["line"] for r in results]  # each line finished once across both runs
    files = sorted(p.name for p in (out / RESULTS_DIR).iterdir())
    assert len(files) == LINES and not [f for f in files if f.startswith(".")]
    records = {j.job_id: j for j in stored_jobs}
    for r in results[:: LINES // 20]:
        path = out / r["result_path"]
        record_uri = storage.key_of(_result_uri(redis_url, redis_prefix, r["job_id"]))
        assert path.read_bytes() == storage.get(record_uri)
        assert records[r["job_id"]].text == r["text"]
    # the chunks fit the quota: refused ones were split, never queued in part
    sent = {r["key"]: len(r["lines"]) for r in journal if r["op"] == "chunk"}
    batches = [r for r in journal if r["op"] == "batch"]
    assert all(sent[b["key"]] <= QUOTA for b in batches)
    assert sum(len(b["jobs"]) for b in batches) == LINES


def _result_uri(redis_url: str, prefix: str, job_id: str) -> str:
    with JobQueue(redis_url, prefix=prefix) as queue:
        record = queue.get(job_id)
        assert record is not None and record.result_uri
        return record.result_uri
