"""A consumer child: claim a batch, run each item, settle the batch, repeat.

Its life is ``initialize()``, then ``loop()`` (one step) until ``running`` turns false, then
``shutdown()``. Delivery rules: an item leaves its in-flight list only when settled (done,
failed into retry/dead, or given back), so a crash at any point loses nothing.

This is the loop of one item at a time (``consumers.concurrency: 1``), in the main thread;
goodsd.concurrency builds on it to run several at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from goodsd import hostinfo, runner, stopsignal
from goodsd.config import Config
from goodsd.eventloop import EventLoop
from goodsd.forkguard import ForkGuard
from goodsd.logs import show_item
from goodsd.redisconn import GaveUp, Outage, until_done
from goodsd.scoreboard import IDLE_SINCE, Scoreboard
from goodsd.store import (
    MAX_ERROR,
    NO_DELIVERIES,
    Batch,
    ConsumerStore,
    Delivery,
    Failure,
    InFlightLost,
    Registration,
    RetryPolicy,
    Settlement,
    clip,
)
from goodsd.store.records import FINGERPRINT_BITS, without

log = logging.getLogger("goodsd.consumer")
T = TypeVar("T")

# Longest wait for an item on an empty queue; bounds how long a stop request goes unnoticed.
CLAIM_BLOCK = 1.0
# Slow items are acked once the oldest unsettled outcome is this old, so a crash later in the
# batch does not redo them; fast items are acked once per batch.
FLUSH_AFTER = 0.2
# A consumer stopped during an outage gives up this long before the master's graceful timeout
# would kill it, so it exits cleanly.
STOP_MARGIN = 1.0


@dataclass
class Pending:
    """Outcomes not yet written to Redis, each kind in claimed order, and when the oldest of
    them was reached (several items at a time, goodsd.concurrency; with one at a time, see
    BatchPending)."""

    done: list[Delivery] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    cut: list[Delivery] = field(default_factory=list)  # failed once a stop began: given back
    since: float = 0.0

    def __len__(self) -> int:
        return len(self.done) + len(self.failed) + len(self.cut)


@dataclass
class BatchPending:
    """With one item at a time: the outcomes of the current batch not yet written to Redis,
    those of the items of ``batch`` that ran from position ``first`` on. Each is done unless
    it failed or was cut, so a done item costs no record: the done ones are settled as a
    slice of the batch."""

    batch: Batch
    first: int = 0  # position in the batch of its oldest item
    failed: list[Failure] = field(default_factory=list)
    cut: list[Delivery] = field(default_factory=list)  # failed once a stop began: given back
    not_done: set[int] = field(default_factory=set)  # positions of the failed and the cut

    def done(self, end: int) -> Batch:
        """Its items done, when those up to position ``end`` (not included) ran."""
        if self.not_done:
            return self.batch.pick(p for p in range(self.first, end) if p not in self.not_done)
        if self.first == 0 and end == len(self.batch.values):
            return self.batch  # the usual case: all of it
        return self.batch[self.first : end]


class Consumer:
    """One consumer process's loop; constructed in the child, after fork."""

    def __init__(
        self,
        config: Config,
        consumer_id: str,
        board: Scoreboard,
        ready: Callable[[], None],
        store: ConsumerStore,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store  # the queue, through this process's own connection
        self.guard = ForkGuard()  # ends a copy of this process that a handler forked
        self.cfg = config.consumers
        self.consumer_id = consumer_id
        self.board = board
        self.ready = ready
        self.clock = clock
        self.policy = RetryPolicy(self.cfg.retries, self.cfg.retry_delay)
        self.running = True
        self.done_count = 0
        self.failed_count = 0
        self.given_back = 0  # items released unstarted, for the master's stop summary
        self.run_item: Callable[[bytes], None] | None = None
        self.event_loop = EventLoop(self.cfg.timeout)  # for async handlers and setups
        self.outage = Outage()  # this process's Redis outage, across all its Redis steps
        # A batch claimed together with the previous batch's acks, to run next.
        self.next_batch = NO_DELIVERIES
        # Settle ids: each settle's own (its repeats after a lost reply keep it). A random
        # prefix per process and a count, as a random id per settle cost a system call.
        prefix = secrets.token_hex(8)
        self.settle_ids = (f"{prefix}-{n}" for n in itertools.count(1))

    @property
    def handled(self) -> int:
        return self.done_count + self.failed_count

    # -- lifecycle ----------------------------------------------------------------------

    def initialize(self) -> None:
        """Load the handler (HandlerLoadError propagates: the child exits 78), run setup,
        register, then tell the master we are ready."""
        self.guard.install()
        self.load_handler()
        if self.cfg.setup:
            runner.run_setup(self.cfg.setup, self.event_loop.run_setup)
            if self.guard.cloned:
                self.guard.leave()
        registration = Registration(
            host=hostinfo.hostname(),
            pid=os.getpid(),
            proc_start=hostinfo.process_start(os.getpid()),
            pidns=hostinfo.pid_namespace(),
            master_pid=os.getppid(),
            master_start=hostinfo.process_start(os.getppid()),
            started=round(time.time(), 3),
        )
        lease = self.config.supervisor.lease
        self._until_done(lambda q: q.register(self.consumer_id, registration, lease))
        self.beat(self.clock())
        self.ready()

    def load_handler(self) -> None:
        """Build the per-item function; an awaitable the handler returns (an ``async def``
        handler's coroutine) runs to completion on the process's event loop, in this thread."""
        self.run_item = runner.build(self.cfg, self.config.pythonpath, self.event_loop.run)

    def loop(self) -> None:
        """One step: claim a batch (waiting at most CLAIM_BLOCK), run it, settle it."""
        self.beat(self.clock())
        batch, self.next_batch = self.next_batch, NO_DELIVERIES
        if not batch.values:
            want = self.wants_more()
            batch = self._until_done(
                lambda q: q.claim(
                    self.consumer_id, want, self.config.supervisor.lease, CLAIM_BLOCK
                ),
                retry=lambda q: q.held(self.consumer_id),
            )
        if batch.values:
            self.run_batch(batch)
        if self.cfg.max_items and self.handled >= self.cfg.max_items:
            log.info("handled %d items (max_items): exiting to be replaced", self.handled)
            self.running = False

    def shutdown(self) -> None:
        """Give back a batch claimed but not started, then leave the registry."""
        if self.next_batch:
            self.settle(BatchPending(self.next_batch), 0, release=self.next_batch)
            self.next_batch = NO_DELIVERIES
        self._until_done(lambda q: q.deregister(self.consumer_id))
        self.event_loop.close()

    # -- one batch ----------------------------------------------------------------------

    def run_batch(self, batch: Batch) -> None:
        """Run the items oldest first; ack slow ones as they go, fast ones once per batch.
        This is the hot loop: attribute lookups are hoisted, a handler that returns costs no
        further call and no record (see BatchPending), and the scoreboard write per item is
        the three fields that change."""
        assert self.run_item is not None
        pending = BatchPending(batch)
        settled = 0
        flush_at = 0.0  # when the oldest pending outcome turns FLUSH_AFTER old
        clock, busy, run_item, guard = self.clock, self.board.busy, self.run_item, self.guard
        values, payloads = batch.values, batch.payloads
        # The busy slot names the item by records.fingerprint of its claimed value, computed
        # inline: the function call cost a third as much again as the hash and mask themselves.
        bits = FINGERPRINT_BITS
        for position, payload in enumerate(payloads):
            if not self.running:
                self.settle(pending, position, release=batch[position:])
                return
            started = clock()
            if position == settled:  # nothing pending: this outcome will be the oldest
                flush_at = started + FLUSH_AFTER
            elif started > flush_at:
                settled = position
                if not self.settle(pending, position, kept=len(payloads) - position):
                    return  # what was left of the batch went back to the queue
                pending = BatchPending(batch, settled)
                flush_at = started + FLUSH_AFTER
            busy(started, hash(values[position]) & bits)
            try:
                run_item(payload)
            except Exception as exc:
                if guard.cloned:
                    guard.leave()
                pending.not_done.add(position)
                if self.running or isinstance(exc, runner.MalformedItem):
                    pending.failed.append(self.failure(batch[position], exc))
                else:  # the stop may be what failed it (see stop_cut)
                    pending.cut.append(self.stop_cut(batch[position], exc))
                continue
            if guard.cloned:
                guard.leave()
        self.settle(pending, len(payloads), claim_next=True)

    def wants_more(self) -> int:
        """How many items to claim along with this batch's acks (0: none)."""
        if not self.running:
            return 0
        if self.cfg.max_items:
            return max(0, min(self.cfg.batch, self.cfg.max_items - self.handled))
        return self.cfg.batch

    def stop_cut(self, delivery: Delivery, exc: Exception) -> Delivery:
        """An item whose handler failed after a stop began is given back, no attempt counted:
        the stop may be what failed it (a TERM sent to a whole process group or cgroup, as
        ``systemctl kill`` does, also reaches the handler's own processes)."""
        log.info(
            "handler failed on %s during the stop (%s: %s): given back, no attempt counted",
            show_item(delivery.payload),
            type(exc).__name__,
            exc,
        )
        return delivery

    def failure(self, delivery: Delivery, exc: Exception) -> Failure:
        """What a raising handler makes of its item: a retry, or dead at once if malformed."""
        self.failed_count += 1
        if isinstance(exc, runner.MalformedItem):
            log.warning(
                "malformed item %s goes to the dead list: %s", show_item(delivery.payload), exc
            )
            return Failure(delivery, f"malformed: {exc}", final=True)
        error = clip(f"{type(exc).__name__}: {exc}", MAX_ERROR)
        log.warning("handler failed on %s: %s", show_item(delivery.payload), error)
        return Failure(delivery, error)

    def settle(
        self,
        pending: BatchPending,
        end: int,
        release: Sequence[Delivery] = (),
        claim_next: bool = False,
        kept: int = 0,
    ) -> bool:
        """Write the outcomes of ``pending``'s items, those up to position ``end`` (not
        included) having run, give back ``release`` (and with ``claim_next``, claim the next
        batch: as many items as ``wants_more`` says once these are counted) in one round trip
        (``record``); ``kept`` items of the batch stay held (not run yet). Returns False when
        Redis's in-flight list no longer matched ours: everything held went back to the queue
        and the batch is abandoned.

        Idle first: if the process dies during the settle, the item it last ran must not count
        a failed attempt."""
        done = pending.done(end)
        self.done_count += len(done.values)
        wanted = self.wants_more() if claim_next else 0
        self.beat(self.clock())
        release = (*pending.cut, *release)
        settlement = Settlement(next(self.settle_ids), done, tuple(pending.failed), release, kept)
        claimed = self.record(settlement, wanted)
        self.next_batch = NO_DELIVERIES if claimed is None else claimed
        return claimed is not None

    def record(
        self, settlement: Settlement, claim_next: int = 0, holding: Collection[Delivery] = ()
    ) -> Batch | None:
        """Write ``settlement`` and claim up to ``claim_next`` items, in one round trip;
        returns what the claim took. ``holding``: the deliveries the consumer goes on holding
        (``settlement.kept`` of them), if it knows them. After a lost reply the settle is
        repeated harmlessly (same settle id) and what the claim took is read back from the
        in-flight list (all it holds, less ``holding``), so no claimed item is ever unknown to
        us.

        When Redis's in-flight list no longer matches ours (a lapsed lease, or a failover that
        lost recent writes), nothing is settled: everything held goes back to the queue (items
        already done here may run again) and this returns None."""
        lease = self.config.supervisor.lease

        def attempt(q: ConsumerStore, claim: int) -> Batch:
            return q.settle(self.consumer_id, settlement, self.policy, claim, lease)

        def resync(q: ConsumerStore) -> Batch:
            attempt(q, 0)
            return held_besides(q.held(self.consumer_id), holding) if claim_next else NO_DELIVERIES

        # Finished items would run again if this settle never reached Redis: on a stop during
        # an outage, keep trying for most of the graceful timeout (the master kills at its end).
        patience = max(0.0, self.config.supervisor.graceful_timeout - STOP_MARGIN)
        try:
            claimed = self._until_done(
                lambda q: attempt(q, claim_next),
                retry=resync,
                patience=patience if settlement.done or settlement.failed else 0.0,
            )
        except InFlightLost as exc:
            log.warning("%s: giving back everything held and starting afresh", exc)
            self._until_done(lambda q: q.give_back_all(self.consumer_id))
            return None
        if settlement.given_back:
            self.given_back += len(settlement.given_back)
            self.beat(self.clock())
        return claimed

    # -- helpers ------------------------------------------------------------------------

    def beat(self, now: float) -> None:
        """Heartbeat and counters; slot 0 idle (between items)."""
        self.board.write(
            heartbeat=now,
            busy_since=IDLE_SINCE,
            done=self.done_count,
            failed=self.failed_count,
            given_back=self.given_back,
            flags=self.outage.flags,
        )

    def _until_done(
        self,
        step: Callable[[ConsumerStore], T],
        retry: Callable[[ConsumerStore], T] | None = None,
        patience: float = 0.0,
    ) -> T:
        """Run a Redis step through the shared retry loop; a stop asked for during an outage
        ends the wait (GaveUp) after one more try and ``patience`` seconds: the master gives
        back what this consumer holds."""
        store = self.store
        return until_done(
            lambda: step(store),
            retry=(lambda: retry(store)) if retry else None,
            beat=lambda: self.beat(self.clock()),
            stop_requested=lambda: not self.running,
            patience=patience,
            outage=self.outage,
        )


def held_besides(held: Batch, holding: Collection[Delivery]) -> Batch:
    """``held`` less one delivery equal to each of ``holding``, in ``held``'s order."""
    return Batch.of(without(held, holding)) if holding else held


def run(consumer: Consumer) -> int:
    """The child's whole life; returns its exit code."""
    stopsignal.install(consumer)
    try:
        consumer.initialize()
        while consumer.running:
            consumer.loop()
        consumer.shutdown()
    except GaveUp as exc:
        log.warning("%s: exiting; the master requeues the items held", exc)
    return 0
