"""Starting Ray from our commands: one place that decides how a local cluster is started."""

from __future__ import annotations

import os
from typing import Any


def init_ray(*, address: str | None = None, num_cpus: float | None = None, **kwargs: Any) -> bool:
    """Join the Ray cluster at `address`, or start a local one bound to loopback only.

    A no-op when Ray is already initialised in this process. Returns True when this call connected
    (the caller then owns the shutdown).
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # A single-machine cluster never needs the machine's external address.
        options.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A new local Ray, never the last `ray start` cluster that ray.init() finds in /tmp/ray.
        address = "local"
    ray.init(address=address, **options, **kwargs)
    return True
