"""Edit-pair synthesis throughput (pairs/s) on a local Ray with 1 and 2 Ray Data workers.

    .venv/bin/python bench/synth_throughput.py --pairs 16 --shard-size 2

Sources are generated (examples/sounds/make_sounds.py). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from training.synth import SynthSettings, run_synth
    from workers.local_ray import init_ray

    spec = importlib.util.spec_from_file_location("make_sounds", REPO / "examples" / "sounds" / "make_sounds.py")
    make_sounds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sounds)
    workers = [int(w) for w in args.workers.split(",")]
    init_ray(num_cpus=max(workers))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_sounds.generate(Path(tmp) / "src", per_class=4, backgrounds_per_kind=2, seed=0)
        settings = SynthSettings(
            foreground=f"{tmp}/src/foreground",
            background=f"{tmp}/src/background",
            pairs=args.pairs,
            shard_size=args.shard_size,
        )
        for n in workers:
            manifest = run_synth(settings, f"{tmp}/out-{n}", num_workers=n, progress=False)
            results[f"pairs_per_s_{n}_workers"] = round(manifest["pairs_per_s"], 3)
            rate, wall = manifest["pairs_per_s"], manifest["wall_s"]
            print(f"{n} worker(s): {rate:.2f} pairs/s ({args.pairs} pairs, {wall:.1f} s)")
    ray.shutdown()
    print(json.dumps({"bench": "synth_throughput", "pairs": args.pairs, "cpu_count": os.cpu_count(), **results}))


if __name__ == "__main__":
    main()
