"""`bench/gpu_check.py --preset tiny --quick` runs on CPU and prints the documented JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_tiny_quick_run_prints_one_json_object(tmp_path) -> None:
    out_file = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--preset",
            "tiny",
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(out_file),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads(out_file.read_text())
    assert result["errors"] == [] and result["device_type"] == "cpu" and result["peak"]["bf16_dense_tflops"] is None
    rows = {(r["style"], r["precision"], r["batch"]) for r in result["sampling"]}
    assert rows == {("batched", p, b) for p in ("bf16", "fp32") for b in (1, 2)} | {("reference", "fp16", 1)}
    for row in result["sampling"]:
        assert row["s_per_step"] > 0 and row["extrapolated_from_timed_steps"] is True
        assert row["s_per_clip_100"] == row["s_per_step"] * 100 / row["batch"]
        assert row["achieved_tflops"] > 0 and row["activation_model_bytes"] > 0
    assert result["summary"]["speedup_vs_reference"] > 0
    assert result["validation"][0]["measured_s"] > 0
    assert result["vae_decode"]["rows"][0]["audio_shape"] == [1, 2, 216 * 2048]
    assert result["thinker_prefill"]["s_median"] > 0
    assert result["host_sync_check"].startswith("not checked")
