"""Handlers the integration tests configure (this directory is on the daemon's pythonpath).
Those that record use their own Redis connection, from $TEST_REDIS_URL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from functools import cache

import redis
import redis.asyncio


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


def paced_record(item: object) -> None:
    """Take $TEST_ITEM_SECONDS (default 0.05 s) per item, then record it."""
    time.sleep(float(os.environ.get("TEST_ITEM_SECONDS", "0.05")))
    record(item)


def crash_on_poison(item: object) -> None:
    """Kill the worker on the item "poison"; record every other item."""
    if item == "poison":
        os._exit(3)
    record(item)


def sigkill_self_on_poison(item: object) -> None:
    """SIGKILL the worker from within on the item "poison", a moment after it started (so that
    items started with it are still running); record every other item after 0.2 s."""
    if item == "poison":
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    record(item)


def paced_record_to_file(item: object) -> None:
    """Take $TEST_ITEM_SECONDS per item, then append it as one line to the file $TEST_OUT:
    a record that does not need Redis, for tests that take Redis away."""
    time.sleep(float(os.environ.get("TEST_ITEM_SECONDS", "0.01")))
    fd = os.open(os.environ["TEST_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{item}\n".encode())
    finally:
        os.close(fd)


def record_to_file_unless_bad(item: object) -> None:
    """Fail on items that start with "bad"; record every other one as
    ``paced_record_to_file`` does."""
    if str(item).startswith("bad"):
        raise ValueError(f"bad item {item}")
    paced_record_to_file(item)


def setup_fails_when_flagged() -> None:
    """A consumer setup that raises (the child exits 1 before ready) while the Redis key
    test:fail-setup exists: a crash loop a test can turn on and off."""
    if _client().exists("test:fail-setup"):
        raise RuntimeError("setup failed on purpose (test:fail-setup is set)")


def dawdle(item: object) -> None:
    """Take 2 ms per item: consumers slower than any producer."""
    time.sleep(0.002)


def drift_on_marker(item: object) -> None:
    """The first time it runs the item "drift", make every in-flight list disagree with its
    consumer (an item it never claimed appears at the oldest end), as a Redis failover that
    lost recent writes would (once: the item runs again after the consumer starts afresh);
    record every item."""
    if item == "drift" and _client().set("test:drifted", 1, nx=True):
        client = _client()
        for key in client.scan_iter("goodsd:{q}:inflight:*"):
            client.rpush(key, "ghost")
    record(item)


def record_bytes(item: bytes) -> None:
    """With ``decode: bytes``: remember the exact bytes of every item handled."""
    _client().rpush("test:handled", item)


def fail_bytes(item: bytes) -> None:
    """With ``decode: bytes``: remember the exact bytes of every attempt, then fail."""
    _client().rpush("test:attempts", item)
    raise ValueError("fails every time")


def fail_forging(item: object) -> None:
    """Fail with an error whose message tries to forge a log line and clear the terminal."""
    raise ValueError(f"bad\nerror [master] forged line\r\x1b[2J {item}")


def run_env(item: object) -> None:
    """Start `env`, writing its output to the file $TEST_OUT: what a handler's own child
    processes inherit."""
    import subprocess

    with open(os.environ["TEST_OUT"], "wb") as out:
        subprocess.run(["env"], stdout=out, check=True)


def print_item(item: object) -> None:
    """Print the item, as handlers do, with no flush."""
    print("handled", item)


def timed_record(item: object) -> None:
    """Record that the item started, take $TEST_ITEM_SECONDS (default 1 s), record it done."""
    _client().rpush("test:started", str(item))
    time.sleep(float(os.environ.get("TEST_ITEM_SECONDS", "1")))
    record(item)


def fork_and_return(item: object) -> None:
    """The common mistake: fork, and let the child return as well. The parent records."""
    if os.fork() != 0:
        record(item)


def print_to_stderr(item: object) -> None:
    """Write the item to sys.stderr, as handlers (and the warnings module) do."""
    import sys

    print("trouble with", item, file=sys.stderr)


def run_sleep(item: object) -> None:
    """Run `sleep 2` as a child process, record that the item started once it runs (so a
    stop seen after that reaches it too), wait for it, record the item done."""
    import subprocess

    with subprocess.Popen(["sleep", "2"]) as proc:
        _client().rpush("test:started", str(item))
        if proc.wait():
            raise subprocess.CalledProcessError(proc.returncode, proc.args)
    record(item)


# --- handlers for consumers.concurrency above 1 --------------------------------------------
# The async ones use a redis.asyncio client made by the async setup connect_async: it belongs
# to the event loop it was made on, so it works only if setup and items share that loop.

_async_client: redis.asyncio.Redis | None = None


async def connect_async() -> None:
    """An async setup: connect a redis.asyncio client on the process's event loop."""
    global _async_client
    _async_client = redis.asyncio.Redis.from_url(os.environ["TEST_REDIS_URL"])
    await _async_client.ping()


def _aclient() -> redis.asyncio.Redis:
    assert _async_client is not None, "setup connect_async did not run"
    return _async_client


def shuffled_record(item: object) -> None:
    """Take a random moment (0 to 2 ms), so that items finish out of order; record it."""
    time.sleep(random.random() / 500)
    record(item)


async def shuffled_record_async(item: object) -> None:
    """shuffled_record, awaiting: a random moment, then the setup's client records it."""
    await asyncio.sleep(random.random() / 500)
    await _aclient().rpush("test:handled", str(item))


def record_when_released(item: object) -> None:
    """Record that the item started; wait until the key test:go exists; record it done."""
    client = _client()
    client.rpush("test:started", str(item))
    while not client.exists("test:go"):
        time.sleep(0.01)
    record(item)


async def record_when_released_async(item: object) -> None:
    """record_when_released, awaiting."""
    client = _aclient()
    await client.rpush("test:started", str(item))
    while not await client.exists("test:go"):
        await asyncio.sleep(0.01)
    await client.rpush("test:handled", str(item))


def hang_on_marker(item: object) -> None:
    """The item "hang" records its start and never returns; any other takes 50 ms and is
    recorded."""
    if item == "hang":
        hang(item)
    time.sleep(0.05)
    record(item)


async def hang_on_marker_async(item: object) -> None:
    """The item "hang" records its start and awaits forever; any other takes 50 ms and is
    recorded."""
    if item == "hang":
        await _aclient().rpush("test:started", str(item))
        await asyncio.Event().wait()
    await asyncio.sleep(0.05)
    await _aclient().rpush("test:handled", str(item))


async def block_loop_on_marker(item: object) -> None:
    """The mistake of sync code in a coroutine: the item "block" holds the event loop for
    $TEST_ITEM_SECONDS with time.sleep; every item is recorded."""
    if item == "block":
        time.sleep(float(os.environ.get("TEST_ITEM_SECONDS", "1")))
    await _aclient().rpush("test:handled", str(item))


async def record_async(item: object) -> None:
    """Record the item after yielding to the event loop once, with a client of its own loop
    (no setup needed)."""
    await asyncio.sleep(0)
    async with redis.asyncio.Redis.from_url(os.environ["TEST_REDIS_URL"]) as client:
        await client.rpush("test:handled", str(item))


def fail_first_attempt(item: object) -> None:
    """Fail the first attempt at each distinct item; record the others."""
    if _client().set(f"test:tried:{item}", 1, nx=True):
        raise ValueError(f"first attempt at {item}")
    record(item)
