"""Handlers the integration tests configure (this directory is on the daemon's pythonpath).
Those that record use their own Redis connection, from $TEST_REDIS_URL."""

from __future__ import annotations

import os
import time
from functools import cache

import redis


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["TEST_REDIS_URL"])


def record(item: object) -> None:
    """Remember every item handled (duplicates included) in the list test:handled."""
    _client().rpush("test:handled", str(item))


def slow_record(item: object) -> None:
    """Take a while (0.3 s) per item, then record it."""
    time.sleep(0.3)
    record(item)


def fail(item: object) -> None:
    raise ValueError(f"cannot handle {item}")


def hang(item: object) -> None:
    """Record that it started, then never return."""
    _client().rpush("test:started", str(item))
    time.sleep(3600)


def crash(item: object) -> None:
    """Kill the whole worker process on the spot."""
    os._exit(3)


def dawdle(item: object) -> None:
    """Take 2 ms per item: consumers slower than any producer."""
    time.sleep(0.002)
