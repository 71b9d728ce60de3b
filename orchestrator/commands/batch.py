"""`audio-omni batch MANIFEST.jsonl --out DIR`: embedded mode.

Starts a local Ray (or joins the one this process already runs), deploys both pools, runs every
manifest line through the engine with a folder sink, shows a progress bar and ends with a summary
table. A line is a job, or a workflow (`{"steps": [...]}`: each step runs as its own job once the
steps it uses have succeeded; `audio-omni submit` describes the references). Writes
`report.html` into `--out` (`orchestrator.report`: players, spectrograms, timings, answers and
errors on one self-contained page). Exit status 0 when every job succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.jobs import JobSpec
    from orchestrator.sources import ManifestSource
    from orchestrator.storage import InputResolver, Storage
    from workers.settings import WorkerSettings

from workers.settings import DEFAULT_PRESET

MAX_REPORT_INPUT_BYTES = 256 * 1024 * 1024  # an input read again to show it in the report
RELEASED_MODEL_HINT = (
    "      To run the released model: download the Audio-Omni checkpoint (model.ckpt) and "
    "Qwen/Qwen2.5-Omni-3B, set QWEN_OMNI_MODEL_PATH to the Qwen folder, then on a GPU machine:\n"
    "      audio-omni batch MANIFEST.jsonl --out DIR --preset full \\\n"
    "          --weights /path/to/model.ckpt --device cuda"
)
RANDOM_WEIGHTS_NOTICE = (
    "NOTE: the '{preset}' preset runs with RANDOM weights: the audio is noise and text answers are "
    "gibberish. It exists to exercise the whole system on a CPU.\n" + RELEASED_MODEL_HINT
)
SMALL_MODEL_NOTICE = (
    "NOTE: the packaged 'small' model ({size_mb:.1f} MB) was trained here, on a CPU, on generated sounds only:\n"
    "      text-to-audio and remove/extract edits (add is weak) of tone, chord, clicks, noise burst and siren\n"
    "      over noise and hum backgrounds (docs/model.md). Its decoder is a fixed log-mel codec (no sound above\n"
    "      11 kHz, tones come out as narrow noise bands). Its thinker answers questions about such scenes (which\n"
    "      of the five sounds, roughly when, over which background) and says when it cannot tell; other prompts\n"
    "      and tasks (speech, music, video) run but were never trained.\n" + RELEASED_MODEL_HINT
)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("manifest", type=Path, help="JSONL file, one job spec or workflow per line")
    parser.add_argument("--out", type=Path, required=True, help="folder to write results into")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"model preset (small, tiny, full); default {DEFAULT_PRESET}, the packaged model",
    )
    model.add_argument("--config", default=None, help="a model_config.json (overrides --preset)")
    model.add_argument("--weights", default=None, help="checkpoint (model.ckpt, safetensors or converted folder)")
    model.add_argument("--device", default="cpu", help="cpu or cuda")
    run = parser.add_argument_group("run")
    run.add_argument("--max-in-flight", type=int, default=8, help="jobs running at once (default 8)")
    run.add_argument("--max-batch-size", type=int, default=8, help="sampler batch size (default 8)")
    run.add_argument("--num-cpus", type=float, default=None, help="CPUs for the local Ray (default: all)")
    run.add_argument("--max-attempts", type=int, default=2, help="attempts per job before it is dead")
    run.add_argument(
        "--input-root",
        type=Path,
        default=None,
        help="local inputs must lie under this folder (default: the manifest's folder)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def _worker_settings(args: argparse.Namespace) -> WorkerSettings:
    from workers.settings import PoolSettings, WorkerSettings

    gpu = 0.5 if args.device.startswith("cuda") else 0.0
    tiny_thinker = args.config is None and args.preset in ("tiny", "small")
    return WorkerSettings(
        preset=args.preset,
        config_path=args.config,
        weights=args.weights,
        device=args.device,
        app_name="audio-omni-batch",
        # A random (tiny) thinker answers noise; do not spend minutes generating 512 tokens of it.
        understand_max_new_tokens=32 if tiny_thinker else 512,
        encoder=PoolSettings(
            num_cpus=0.5,
            num_gpus=gpu,
            max_batch_size=args.max_batch_size,
            max_ongoing_requests=max(32, args.max_batch_size),
        ),
        sampler=PoolSettings(
            num_cpus=0.5,
            num_gpus=gpu,
            max_batch_size=args.max_batch_size,
            max_ongoing_requests=max(32, args.max_batch_size),
        ),
    )


def _prepare_demo_inputs(source: ManifestSource) -> None:
    """The demo's inputs are generated, not committed: run `make_inputs.py` beside the manifest."""
    missing = [p for p in source.local_inputs() if not p.exists()]
    script = source.path.parent / "make_inputs.py"
    if missing and script.exists():
        print(f"generating demo inputs with {script}", file=sys.stderr)
        subprocess.run([sys.executable, str(script), str(source.path.parent)], check=True, stdout=subprocess.DEVNULL)


def _summary(source: ManifestSource) -> str:
    rows = [("job", "task", "status", "seconds", "output / answer / error")]
    for job_id in (j for j in source.job_ids() if j in source.outcomes):
        o = source.outcomes[job_id]
        spec = source.specs.get(job_id)
        task = _task_label(spec) if spec is not None else "-"
        seconds = f"{sum(o.timings.values()):.2f}" if o.timings else "-"
        if o.status.value == "succeeded":
            text = o.extra.get("text")
            detail = o.result_uri or ""
            if detail.startswith("file://"):
                detail = os.path.relpath(detail[len("file://") :])
            if text is not None:
                detail += f"  answer: {text[:40]!r}"
        else:
            detail = (o.error or "")[:100]
        rows.append((source.label(job_id), task, o.status.value, seconds, detail))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(120, len(lines[0]) + 20))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from orchestrator.logging import configure

    configure(level=os.environ.get("AUDIO_OMNI_LOG_LEVEL", "WARNING"))
    from orchestrator.engine import Engine, EngineSettings, JobResult
    from orchestrator.errors import Outcome
    from orchestrator.sources import ManifestSource
    from orchestrator.storage import InputPolicy, InputResolver, LocalStorage

    if not args.manifest.is_file():
        print(f"audio-omni batch: manifest {args.manifest} not found", file=sys.stderr)
        return 2
    settings = _worker_settings(args)
    config = settings.load_config()
    print(_model_notice(settings, args), file=sys.stderr)
    source = ManifestSource(args.manifest, max_attempts=args.max_attempts)
    _prepare_demo_inputs(source)
    input_root = (args.input_root or args.manifest.parent).resolve()
    storage = LocalStorage(args.out)
    # The one set of input rules of this run: files under the input root, and earlier results.
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=input_root))
    version = settings.model_version

    import ray

    from workers.app import deploy, shutdown
    from workers.local_ray import init_ray

    started = time.monotonic()
    owns_ray = init_ray(num_cpus=args.num_cpus)  # False: this process already runs Ray (kept up)
    try:
        pools = deploy(settings)
        from tqdm import tqdm

        bar = tqdm(total=source.total, unit="job", disable=args.no_progress, file=sys.stderr)
        bar.update(len(source.invalid))

        def on_done(result: JobResult) -> None:
            if result.outcome is not Outcome.RETRY:
                bar.update(1)
            bar.set_postfix_str(f"last: {result.outcome}")

        engine = Engine(
            source,
            storage,
            inputs,
            pools,
            config,
            EngineSettings(max_in_flight=args.max_in_flight, model_version=version),
            on_done=on_done,
        )
        engine.run(until_exhausted=True)
        bar.close()
        hist = pools.sampler_stats()
    finally:
        try:
            shutdown(settings)
        finally:
            if owns_ray:
                ray.shutdown()
    elapsed = time.monotonic() - started
    print(_summary(source))
    ok = sum(1 for o in source.outcomes.values() if o.status.value == "succeeded")
    print(f"\n{ok}/{source.total} jobs succeeded in {elapsed:.1f} s; sampler batch sizes {hist}")
    print(f"results and metadata JSON are in {args.out.resolve()}/")
    print(f"report: {_write_report(source, storage, inputs, args.out).resolve()}")
    if settings.uses_random_weights:
        print("(random weights: the audio is noise; see the note at the top for the released checkpoint)")
    return 0 if ok == source.total else 1


def _write_report(source: ManifestSource, storage: Storage, inputs: InputResolver, out: Path) -> Path:
    """The run's HTML report (the same page as `audio-omni report`), written as `out/report.html`."""
    from orchestrator.report import DEFAULT_MAX_JOBS, REPORT_FILE, jobs_from_manifest, render_report

    def read_input(uri: str, tenant: str) -> bytes:
        return inputs.read(uri, tenant=tenant, max_bytes=MAX_REPORT_INPUT_BYTES)

    jobs, total = jobs_from_manifest(source, storage, read_input=read_input, max_jobs=DEFAULT_MAX_JOBS)
    path = out / REPORT_FILE
    path.write_text(render_report(f"audio-omni batch {source.path.name}", jobs, total=total), encoding="utf-8")
    return path


def _model_notice(settings: WorkerSettings, args: argparse.Namespace) -> str:
    """What the user is running: random weights, the embedded small model, or their checkpoint."""
    weights = settings.resolved_weights
    if weights is None:
        return RANDOM_WEIGHTS_NOTICE.format(preset=args.config or args.preset)
    if args.weights is None and args.config is None and args.preset == "small":
        return SMALL_MODEL_NOTICE.format(size_mb=Path(weights).stat().st_size / 1e6)
    return f"model: {args.config or args.preset} with weights {weights}"


def _task_label(spec: JobSpec) -> str:
    return f"edit:{spec.op.value}" if spec.op is not None else spec.task.value
