"""A handler the stop-summary tests hold in the middle of an item until they open a gate, so
they know exactly which items were running when the stop came."""

from __future__ import annotations

import os
from functools import cache

import redis


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["TEST_REDIS_URL"])


def gated(item: str) -> None:
    """Record the start in test:started, wait until the list test:gate holds an element, then
    record the item in test:handled; an item named bad-* then fails."""
    client = _client()
    client.rpush("test:started", item)
    client.blmove("test:gate", "test:gate", 0)
    client.rpush("test:handled", item)
    if item.startswith("bad-"):
        raise ValueError(f"{item} fails on purpose")
