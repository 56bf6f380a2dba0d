"""Where a consumer's items run when it runs several at once (``consumers.concurrency`` above
1): slots that take deliveries from the main thread and report each one's outcome back.

- ThreadSlots: one thread per slot, for a plain ``def`` handler and for a command (the command
  handler is thread-safe: each call waits for its own program, killed at the timeout).
- TaskSlots: asyncio tasks on the process's one event loop (goodsd.eventloop), for an
  ``async def`` handler; each item is cancelled at the timeout.

Each slot owns one scoreboard slot while it runs an item, and is its only writer: it shows the
item's fingerprint and start, and is idle again before the outcome is reported (a death after
that must not blame an item that finished). The main thread owns Redis; outcomes reach it as
lists of Outcome on one queue, so that it can wait for the next one with a deadline.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from goodsd.eventloop import EventLoop, ItemTimeout
from goodsd.forkguard import ForkGuard
from goodsd.scoreboard import Scoreboard
from goodsd.store import Delivery
from goodsd.store.records import fingerprint

# How often task slots look for items past their timeout: a timeout fires up to this late.
EXPIRE_EVERY = 0.1


class Outcome(NamedTuple):
    """How one item ended: ``error`` None means done. An error that is no Exception (the
    handler called sys.exit()) ends the process, as it does with one item at a time."""

    delivery: Delivery
    error: BaseException | None


# Where outcomes go: a thread-safe put of a list of them (queue.SimpleQueue.put).
Report = Callable[[list[Outcome]], None]


class Slots(Protocol):
    """Runs up to ``size`` items at once."""

    size: int

    def start(self, deliveries: Sequence[Delivery]) -> None:
        """Run ``deliveries``, at most as many as slots are free (the caller counts)."""

    def close(self) -> None:
        """Stop taking items; called when none runs."""


class ThreadSlots:
    """``size`` threads, each owning one scoreboard slot, taking deliveries from one queue
    and running them with ``run_item`` (decode, then handle; raises on failure)."""

    def __init__(
        self,
        size: int,
        run_item: Callable[[bytes], None],
        board: Scoreboard,
        guard: ForkGuard,
        report: Report,
    ) -> None:
        self.size = size
        self.run_item = run_item
        self.board = board
        self.guard = guard
        self.report = report
        self.work: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()  # None: end
        self.threads = [
            threading.Thread(target=self._serve, args=(slot,), name=f"slot {slot}", daemon=True)
            for slot in range(size)
        ]
        for thread in self.threads:
            thread.start()

    def start(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.work.put(delivery)

    def _serve(self, slot: int) -> None:
        """One slot's thread: run what comes, until told to end."""
        busy, idle, run_item, guard = self.board.busy, self.board.idle, self.run_item, self.guard
        clock, take, report = time.monotonic, self.work.get, self.report
        while (delivery := take()) is not None:
            busy(clock(), fingerprint(delivery.claimed), slot)
            try:
                run_item(delivery.payload)
            except Exception as exc:
                error: BaseException | None = exc
            except BaseException as exc:  # sys.exit(): the process ends, this item blamed
                report([Outcome(delivery, exc)])
                return
            else:
                error = None
            idle(slot)
            if guard.cloned:  # a handler forked and its child came back here
                guard.leave()
            report([Outcome(delivery, error)])

    def close(self) -> None:
        """End every thread (each finishes its item first; none runs one now)."""
        for _ in self.threads:
            self.work.put(None)


class TaskSlots:
    """Up to ``size`` asyncio tasks on ``event_loop`` (serving in its own thread), each
    running one item with ``call`` (decode, then make the handler's coroutine) and owning a
    scoreboard slot meanwhile. Outcomes finished in one pass of the loop are reported together
    (one wake-up of the main thread for many).

    The item timeout is kept by one sweep of the slots every EXPIRE_EVERY, which cancels each
    task past its deadline, rather than by a timer per item (``asyncio.timeout`` costs about
    as much CPU as the rest of an item's bookkeeping); a timeout fires up to EXPIRE_EVERY
    late."""

    def __init__(
        self,
        size: int,
        call: Callable[[bytes], Awaitable[object]],
        event_loop: EventLoop,
        board: Scoreboard,
        guard: ForkGuard,
        report: Report,
    ) -> None:
        self.size = size
        self.call = call
        self.event_loop = event_loop
        self.timeout = event_loop.timeout
        self.board = board
        self.guard = guard
        self.report = report
        # The rest is the loop thread's alone.
        self.free = list(range(size - 1, -1, -1))  # slots not running a task; slot 0 first
        # Per slot: its task (a strong reference: the loop keeps only weak ones), and the loop
        # time by which its item must end (0.0: none, or cancelled already).
        self.tasks: list[asyncio.Task[None] | None] = [None] * size
        self.deadlines = [0.0] * size
        self.expired: set[asyncio.Task[None]] = set()  # cancelled at their deadline
        self.finished: list[Outcome] = []  # reported at the end of the loop's current pass
        event_loop.serve()
        event_loop.loop.call_soon_threadsafe(self._expire)

    def start(self, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` to the loop, in one wake-up of it."""
        self.event_loop.loop.call_soon_threadsafe(self._spawn, list(deliveries))

    def _spawn(self, deliveries: list[Delivery]) -> None:
        loop = self.event_loop.loop
        deadline = loop.time() + self.timeout
        for delivery in deliveries:
            slot = self.free.pop()
            self.deadlines[slot] = deadline
            self.tasks[slot] = loop.create_task(self._run(delivery, slot))

    async def _run(self, delivery: Delivery, slot: int) -> None:
        task, items = self.tasks[slot], self.event_loop.items
        assert task is not None
        items[task] = delivery  # for EventLoop.blocking_item
        self.board.busy(time.monotonic(), fingerprint(delivery.claimed), slot)
        try:
            await self.call(delivery.payload)
        except (Exception, asyncio.CancelledError) as exc:  # a handler may raise either
            error: BaseException | None = exc
        except BaseException as exc:  # sys.exit(): the process ends, this item blamed
            self._finish(Outcome(delivery, exc))
            return
        else:
            error = None
        if task in self.expired:
            self.expired.discard(task)
            error = ItemTimeout(
                f"timed out after {self.timeout:g}s and was cancelled"
                if error
                else f"timed out after {self.timeout:g}s; it ignored its cancellation"
            )
        del items[task]
        self.tasks[slot] = None
        self.deadlines[slot] = 0.0
        self.board.idle(slot)
        self.free.append(slot)
        if self.guard.cloned:  # a handler forked and its child came back here
            self.guard.leave()
        self._finish(Outcome(delivery, error))

    def _expire(self) -> None:
        """Cancel every task past its deadline (once), then come back in EXPIRE_EVERY."""
        loop = self.event_loop.loop
        now = loop.time()
        for slot, deadline in enumerate(self.deadlines):
            if deadline and deadline <= now:
                self.deadlines[slot] = 0.0
                task = self.tasks[slot]
                if task is not None:
                    self.expired.add(task)
                    task.cancel()
        loop.call_later(EXPIRE_EVERY, self._expire)

    def _finish(self, outcome: Outcome) -> None:
        if not self.finished:
            self.event_loop.loop.call_soon(self._send)
        self.finished.append(outcome)

    def _send(self) -> None:
        finished, self.finished = self.finished, []
        self.report(finished)

    def close(self) -> None:
        """Nothing to end: the loop is closed with the process's EventLoop."""
