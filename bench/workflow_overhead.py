"""Workflow overhead: a two-step chain of tiny jobs as a workflow, next to the same steps run back to
back in one process, same run.

The chain: `describe` (understand: a question, answered by the thinker) then `generate`
(text_to_audio whose prompt is `{{describe.text}}`), on the `tiny` preset. Each round runs it three
ways, in turn, on the same model parts (one `InProcessPools`, sampler batches not padded, so every
way does the same model work):

(a) bare: the two steps as `model.pipeline.AudioOmniPipeline` calls in this process, back to back,
    the first answer (cut as a workflow cuts it) becoming the second prompt;
(b) workflow: `JobQueue.submit_workflow` on real Redis; an `Engine` on a `RedisSource` (the code
    `audio-omni serve` runs, here with the in-process pools instead of Serve) claims the first
    step, writes its result (a local folder), acknowledges it, which releases the second step,
    resolves the reference and runs it; timed from the submit until the engine has acknowledged
    the last step;
(c) jobs: the same two steps as plain jobs through the same queue and engine, the caller waiting
    for the first and submitting the second with the answer (what a user does without workflows).

Waits use the engine's `on_done` callback, not a Redis poll loop (which would compete with the
engine for this process's GIL and CPU).

Prints the median time of each; the last line is one JSON object: `bare_s`, `workflow_s`, `ratio`
(workflow / bare: what the whole job system adds to the chain), `jobs_s`, `ratio_vs_jobs`
(workflow / jobs: what the workflow adds over chaining by hand), the fastest round of each
(`*_min_s`, `ratio_min`: on a shared machine the least disturbed figure), and the settings.

Run: `.venv/bin/python bench/workflow_overhead.py [--rounds 9 --steps 8 --tokens 8]`. Needs Redis
(`--redis-url`); keys live under `bench:{run}:` and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

QUESTION = "Describe a sound in a few words."
WAIT_S = 300.0


class Finished:
    """Which jobs the engine has finished (its `on_done` callback), to wait on without polling
    Redis: a poll loop in this process would take the GIL from the engine it measures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def _event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(job_id, threading.Event())

    def on_done(self, result: Any) -> None:
        if result.outcome is not None and result.outcome.value != "retry":
            self._event(result.job_id).set()

    def wait(self, job_id: str) -> None:
        if not self._event(job_id).wait(WAIT_S):
            raise SystemExit(f"job {job_id} did not finish in {WAIT_S:g} s")


def _steps(round_: int, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    describe = {"id": "describe", "task": "understand", "prompt": QUESTION}
    generate = {
        "id": "generate",
        "task": "text_to_audio",
        "prompt": "{{describe.text}}",
        "duration_s": args.duration_s,
        "steps": args.steps,
        "seed": round_,
    }
    return describe, generate


def _cut(text: str) -> str:
    """The answer as a reference brings it into a text field (the workflow's own rule)."""
    from model.limits import MAX_REFERENCED_TEXT_CHARS

    if len(text) <= MAX_REFERENCED_TEXT_CHARS:
        return text
    head = text[:MAX_REFERENCED_TEXT_CHARS]
    return head[: head.rfind(" ")] if " " in head else head


def bare_chain(pipeline: Any, round_: int, args: argparse.Namespace) -> float:
    from model.pipeline import TaskInputs
    from model.tasks import Task

    describe, generate = _steps(round_, args)
    started = time.perf_counter()
    (answer,) = pipeline(TaskInputs(task=Task.UNDERSTAND, prompt=describe["prompt"]))
    prompt = _cut(answer.text or "").strip() or "silence"
    x = TaskInputs(task=Task.TEXT_TO_AUDIO, prompt=prompt, steps=generate["steps"], seed=generate["seed"])
    x.duration_s, x.cfg_scale = generate["duration_s"], 7.0
    (out,) = pipeline(x)
    assert out.audio is not None
    return time.perf_counter() - started


def workflow_chain(queue: Any, finished: Finished, round_: int, args: argparse.Namespace) -> float:
    from orchestrator.workflows import WorkflowState, parse_workflow, step_job_id

    workflow = parse_workflow({"steps": list(_steps(round_, args))})
    started = time.perf_counter()
    status = queue.submit_workflow(workflow)
    finished.wait(step_job_id(status.workflow_id, "generate"))
    elapsed = time.perf_counter() - started
    status = queue.workflow_status(status.workflow_id)
    if status is None or status.status is not WorkflowState.SUCCEEDED:
        raise SystemExit(f"workflow {workflow} did not succeed: {status}")
    return elapsed


def _run_job(queue: Any, finished: Finished, spec: dict[str, Any]) -> Any:
    job_id = queue.submit(spec).job_id
    finished.wait(job_id)
    record = queue.get(job_id)
    if record is None or record.status.value != "succeeded":
        raise SystemExit(f"job {job_id} did not succeed: {record}")
    return record


def jobs_chain(queue: Any, finished: Finished, round_: int, args: argparse.Namespace) -> float:
    describe, generate = _steps(round_, args)
    describe = {k: v for k, v in describe.items() if k != "id"}
    generate = {k: v for k, v in generate.items() if k != "id"}
    started = time.perf_counter()
    first = _run_job(queue, finished, describe)
    prompt = _cut(str(first.extra.get("text") or "")).strip() or "silence"
    _run_job(queue, finished, {**generate, "prompt": prompt})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=8, help="sampling steps of the generate step")
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--tokens", type=int, default=8, help="the thinker's answer budget (new tokens)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1 or args.tokens < 1:
        raise SystemExit(f"--rounds, --steps and --tokens must be >= 1, got {args.rounds}, {args.steps}, {args.tokens}")

    import torch

    torch.set_num_threads(args.threads)

    from model.pipeline import AudioOmniPipeline
    from orchestrator.engine import Engine, EngineSettings
    from orchestrator.queue import JobQueue
    from orchestrator.sources import RedisSource
    from orchestrator.storage import InputPolicy, InputResolver, LocalStorage
    from workers.app import InProcessPools
    from workers.settings import PoolSettings, WorkerSettings

    # Sampler batches of one: the engine's requests are not padded, like the bare pipeline's.
    settings = WorkerSettings(
        preset=args.preset, understand_max_new_tokens=args.tokens, sampler=PoolSettings(max_batch_size=1)
    )
    config = settings.load_config()
    pools = InProcessPools.build(settings)
    pipeline = AudioOmniPipeline(config, pools.encoder, pools.sampler, max_new_tokens=args.tokens)

    prefix = f"bench:{uuid.uuid4().hex[:10]}:"
    queue = JobQueue(args.redis_url, prefix=prefix)
    folder = tempfile.TemporaryDirectory(prefix="wf-bench-")
    storage = LocalStorage(folder.name)
    inputs = InputResolver(storage, InputPolicy(embedded=True, input_root=Path(folder.name)))
    finished = Finished()
    engine = Engine(
        RedisSource(queue, "bench-engine"),
        storage,
        inputs,
        pools,
        config,
        EngineSettings(max_in_flight=2, claim_block_s=0.05, model_version=settings.model_version),
        on_done=finished.on_done,
    )
    runner = threading.Thread(target=engine.run, name="engine", daemon=True)
    runner.start()
    times: dict[str, list[float]] = {"bare": [], "workflow": [], "jobs": []}
    try:
        with torch.inference_mode():
            bare_chain(pipeline, 0, args)  # warm-up of every path, not timed
        workflow_chain(queue, finished, 0, args)
        jobs_chain(queue, finished, 0, args)
        for r in range(1, args.rounds + 1):
            with torch.inference_mode():
                times["bare"].append(bare_chain(pipeline, r, args))
            times["workflow"].append(workflow_chain(queue, finished, r, args))
            times["jobs"].append(jobs_chain(queue, finished, r, args))
            print(f"round {r}: " + "  ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), file=sys.stderr)
    finally:
        engine.stop()
        runner.join(timeout=60)
        keys = list(queue.redis.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            queue.redis.delete(*keys[i : i + 500])
        queue.close()
        folder.cleanup()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the least disturbed round: robust to a busy machine
    print(f"bare (pipeline calls back to back): {med['bare']:.3f} s per chain")
    print(
        f"workflow (queue + engine):          {med['workflow']:.3f} s per chain ({med['workflow'] / med['bare']:.3f}x)"
    )
    print(f"jobs chained by hand (same system): {med['jobs']:.3f} s per chain")
    print(
        json.dumps(
            {
                "bare_s": round(med["bare"], 4),
                "workflow_s": round(med["workflow"], 4),
                "ratio": round(med["workflow"] / med["bare"], 4),
                "jobs_s": round(med["jobs"], 4),
                "ratio_vs_jobs": round(med["workflow"] / med["jobs"], 4),
                "bare_min_s": round(best["bare"], 4),
                "workflow_min_s": round(best["workflow"], 4),
                "jobs_min_s": round(best["jobs"], 4),
                "ratio_min": round(best["workflow"] / best["bare"], 4),
                "rounds": args.rounds,
                "preset": args.preset,
                "steps": args.steps,
                "duration_s": args.duration_s,
                "tokens": args.tokens,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
