"""A consumer process that runs several items at once (``consumers.concurrency``, K, above 1).

Its main thread owns Redis, the heartbeat, claims and settles; the items run in slots
(goodsd.slots: K threads, or asyncio tasks) that report each outcome back on a queue. One step
of ``loop()``: take in the outcomes that arrived, start claimed items in free slots, then
settle (claiming more in the same round trip) if that is due, else wait for the next outcome.

- **Claiming.** It holds at most K + batch items whose outcome it does not know: up to K
  running and up to ``batch`` claimed but not started, so that a freed slot starts its next
  item at once while a crash or a stop redoes or gives back few. It claims as slots free up:
  along with every settle (no extra round trip), and on its own when a slot is free and no
  claimed item waits. Only when nothing is in flight does it block on an empty queue (BLMOVE,
  CLAIM_BLOCK, as with one item at a time); while items run it waits for their outcomes
  instead, and a claim that found the queue empty is not repeated on its own for CLAIM_POLL.
- **Settling.** Items finish in any order; each is acked on its own (a settle takes any subset
  of what is held, by value) but written in batches: once ``batch`` outcomes wait, once the
  oldest is FLUSH_AFTER old, when a claim is due anyway, or when nothing runs.
- **Stopping** (SIGTERM, or ``max_items`` reached): no more claims or starts; what was claimed
  but not started goes back at once; running items finish and are settled as they do (the
  master kills the process at ``graceful_timeout``); an item that fails once the stop began
  goes back unblamed, as with one item at a time.
- **Suspects.** When a worker dies with several items running, its master cannot tell which
  one killed it: none counts a failed attempt, each comes back marked suspect
  (``Delivery.suspect``; goodsd.housekeeping ``requeue_of``). A suspect runs alone: it waits,
  first in line, until the running items end, and nothing else starts until it ends, so a
  death then blames it alone. Throughput drops only while suspects run.
- **Out of step.** When a settle finds that Redis no longer holds what this process does (a
  lapsed lease, a failover that lost writes), everything held goes back to the queue, running
  items included. Those cannot be stopped: they run on, and their outcomes are dropped when
  they come, since their items run again (at least once holds; nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence

from goodsd import runner
from goodsd.config import Config
from goodsd.consumer import CLAIM_BLOCK, FLUSH_AFTER, Consumer, Pending
from goodsd.eventloop import ItemTimeout
from goodsd.logs import show_item
from goodsd.scoreboard import Scoreboard
from goodsd.slots import Outcome, Slots, TaskSlots, ThreadSlots
from goodsd.store import ConsumerStore, Delivery, Settlement

log = logging.getLogger("goodsd.consumer")

# While items run, how long after a claim found the queue empty before claiming on its own
# again: the longest an item pushed then waits for a free slot of this process (other idle
# processes block on the queue and take it at once).
CLAIM_POLL = 0.05
# Longest wait for an outcome: how often the heartbeat is written while nothing happens.
WAIT_MAX = 1.0
# The same while tasks run on the event loop: how often its lag is looked at.
LOOP_CHECK_EVERY = 0.1
# An event loop this far behind is blocked by a handler: say so, naming its item. Not the
# 0.1 s of asyncio's debug mode, which times each callback exactly: this lag is seen from the
# main thread, and a loop that is only busy lags too. Measured here (2 cores, a busy main
# thread, tasks each sleeping 10 ms and doing a little work): 1,000 tasks lag up to 0.06 s,
# 3,000 up to 0.2 s; at 0.1 s the warning would fire at high concurrency with nothing blocking,
# blaming whichever item's task happened to run. (README, "An async handler must not block".)
LOOP_LAG_WARN = 0.5


class ConcurrentConsumer(Consumer):
    """One consumer process's loop with up to ``consumers.concurrency`` items in flight;
    constructed in the child, after fork."""

    def __init__(
        self,
        config: Config,
        consumer_id: str,
        board: Scoreboard,
        ready: Callable[[], None],
        store: ConsumerStore,
        clock: Callable[[], float],
    ) -> None:
        # Outcomes from the slots; also what a stop request wakes the main thread with (an
        # empty list): SimpleQueue.put may be called from a signal handler.
        self.outcomes: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()
        self._running = True
        super().__init__(config, consumer_id, board, ready, store, clock)
        self.size = self.cfg.concurrency
        self.slots: Slots | None = None  # made by load_handler
        self.unstarted: deque[Delivery] = deque()  # claimed, not started, oldest first
        # id -> delivery of each item running in a slot whose outcome is to be settled; keyed
        # by identity, as equal items may run at once (the slots report the same object).
        self.in_slots: dict[int, Delivery] = {}
        # Items still running whose claim was given back (out of step): outcomes dropped.
        self.orphans: dict[int, Delivery] = {}
        self.pending = Pending()  # outcomes taken in, not yet written
        self.claim_after = 0.0  # no claim of its own before this (the queue was empty)
        self.loop_blocked = False  # a blocked event loop was reported and has not recovered
        self.alone: Delivery | None = None  # a suspect running alone: nothing else starts

    @property
    def running(self) -> bool:
        """False once a stop was asked for (or ``max_items`` reached)."""
        return self._running

    @running.setter
    def running(self, value: bool) -> None:
        self._running = value
        if not value:
            self.outcomes.put([])  # wake the main thread if it waits for an outcome

    # -- lifecycle ----------------------------------------------------------------------

    def load_handler(self) -> None:
        """Make the slots: asyncio tasks for an ``async def`` handler; threads for a plain
        one (an awaitable it returns runs on the event loop while its thread waits) and for a
        command."""
        report = self.outcomes.put
        call = runner.build_async(self.cfg, self.config.pythonpath)
        if call is not None:
            self.slots = TaskSlots(self.size, call, self.event_loop, self.board, self.guard, report)
            return
        run_item = runner.build(self.cfg, self.config.pythonpath, self.event_loop.run_served)
        self.slots = ThreadSlots(self.size, run_item, self.board, self.guard, report)

    def loop(self) -> None:
        """One step: take in outcomes, start claimed items in free slots, then settle and
        claim if due; else wait for the next outcome, or on an empty queue if nothing is in
        flight."""
        now = self.clock()
        self.beat(now)
        self.watch_event_loop()
        self.take(self.arrived())
        self.start_items()
        claim = self.room()
        if self.settle_due(now, claim):
            self.flush(claim)
            self.start_items()
        elif claim and not self.in_flight():
            self.claim_waiting(claim)
            self.start_items()
        else:
            self.take(self.wait(self.wait_time(now, claim)))
        if self.cfg.max_items and self.handled >= self.cfg.max_items:
            log.info("handled %d items (max_items): exiting to be replaced", self.handled)
            self.running = False

    def shutdown(self) -> None:
        """Give back what was claimed but not started; let the running items finish, settling
        their outcomes as they come; then leave the registry."""
        release = list(self.unstarted)
        self.unstarted.clear()
        if release or self.pending:
            self.flush(release=release)
        while self.in_slots or self.orphans:
            now = self.clock()
            self.beat(now)
            self.watch_event_loop()
            self.take(self.wait(self.wait_time(now, 0)))
            if self.settle_due(self.clock(), 0):
                self.flush()
        if self.pending:
            self.flush()
        assert self.slots is not None
        self.slots.close()
        super().shutdown()

    # -- steps --------------------------------------------------------------------------

    def in_flight(self) -> bool:
        """Whether any item is running or claimed and waiting to start."""
        return bool(self.in_slots or self.orphans or self.unstarted)

    def free_slots(self) -> int:
        return self.size - len(self.in_slots) - len(self.orphans)

    def room(self) -> int:
        """How many items to claim now (0: none): up to K + batch not finished, within what
        ``max_items`` leaves; none once stopping."""
        if not self.running:
            return 0
        unfinished = len(self.in_slots) + len(self.unstarted)
        room = self.size + self.cfg.batch - unfinished - len(self.orphans)
        if self.cfg.max_items:
            room = min(room, self.cfg.max_items - self.handled - unfinished)
        return max(0, room)

    def start_items(self) -> None:
        """Start claimed items in the free slots, oldest first (none once stopping). A suspect
        (``Delivery.suspect``: it was running beside others when their worker died) runs
        alone: it waits, first in line, until no other item runs, and nothing else starts
        until it ends; should it kill this process too, it alone is blamed."""
        count = min(self.free_slots(), len(self.unstarted)) if self.running else 0
        if count <= 0 or self.alone is not None:
            return
        unstarted, starting = self.unstarted, []
        while len(starting) < count and unstarted:
            if unstarted[0].suspect:
                if not (starting or self.in_slots or self.orphans):
                    self.alone = unstarted.popleft()
                    starting.append(self.alone)
                break
            starting.append(unstarted.popleft())
        if not starting:
            return
        for delivery in starting:
            self.in_slots[id(delivery)] = delivery
        assert self.slots is not None
        self.slots.start(starting)

    def settle_due(self, now: float, claim: int) -> bool:
        """Whether to settle now: enough outcomes wait, or the oldest has waited long enough,
        or nothing runs; or a claim is due (a slot is free and no claimed item waits)."""
        pending = self.pending
        running = self.in_slots or self.orphans
        if pending and (
            len(pending) >= self.cfg.batch or now - pending.since >= FLUSH_AFTER or not running
        ):
            return True
        wants_claim = claim > 0 and self.free_slots() > len(self.unstarted)
        return bool(running) and wants_claim and now >= self.claim_after

    def wait_time(self, now: float, claim: int) -> float:
        """How long to wait for an outcome: until a settle or a claim falls due, at most
        WAIT_MAX (LOOP_CHECK_EVERY while the event loop serves)."""
        serving = self.event_loop.thread is not None
        until = now + (LOOP_CHECK_EVERY if serving else WAIT_MAX)
        if self.pending:
            until = min(until, self.pending.since + FLUSH_AFTER)
        if claim and self.free_slots() > len(self.unstarted):
            until = min(until, self.claim_after)
        return max(0.0, until - now)

    def wait(self, timeout: float) -> list[Outcome]:
        """The outcomes that arrive within ``timeout`` seconds (at least one, or none)."""
        try:
            first = self.outcomes.get(timeout=timeout)
        except queue.Empty:
            return []
        return first + self.arrived()

    def arrived(self) -> list[Outcome]:
        """The outcomes that have arrived, without waiting."""
        outcomes: list[Outcome] = []
        while True:
            try:
                outcomes += self.outcomes.get_nowait()
            except queue.Empty:
                return outcomes

    def take(self, outcomes: list[Outcome]) -> None:
        """Take in outcomes, to be written by the next settle. An error that is no Exception
        (the handler called sys.exit()) is raised here: it ends the process, as with one item
        at a time."""
        if not outcomes:
            return
        pending = self.pending
        if not pending:
            pending.since = self.clock()
        for delivery, error in outcomes:
            if delivery is self.alone:
                self.alone = None
            if self.in_slots.pop(id(delivery), None) is None:
                self.orphans.pop(id(delivery), None)  # given back already: it runs again
                continue
            if error is None:
                self.done_count += 1
                pending.done.append(delivery)
            elif not isinstance(error, Exception | asyncio.CancelledError):
                raise error
            elif self.running or isinstance(error, runner.MalformedItem):
                pending.failed.append(self.failure(delivery, error))
            else:  # the stop may be what failed it (see stop_cut)
                pending.cut.append(self.stop_cut(delivery, error))

    def flush(self, claim: int = 0, release: Sequence[Delivery] = ()) -> None:
        """Write the outcomes taken in and give back ``release`` (claimed, not started, no
        longer among ``unstarted``), claiming up to ``claim`` items, in one round trip."""
        pending, self.pending = self.pending, Pending()
        holding = [*self.in_slots.values(), *self.unstarted]
        settlement = Settlement(
            next(self.settle_ids),
            tuple(pending.done),
            tuple(pending.failed),
            (*pending.cut, *release),
            len(holding),
        )
        claimed = self.record(settlement, claim, holding)
        if claimed is None:  # out of step: everything held went back, running items too
            self.orphans.update(self.in_slots)
            self.in_slots.clear()
            self.unstarted.clear()
            return
        self.unstarted.extend(claimed)
        if len(claimed) < claim:
            self.claim_after = self.clock() + CLAIM_POLL

    def claim_waiting(self, count: int) -> None:
        """Nothing in flight: claim up to ``count`` items, waiting up to CLAIM_BLOCK for one.
        After a lost reply, what Redis holds for us is exactly what the claim took."""
        lease = self.config.supervisor.lease
        self.unstarted.extend(
            self._until_done(
                lambda q: q.claim(self.consumer_id, count, lease, CLAIM_BLOCK),
                retry=lambda q: q.held(self.consumer_id),
            )
        )

    def watch_event_loop(self) -> None:
        """Warn, once per episode, when the event loop is blocked (a handler running blocking
        code in a coroutine stops every item of this process), naming the item whose task
        blocks it. No task's timeout can fire meanwhile: once an item of an async handler is
        past its timeout, the worker gives up on the loop (``abandon_blocked_loop``) rather
        than wait for the master to kill it for the overdue items, innocent ones among them."""
        now = time.monotonic()  # the loop stamps real monotonic time
        lag = self.event_loop.blocked_for(now)
        if lag < LOOP_LAG_WARN:
            if self.loop_blocked:
                log.info("the event loop runs again")
                self.loop_blocked = False
            return
        blocker = self.event_loop.blocking_item()
        if not self.loop_blocked:
            self.loop_blocked = True
            log.warning(
                "the event loop has been blocked for %.1fs by %s: an async handler is running "
                "blocking code (waiting without await, or long CPU work), which stops every "
                "item of this process; await instead, or use a plain def handler (threads)",
                lag,
                describe(blocker),
            )
        if not (self.running and isinstance(self.slots, TaskSlots)):
            return  # a stop under way ends at graceful_timeout anyway
        oldest = self.board.read().busy_since
        if oldest and now - oldest > self.cfg.timeout:
            self.abandon_blocked_loop(blocker, lag)

    def abandon_blocked_loop(self, blocker: Delivery | None, lag: float) -> None:
        """The loop is blocked and an item is past its timeout: no task can be cancelled.
        The item blocking the loop counts a failed attempt; everything else held goes back
        to the queue, no attempt counted (the items running beside it did nothing wrong);
        then the worker stops, leaving the loop to the process's exit, and is replaced."""
        log.error(
            "the event loop is still blocked by %s, and items are past their timeout (%gs) "
            "that cannot be cancelled meanwhile: giving it up as failed and everything else "
            "back, and exiting to be replaced",
            describe(blocker),
            self.cfg.timeout,
        )
        culprit = self.in_slots.pop(id(blocker), None) if blocker is not None else None
        pending, self.pending = self.pending, Pending()
        if culprit is not None:
            timeout = ItemTimeout(f"blocked the event loop for {lag:.1f}s, past the timeout")
            pending.failed.append(self.failure(culprit, timeout))
        release = [*self.in_slots.values(), *self.unstarted]
        self.in_slots.clear()  # their outcomes, should the loop run again, go nowhere
        self.unstarted.clear()
        self.record(
            Settlement(
                next(self.settle_ids),
                tuple(pending.done),
                tuple(pending.failed),
                (*pending.cut, *release),
            )
        )
        self.running = False

    # -- helpers ------------------------------------------------------------------------

    def beat(self, now: float) -> None:
        """Heartbeat and counters, in the header only: each slot has its own writer."""
        self.board.write(
            heartbeat=now,
            done=self.done_count,
            failed=self.failed_count,
            given_back=self.given_back,
            flags=self.outage.flags,
        )


def describe(item: Delivery | None) -> str:
    """An item for a log line about the event loop."""
    return f"item {show_item(item.payload)}" if item else "code outside any item's task"
