"""Bench handler: reports how long an item waited between its push and its handler call.

Each item is the producer's `time.time()` as text. The delay goes to the list `bench:latency`,
where bench/throughput.py picks it up. The handler runs inside goodsd's consumer children, so it
opens its own connection, lazily, from $BENCH_REDIS_URL.
"""

import functools
import os
import time

import redis

LATENCY_LIST = "bench:latency"


@functools.cache
def _client() -> redis.Redis:
    """One connection per consumer child, opened on first use (after fork, never before)."""
    return redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


def stamp(item: str) -> None:
    """Record now minus the item's push time; measured first, so connecting is not counted."""
    latency = time.time() - float(item)
    _client().rpush(LATENCY_LIST, repr(latency))
