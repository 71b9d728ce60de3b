"""Serve replicas log JSON, as the API and the engines do (docs/operations.md, Logs): also when the
pools are deployed from code (`workers.app.deploy`), not only from the RayService's config."""

from __future__ import annotations

import json
import time
from pathlib import Path

from model.mllm import MLLMPrompt
from workers.app import ServePools


def _replica_logs(app_name: str) -> list[Path]:
    from ray._private.worker import _global_node

    serve_logs = Path(_global_node.get_logs_dir_path()) / "serve"
    return sorted(serve_logs.glob(f"replica_{app_name}-*.log"))


def test_pool_replicas_write_one_json_object_per_line(tiny_pools):
    pools = ServePools.connect(tiny_pools.app_name, timeout_s=120)
    assert pools.encode(MLLMPrompt(text="a bell")).ndim == 2  # a request, so the replica logs it
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline:
        files = _replica_logs(tiny_pools.app_name)
        lines = [ln for f in files for ln in f.read_text().splitlines() if ln.strip()]
        if len(files) >= 2 and lines:
            break
        time.sleep(0.5)
    assert lines, f"no replica log of {tiny_pools.app_name}"
    records = [json.loads(ln) for ln in lines]  # every line, not only ours: all of them are JSON
    assert all("message" in r and "levelname" in r for r in records)
    deployments = {str(r.get("deployment", "")) for r in records}  # "{app}_{deployment class}"
    for cls in ("EncoderDeployment", "SamplerDeployment"):
        assert any(d.endswith(cls) for d in deployments), deployments
