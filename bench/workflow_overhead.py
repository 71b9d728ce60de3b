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
    step, writes its result (a local folder), acknowledges it, which releases the second step, resolves
    the reference and runs it; timed from the submit until the workflow has succeeded;
(c) jobs: the same two steps as plain jobs through the same queue and engine, the caller waiting
    for the first and submitting the second with the answer (what a user does without workflows).

Prints the median time of each; the last line is one JSON object: `bare_s`, `workflow_s`, `ratio`
(workflow / bare: what the whole job system adds to the chain), `jobs_s`, `ratio_vs_jobs`
(workflow / jobs: what the workflow adds over chaining by hand), and the settings.

Run: `.venv/bin/python bench/workflow_overhead.py [--rounds 5 --steps 8 --tokens 8]`. Needs Redis
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

POLL_S = 0.002
QUESTION = "Describe a sound in a few words."


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


def workflow_chain(queue: Any, round_: int, args: argparse.Namespace) -> float:
    from orchestrator.workflows import WorkflowState, parse_workflow

    workflow = parse_workflow({"steps": list(_steps(round_, args))})
    started = time.perf_counter()
    status = queue.submit_workflow(workflow)
    while True:
        status = queue.workflow_status(status.workflow_id)
        if status.status in (WorkflowState.SUCCEEDED, WorkflowState.FAILED, WorkflowState.CANCELLED):
            break
        time.sleep(POLL_S)
    elapsed = time.perf_counter() - started
    if status.status is not WorkflowState.SUCCEEDED:
        raise SystemExit(f"workflow {status.workflow_id} ended {status.status.value}: {status.error}")
    return elapsed


def _wait_job(queue: Any, job_id: str) -> Any:
    while True:
        record = queue.get(job_id)
        if record is not None and record.status.is_final:
            if record.status.value != "succeeded":
                raise SystemExit(f"job {job_id} ended {record.status.value}: {record.error}")
            return record
        time.sleep(POLL_S)


def jobs_chain(queue: Any, round_: int, args: argparse.Namespace) -> float:
    describe, generate = _steps(round_, args)
    describe = {k: v for k, v in describe.items() if k != "id"}
    generate = {k: v for k, v in generate.items() if k != "id"}
    started = time.perf_counter()
    first = _wait_job(queue, queue.submit(describe).job_id)
    prompt = _cut(str(first.extra.get("text") or "")).strip() or "silence"
    _wait_job(queue, queue.submit({**generate, "prompt": prompt}).job_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
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
    engine = Engine(
        RedisSource(queue, "bench-engine"),
        storage,
        inputs,
        pools,
        config,
        EngineSettings(max_in_flight=2, claim_block_s=0.05, model_version=settings.model_version),
    )
    runner = threading.Thread(target=engine.run, name="engine", daemon=True)
    runner.start()
    times: dict[str, list[float]] = {"bare": [], "workflow": [], "jobs": []}
    try:
        with torch.inference_mode():
            bare_chain(pipeline, 0, args)  # warm-up of every path, not timed
        workflow_chain(queue, 0, args)
        jobs_chain(queue, 0, args)
        for r in range(1, args.rounds + 1):
            with torch.inference_mode():
                times["bare"].append(bare_chain(pipeline, r, args))
            times["workflow"].append(workflow_chain(queue, r, args))
            times["jobs"].append(jobs_chain(queue, r, args))
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
