"""Bench handlers for bench/concurrency.py: sleep 1 or 10 ms, then count the item.

Every design in that benchmark (goodsd, Dramatiq, arq) runs these same functions, so the work
per item is identical: a sleep (``time.sleep`` in a thread, ``asyncio.sleep`` in a task), then
one ``INCR`` of the counter ``bench:handled`` in the Redis database named by
$BENCH_COUNTER_URL; the benchmark reads that counter to time every design alike. The
``sleep_only`` ones sleep and nothing else, for `--count queue`, where the benchmark reads each
design's own bookkeeping instead. They run inside the designs' worker processes, goodsd's and
the peers' (in their own virtualenv), so this module needs redis-py and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref

import redis
import redis.asyncio

COUNTER = "bench:handled"  # items handled, all processes together
READY = "bench:ready"  # worker processes up (the peers; goodsd's consumers register instead)

_clients: dict[int, redis.Redis] = {}  # by pid: a forked child opens its own
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def _client() -> redis.Redis:
    """This process's connection pool (thread-safe), opened on first use, after any fork."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    return _clients[pid]


def _async_client() -> redis.asyncio.Redis:
    """The running event loop's client: an asyncio connection belongs to one loop."""
    loop = asyncio.get_running_loop()
    if loop not in _async_clients:
        _async_clients[loop] = redis.asyncio.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    return _async_clients[loop]


def ready() -> None:
    """Count one more worker process up; called once by each peer worker at its start."""
    _client().incr(READY)


def sleep_1ms(item: object) -> None:
    """Sleep 1 ms in this thread, then count the item."""
    time.sleep(0.001)
    _client().incr(COUNTER)


def sleep_10ms(item: object) -> None:
    """Sleep 10 ms in this thread, then count the item."""
    time.sleep(0.010)
    _client().incr(COUNTER)


async def async_sleep_1ms(item: object) -> None:
    """Sleep 1 ms on the event loop, then count the item."""
    await asyncio.sleep(0.001)
    await _async_client().incr(COUNTER)


async def async_sleep_10ms(item: object) -> None:
    """Sleep 10 ms on the event loop, then count the item."""
    await asyncio.sleep(0.010)
    await _async_client().incr(COUNTER)


def sleep_only_1ms(item: object) -> None:
    """Sleep 1 ms in this thread."""
    time.sleep(0.001)


def sleep_only_10ms(item: object) -> None:
    """Sleep 10 ms in this thread."""
    time.sleep(0.010)


async def async_sleep_only_1ms(item: object) -> None:
    """Sleep 1 ms on the event loop."""
    await asyncio.sleep(0.001)


async def async_sleep_only_10ms(item: object) -> None:
    """Sleep 10 ms on the event loop."""
    await asyncio.sleep(0.010)
