"""A consumer process's one asyncio event loop: for async handlers, async setups and the
awaitables a handler returns.

A setup and the items must share one loop: what a setup makes (a connection pool, a client
session) belongs to the loop it was made on. So a process has at most one, made on first use:

- one item at a time (``concurrency: 1``): the loop runs in the main thread only while an item
  or the setup runs (``run``), so a process that never awaits pays nothing for it;
- several (``serve()``): the loop runs for good in a thread of its own. Tasks run there
  (goodsd.slots.TaskSlots), and a thread whose sync handler returned an awaitable hands it over
  and waits for it (``run``).

An item's awaitable run by ``run`` runs under the item timeout (``timed``): at
``consumers.timeout`` it is cancelled and fails with ItemTimeout. (Task slots keep the same
timeout their own, cheaper way.) A handler that blocks the loop (sync code in an
``async def``) stops every task of the process; while the loop serves, it stamps the time every
STAMP_EVERY, so another thread can tell for how long it has not (``blocked_for``) and which
item's task holds it (``blocking_item``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

from goodsd.store import Delivery

T = TypeVar("T")

# How often the serving loop stamps the time: the finest lag it can show.
STAMP_EVERY = 0.1
# How long close() waits for the loop's thread to end after stopping it.
CLOSE_WAIT = 5.0


class ItemTimeout(Exception):
    """An item's awaitable ran past ``consumers.timeout`` and was cancelled."""


class EventLoop:
    """The process's event loop (made on first use); ``timeout``: seconds an item may run."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None  # the loop's own thread, once it serves
        self.stamp = 0.0  # monotonic time of the serving loop's latest stamp
        # The item each task slot's task is running, for blocking_item(): kept by the task
        # slots on the loop's thread, read from others (a dict lookup, atomic under the GIL).
        self.items: dict[asyncio.Task[object], Delivery] = {}
        self._serving = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` to completion under the item timeout, from any thread: here while
        the loop does not serve, else on the loop's thread while this thread waits. Raises what
        it raises, or ItemTimeout."""
        if self.thread is None:
            return self.loop.run_until_complete(self.timed(awaitable))
        return asyncio.run_coroutine_threadsafe(self.timed(awaitable), self.loop).result()

    def run_served(self, awaitable: Awaitable[T]) -> T:
        """``run``, on the loop's own thread (started now if it does not serve yet): what a
        thread running a sync handler does with the awaitable it returned, as other threads
        may be doing at the same time."""
        self.serve()
        return self.run(awaitable)

    def run_setup(self, awaitable: Awaitable[T]) -> T:
        """Run an async setup to completion on the loop, with no time limit (a setup may wait
        for a database to come up)."""
        if self.thread is None:
            return self.loop.run_until_complete(_awaited(awaitable))
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result()

    async def timed(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, cancelling it at the item timeout (ItemTimeout then, even if
        it swallowed the cancellation)."""
        try:
            async with asyncio.timeout(self.timeout) as limit:
                result = await awaitable
        except TimeoutError as exc:
            if limit.expired():
                raise ItemTimeout(f"timed out after {self.timeout:g}s and was cancelled") from exc
            raise
        if limit.expired():
            raise ItemTimeout(f"timed out after {self.timeout:g}s; it ignored its cancellation")
        return result

    def serve(self) -> None:
        """Run the loop in a thread of its own from now on (once; later calls do nothing)."""
        with self._serving:
            if self.thread is not None:
                return
            loop = self.loop
            self.stamp = time.monotonic()
            self.thread = threading.Thread(
                target=self._run_forever, args=(loop,), name="event loop", daemon=True
            )
            self.thread.start()

    def _run_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(self._stamp)
        loop.run_forever()

    def _stamp(self) -> None:
        self.stamp = time.monotonic()
        self.loop.call_later(STAMP_EVERY, self._stamp)

    def blocked_for(self, now: float) -> float:
        """Seconds the serving loop is behind its stamp at monotonic ``now`` (0.0 when on
        time, or when it does not serve)."""
        if self.thread is None:
            return 0.0
        return max(0.0, now - self.stamp - STAMP_EVERY)

    def blocking_item(self) -> Delivery | None:
        """The item whose task the loop is running now, if it runs one."""
        if self._loop is None:
            return None
        task = asyncio.current_task(self._loop)
        return self.items.get(task) if task is not None else None

    def close(self) -> None:
        """Stop the loop (its thread too) and close it; what still runs on it is dropped.
        A loop that a handler blocks is left to the process's exit."""
        if self._loop is None:
            return
        if self.thread is not None:
            if self.blocked_for(time.monotonic()):
                return
            self._loop.call_soon_threadsafe(self._loop.stop)
            self.thread.join(CLOSE_WAIT)
            if self.thread.is_alive():
                return
        self._loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
