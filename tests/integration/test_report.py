"""The batch report, every way in, and its Chromium check.

- Embedded: the demo manifest (examples/demo.jsonl, inputs made by examples/make_inputs.py) runs
  through the engine on the tiny preset (InProcessPools, a ManifestSource, a local folder), and the
  report `audio-omni batch` writes (`batch._write_report`) loads in headless Chromium with no
  console error, every player decodes its embedded source, every spectrogram shows, and the
  screenshot is not empty.
- Service: a batch in Redis + the S3 endpoint, run by an engine thread, reported by
  `audio-omni report BATCH --out DIR` and by `GET /v1/batches/{id}/report` (tenant-scoped).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from headless_chromium import CHROMIUM, SKIP_REASON, chromium_page
from PIL import Image

from orchestrator.api import create_app, serve_in_thread
from orchestrator.cli import main
from orchestrator.commands.batch import _write_report
from orchestrator.engine import Engine, EngineSettings
from orchestrator.queue import JobQueue
from orchestrator.sources import ManifestSource, RedisSource
from orchestrator.storage import (
    InputPolicy,
    InputResolver,
    LocalStorage,
    S3Storage,
    input_resolver_from_settings,
    make_s3_client,
)
from orchestrator.tenants import TenantStore
from workers.app import InProcessPools
from workers.settings import WorkerSettings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKERS = WorkerSettings(preset="tiny", understand_max_new_tokens=4)
# Every player: its source, whether its metadata loaded (it decoded), its error, its duration.
PLAYERS_JS = """(async () => {
  const players = [...document.querySelectorAll('audio')];
  await Promise.all(players.map(a => a.readyState >= 1 || a.error ? null : new Promise(done => {
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
    setTimeout(done, 20000);
  })));
  return players.map(a => ({src: (a.currentSrc || a.src || '').slice(0, 40), ready: a.readyState,
                           error: a.error && a.error.code, duration: a.duration}));
})()"""
IMAGES_JS = "[...document.images].map(i => ({complete: i.complete, width: i.naturalWidth}))"


@pytest.fixture(scope="module")
def pools() -> InProcessPools:
    return InProcessPools.build(WORKERS)


def check_in_chromium(url: str, *, players: int) -> bytes:
    """Load the page; no console error or failed load, `players` players that all decoded, every
    image shown; the screenshot."""
    with chromium_page() as page:
        page.load(url)
        found = page.evaluate(PLAYERS_JS)
        images = page.evaluate(IMAGES_JS)
        png = page.screenshot()
        problems = page.problems()
        urls = page.requested_urls()
    assert problems == [], problems
    assert [u for u in urls if not u.startswith(("file:", "data:", "http://127.0.0.1"))] == []
    assert len(found) == players, found
    for player in found:
        assert player["src"].startswith("data:audio/ogg;codecs=opus;base64,"), player
        assert player["error"] is None and player["ready"] >= 1 and player["duration"] > 0, player
    assert len(images) == players and all(i["complete"] and i["width"] == 480 for i in images), images
    shot = Image.open(io.BytesIO(png))
    assert shot.size[0] > 0 and len(set(shot.convert("L").getdata())) > 10  # not a blank page
    return png


def test_demo_batch_report_passes_the_chromium_check(tmp_path, pools):
    demo = tmp_path / "demo"
    demo.mkdir()
    # The demo's own lines, at 2 sampling steps each (the system under test, not the model's quality).
    lines = [json.loads(line) for line in (REPO_ROOT / "examples" / "demo.jsonl").read_text().splitlines() if line]
    (demo / "demo.jsonl").write_text("".join(json.dumps({**line, "steps": 2}) + "\n" for line in lines))
    subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "make_inputs.py"), str(demo)], check=True)
    source = ManifestSource(demo / "demo.jsonl", max_attempts=1)
    storage = LocalStorage(tmp_path / "out")
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=demo))
    engine = Engine(source, storage, inputs, pools, WORKERS.load_config(), EngineSettings(claim_block_s=0.05))
    engine.run(until_exhausted=True)
    assert len(source.outcomes) == len(lines)

    path = _write_report(source, storage, inputs, tmp_path / "out")
    page = path.read_text()
    assert path.name == "report.html" and "<script" not in page
    succeeded = [j for j, o in source.outcomes.items() if o.status.value == "succeeded"]
    generating = [j for j in succeeded if source.specs[j].task.value != "understand"]
    with_input = [j for j in succeeded if source.specs[j].input_audio_uri]  # edits and the question audio
    assert len(generating) >= 10  # everything but understanding made audio
    for job_id in source.outcomes:
        assert f'id="job-{job_id}"' in page
    assert "What do you hear?" in page and "Hello from Audio Omni." in page  # prompts and transcripts
    assert page.count('class="answer"') == 1  # the understanding job's text answer
    assert "Time per stage" in page and ">generate</text>" in page
    if CHROMIUM is None:  # the page was checked as text above; the browser check needs Debian's chromium
        pytest.skip(SKIP_REASON)
    png = check_in_chromium(path.as_uri(), players=len(generating) + len(with_input))
    (tmp_path / "report.png").write_bytes(png)


def _wav(seconds: float, rate: int = 44_100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_service_batch_report_from_the_cli_and_the_api(tmp_path, monkeypatch, capsys, pools, redis_url, redis_prefix,
                                                        s3_endpoint, s3_bucket):  # fmt: skip
    s3 = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1", addressing_style="path")
    storage = S3Storage(s3_bucket, client=s3)
    queue = JobQueue(redis_url, prefix=redis_prefix, lease_s=30, max_attempts=1)
    tenants = TenantStore(queue.redis, prefix=redis_prefix)
    keys = {}
    for tenant in ("acme", "other"):
        tenants.create(tenant)
        keys[tenant] = tenants.issue_key(tenant)
    s3.put_object(Bucket=s3_bucket, Key="acme/uploads/source.wav", Body=_wav(1.0))
    source_uri = f"s3://{s3_bucket}/acme/uploads/source.wav"
    gen = {"duration_s": 1.0, "steps": 2, "tenant": "acme"}
    specs = [
        {
            "task": "text_to_audio",
            "prompt": 'rain <on> a "tin" roof',
            "metadata": {"row": 7},
            "custom_id": "r-7",
            **gen,
        },
        {"task": "edit", "op": "remove", "prompt": "the hum", "input_audio_uri": source_uri, **gen},
        {"task": "understand", "prompt": "What is this?", "input_audio_uri": source_uri, "tenant": "acme"},
        {
            "task": "edit",
            "op": "add",
            "prompt": "x",
            "input_audio_uri": f"s3://{s3_bucket}/acme/uploads/nope.wav",
            **gen,
        },
    ]
    batch_id, _ = queue.submit_batch(specs)
    inputs = input_resolver_from_settings(storage, tenant_rules=tenants.input_policy)
    engine = Engine(RedisSource(queue, f"e-{uuid.uuid4().hex[:6]}"), storage, inputs, pools, WORKERS.load_config(),
                    EngineSettings(max_in_flight=2, claim_block_s=0.1))  # fmt: skip
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        status = None
        for _ in range(600):
            status = queue.batch_status(batch_id)
            if status.done:
                break
            threading.Event().wait(0.2)
        assert status is not None and status.done, status
    finally:
        engine.stop()
        thread.join(timeout=60)

    # The CLI, configured from the environment like the other service-mode commands.
    for name, value in {
        "AUDIO_OMNI_REDIS_URL": redis_url,
        "AUDIO_OMNI_REDIS_PREFIX": redis_prefix,
        "AUDIO_OMNI_S3_BUCKET": s3_bucket,
        "AUDIO_OMNI_S3_ENDPOINT_URL": s3_endpoint,
        "AUDIO_OMNI_S3_ADDRESSING_STYLE": "path",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["report", batch_id, "--out", str(tmp_path / "rep")]) == 0
    path = Path(capsys.readouterr().out.strip())
    page = path.read_text()
    assert path == tmp_path / "rep" / "report.html"
    assert "rain &lt;on&gt; a &quot;tin&quot; roof" in page and "<on>" not in page  # user text escaped
    assert "r-7" in page and "{&quot;row&quot;: 7}" in page  # custom_id and metadata shown
    assert "nope.wav" in page and 'class="error"' in page  # the failure and its reason
    assert page.count('class="answer"') == 1
    assert main(["report", "b-no-such-batch", "--out", str(tmp_path / "none")]) == 1
    assert "not found" in capsys.readouterr().err

    # The API: the same page for the batch's tenant, a 404 for anyone else.
    app = create_app(None, queue=queue, storage=storage, tenants=tenants, inputs=inputs)
    with serve_in_thread(app) as url:
        own = httpx.get(f"{url}/v1/batches/{batch_id}/report", headers={"Authorization": f"Bearer {keys['acme']}"})
        other = httpx.get(f"{url}/v1/batches/{batch_id}/report", headers={"Authorization": f"Bearer {keys['other']}"})
        if CHROMIUM is not None:
            (tmp_path / "api.html").write_text(own.text)
            check_in_chromium((tmp_path / "api.html").as_uri(), players=4)  # 2 results, 2 inputs
        # The CLI goes through the API when AUDIO_OMNI_API_URL and AUDIO_OMNI_API_KEY are set.
        monkeypatch.setenv("AUDIO_OMNI_API_URL", url)
        monkeypatch.setenv("AUDIO_OMNI_API_KEY", keys["acme"])
        assert main(["report", batch_id, "--out", str(tmp_path / "remote")]) == 0
        remote = Path(capsys.readouterr().out.strip()).read_text()
        assert remote.count('<audio controls preload="metadata"') == 4 and "r-7" in remote
        monkeypatch.setenv("AUDIO_OMNI_API_KEY", keys["other"])
        assert main(["report", batch_id, "--out", str(tmp_path / "none")]) == 1
        assert f"404 from the API: batch '{batch_id}' not found" in capsys.readouterr().err
    assert own.status_code == 200 and own.headers["content-type"].startswith("text/html")
    assert own.text.count('<audio controls preload="metadata" src="data:audio/ogg') == 4
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    queue.close()
