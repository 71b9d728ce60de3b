"""Backlog-driven autoscaling of the pools: a custom Ray Serve autoscaling policy.

Serve's default policy only sees the requests already sent to a deployment. Here the engines keep a
bounded number of jobs in flight, so most of the work waits in Redis where Serve cannot see it.
Each engine process therefore publishes a small report into one Redis hash (`publish_backlog`):

    {backlog_key}  field = engine id, value = {"t": unix s, "queued": jobs waiting in the queue,
                                               "encoder": jobs that will call the encoder next,
                                               "sampler": jobs that will call the sampler later}

and `BacklogPolicy`, running inside the Serve controller, reads it about once a second and asks for

    replicas = max(ongoing / target_ongoing_requests, (ongoing + queued + upstream) / jobs_per_replica)

where `ongoing` is Serve's own count of requests at the deployment. Serve then applies min/max
replicas and the upscale/downscale delays. On a Ray cluster, replicas that do not fit make the
cluster autoscaler add (GPU) nodes. Reports older than `stale_s` (a dead engine) are ignored, so a
lost publisher falls back to Serve's own signal instead of pinning the pool at its maximum.

The controller cloudpickles this module by value: it imports nothing from the project.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aredis

logger = logging.getLogger("ray.serve")

POOLS = ("encoder", "sampler")
DEFAULT_STALE_S = 15.0


def backlog_report(queued: int, encoder: int, sampler: int, *, now_s: float | None = None) -> str:
    """One engine's report as stored in the hash (JSON)."""
    for name, value in (("queued", queued), ("encoder", encoder), ("sampler", sampler)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    t = time.time() if now_s is None else now_s
    return json.dumps({"t": round(t, 3), "queued": int(queued), "encoder": int(encoder), "sampler": int(sampler)})


def publish_backlog(
    client: redis.Redis, key: str, engine_id: str, report: str, *, stale_s: float = DEFAULT_STALE_S
) -> None:
    """Store one engine's report (a `redis.Redis` client). The hash expires if every engine stops."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, engine_id, report)
    pipe.expire(key, max(1, int(stale_s * 4)))
    pipe.execute()


def withdraw_backlog(client: redis.Redis, key: str, engine_id: str) -> None:
    """Remove an engine's report (it is shutting down)."""
    client.hdel(key, engine_id)


def waiting_work(raw: Mapping[Any, Any], pool: str, *, now_s: float, stale_s: float = DEFAULT_STALE_S) -> int:
    """Jobs that will reach `pool` but are not at it yet: the queue depth (the same for every engine,
    so the freshest value) plus each live engine's upstream jobs. Stale or unreadable reports are skipped."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    queued, newest, upstream = 0, -1.0, 0
    for value in raw.values():
        try:
            report = json.loads(value)
            t = float(report["t"])
        except (ValueError, TypeError, KeyError):
            continue
        if now_s - t > stale_s:
            continue
        if t > newest:
            newest, queued = t, int(report.get("queued", 0))
        upstream += int(report.get(pool, 0))
    return max(0, queued) + max(0, upstream)


class AutoscalingContextLike(Protocol):
    """What the policy reads of Serve's `AutoscalingContext`."""

    @property
    def total_num_requests(self) -> float | None: ...


class BacklogPolicy:
    """A class-based Serve autoscaling policy: `__call__(ctx) -> (replicas, state)`.

    Serve builds it once per deployment with `policy_kwargs` (see `workers.app`). Redis is polled
    at most every `poll_interval_s`, in a one-shot task on the controller's event loop, so an
    autoscaling tick never waits on the network.
    """

    def __init__(
        self,
        redis_url: str,
        backlog_key: str,
        pool: str,
        jobs_per_replica: float,
        target_ongoing_requests: float,
        poll_interval_s: float = 1.0,
        stale_s: float = DEFAULT_STALE_S,
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if jobs_per_replica <= 0:
            raise ValueError(f"jobs_per_replica must be > 0, got {jobs_per_replica}")
        if target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests must be > 0, got {target_ongoing_requests}")
        if not 0 < poll_interval_s < stale_s:
            raise ValueError(f"need 0 < poll_interval_s < stale_s, got {poll_interval_s} and {stale_s}")
        self.redis_url = redis_url
        self.backlog_key = backlog_key
        self.pool = pool
        self.jobs_per_replica = float(jobs_per_replica)
        self.target_ongoing_requests = float(target_ongoing_requests)
        self.poll_interval_s = poll_interval_s
        self.stale_s = stale_s
        self.waiting = 0
        self._last_poll_s = 0.0  # last poll started (monotonic)
        self._last_ok_s = time.monotonic()  # last poll that read Redis
        self._task: asyncio.Task[None] | None = None
        self._client: aredis.Redis | None = None

    async def _poll_async(self) -> None:
        try:
            if self._client is None:
                import redis.asyncio as aredis

                self._client = aredis.Redis.from_url(self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
            raw = await self._client.hgetall(self.backlog_key)
        except Exception as exc:  # a Redis blip: keep the last value; it ages out in _maybe_poll
            logger.warning("backlog poll of %s failed: %s", self.backlog_key, exc)
            return
        self._read(raw)

    def _poll_sync(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            raw = client.hgetall(self.backlog_key)
        except Exception as exc:
            logger.warning("backlog poll of %s failed: %s", self.backlog_key, exc)
            return
        finally:
            client.close()
        self._read(raw)

    def _read(self, raw: Mapping[Any, Any]) -> None:
        self.waiting = waiting_work(raw, self.pool, now_s=time.time(), stale_s=self.stale_s)
        self._last_ok_s = time.monotonic()

    def _maybe_poll(self) -> None:
        now = time.monotonic()
        if now - self._last_ok_s > self.stale_s:
            self.waiting = 0  # no successful read for a while (hung or failing polls): old news
        if self._task is not None and self._task.done():
            self._task = None
        if self._task is not None or now - self._last_poll_s < self.poll_interval_s:
            return
        self._last_poll_s = now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop (a direct call): read synchronously
            self._poll_sync()
            return
        self._task = loop.create_task(self._poll_async())

    def desired_replicas(self, ongoing: float, waiting: float) -> float:
        """Replicas for `ongoing` requests at the pool and `waiting` jobs still to come to it."""
        return max(ongoing / self.target_ongoing_requests, (ongoing + waiting) / self.jobs_per_replica)

    def __call__(self, ctx: AutoscalingContextLike) -> tuple[float, dict[str, Any]]:
        self._maybe_poll()
        ongoing = float(ctx.total_num_requests or 0.0)
        desired = self.desired_replicas(ongoing, self.waiting)
        return desired, {"backlog_waiting": self.waiting, "backlog_ongoing": ongoing}
