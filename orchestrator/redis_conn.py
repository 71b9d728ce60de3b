"""One way to accept "a Redis client or a URL" in the classes that talk to Redis."""

from __future__ import annotations

import redis


def redis_client(client_or_url: redis.Redis | str) -> tuple[redis.Redis, bool]:
    """`(client, owned)`: a URL gets a new client that the caller owns (and closes); a client is shared."""
    if isinstance(client_or_url, str):
        return redis.Redis.from_url(client_or_url), True
    return client_or_url, False
