"""Deploy (or delete) the tiny encoder and sampler pools on a Ray cluster, each pinned to a kind of
node by a custom resource, then disconnect; the Serve applications live on in the cluster.

Run as a separate process by the multi-node tests and the multi-node benchmark, so the calling
process never joins that cluster (a process joins one Ray cluster at most, and the test session
may already be on the local one of tests/conftest.py):

    python tests/multinode/pools.py deploy --address 127.0.0.1:PORT --app-name NAME \
        --encoder-resource cpu_node --sampler-resource gpu_node
    python tests/multinode/pools.py delete --address 127.0.0.1:PORT --app-name NAME
    python tests/multinode/pools.py where --address 127.0.0.1:PORT --app-name NAME   # {pool: node_id}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Importable without installing the project: the repo root is two levels up.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# A sliver of the node's marker resource: any number of replicas fit, and only on such a node.
RESOURCE_SHARE = 0.01


def pool_settings(app_name: str, encoder_resource: str | None, sampler_resource: str | None):
    from workers.settings import PoolSettings, WorkerSettings

    def pool(resource: str | None, wait_s: float) -> PoolSettings:
        return PoolSettings(
            num_cpus=0.5,
            max_batch_size=4,
            batch_wait_timeout_s=wait_s,
            resources={resource: RESOURCE_SHARE} if resource else {},
        )

    return WorkerSettings(
        preset="tiny",
        app_name=app_name,
        understand_max_new_tokens=4,
        encoder=pool(encoder_resource, 0.1),
        sampler=pool(sampler_resource, 0.2),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["deploy", "delete", "where"])
    ap.add_argument("--address", required=True, help="the cluster's GCS address host:port")
    ap.add_argument("--app-name", required=True)
    ap.add_argument("--encoder-resource", default=None, help="custom resource the encoder replicas need")
    ap.add_argument("--sampler-resource", default=None, help="custom resource the sampler replicas need")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from workers.app import ENCODER, SAMPLER, ServePools, deploy, shutdown

    ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    settings = pool_settings(args.app_name, args.encoder_resource, args.sampler_resource)
    if args.action == "deploy":
        deploy(settings)
        for which in (ENCODER, SAMPLER):  # serve.run(blocking=False) returns before the replicas run
            serve.get_app_handle(f"{args.app_name}-{which}")
        pools = ServePools.connect(args.app_name, timeout_s=120)
        pools.sampler_stats()  # one round trip: the sampler replica answers
        print("DEPLOYED", flush=True)
    elif args.action == "delete":
        shutdown(settings)
    else:
        from ray._private.state import actors  # the GCS actor table (the state API needs a dashboard)

        where: dict[str, list[str]] = {}
        for info in actors().values():
            name = info.get("ActorClassName", "")
            for which in (ENCODER, SAMPLER):
                if info.get("State") == "ALIVE" and name.startswith(f"ServeReplica:{args.app_name}-{which}:"):
                    where.setdefault(which, []).append(info["Address"]["NodeID"])
        print(json.dumps(where))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
