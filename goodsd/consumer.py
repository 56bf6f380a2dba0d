"""A consumer child: claim a batch, run each item, settle the batch, repeat.

Its life is ``initialize()``, then ``loop()`` (one step) until ``running`` turns false, then
``shutdown()``. Delivery rules: an item leaves its in-flight list only when settled (done,
failed into retry/dead, or given back), so a crash at any point loses nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from goodsd import hostinfo, runner
from goodsd.children import backoff_delay
from goodsd.config import Config
from goodsd.queue import Delivery, Failure, Queue
from goodsd.redisconn import TRANSIENT_ERRORS, connect
from goodsd.scoreboard import Scoreboard

log = logging.getLogger("goodsd.consumer")
T = TypeVar("T")

# Longest wait for an item on an empty queue; bounds how long a stop request goes unnoticed.
CLAIM_BLOCK = 1.0
# Slow items are acked once the oldest unsettled outcome is this old, so a crash later in the
# batch does not redo them; fast items are acked once per batch.
FLUSH_AFTER = 0.2
# Backoff between attempts while Redis is away.
REDIS_BACKOFF_BASE = 0.1
REDIS_BACKOFF_MAX = 5.0


@dataclass
class Pending:
    """Outcomes of the current batch not yet written to Redis."""

    done: list[Delivery] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    since: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.done or self.failed)


class Consumer:
    """One consumer process's loop; constructed in the child, after fork."""

    def __init__(
        self,
        config: Config,
        consumer_id: str,
        board: Scoreboard,
        ready: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.cfg = config.consumers
        self.consumer_id = consumer_id
        self.board = board
        self.ready = ready
        self.clock = clock
        self.running = True
        self.handled = 0
        self.done_count = 0
        self.failed_count = 0
        self.run_item: Callable[[bytes], None] | None = None
        self.queue: Queue | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def initialize(self) -> None:
        """Load the handler (HandlerLoadError propagates: the child exits 78), run setup,
        connect and register, then tell the master we are ready."""
        self.run_item = runner.build(self.cfg, self.config.pythonpath)
        if self.cfg.setup:
            runner.load_callable(self.cfg.setup)()
        client = connect(self.config.redis, f"goodsd-consumer-{os.getpid()}")
        self.queue = Queue(client, self.config.queue)
        info = {
            "host": hostinfo.hostname(),
            "pid": os.getpid(),
            "proc_start": hostinfo.process_start(os.getpid()),
            "master_pid": os.getppid(),
            "started": round(time.time(), 3),
        }
        self._until_done(lambda q: q.register(self.consumer_id, info, self.config.supervisor.lease))
        self.beat()
        self.ready()

    def loop(self) -> None:
        """One step: claim a batch (waiting at most CLAIM_BLOCK), run it, settle it."""
        assert self.queue is not None
        self.beat()
        batch = self._until_done(
            lambda q: q.claim(
                self.consumer_id, self.cfg.batch, self.config.supervisor.lease, CLAIM_BLOCK
            )
        )
        if batch:
            self.run_batch(batch)
        if self.cfg.max_items and self.handled >= self.cfg.max_items:
            log.info("handled %d items (max_items): exiting to be replaced", self.handled)
            self.running = False

    def shutdown(self) -> None:
        if self.queue is not None:
            self._until_done(lambda q: q.deregister(self.consumer_id))

    # -- one batch ----------------------------------------------------------------------

    def run_batch(self, batch: list[Delivery]) -> None:
        pending = Pending()
        settled = 0
        for position, delivery in enumerate(batch):
            if not self.running:
                self.settle(pending, release=batch[position:], complete=True)
                return
            started = self.clock()
            self.beat(busy_since=started, position=position - settled)
            self.run_one(delivery, pending, started)
            if pending and not pending.since:
                pending.since = started
            if position + 1 < len(batch) and pending and self.clock() - pending.since > FLUSH_AFTER:
                settled += len(pending.done) + len(pending.failed)
                self.settle(pending, release=[], complete=False)
                pending = Pending()
        self.beat()
        self.settle(pending, release=[], complete=True)

    def run_one(self, delivery: Delivery, pending: Pending, started: float) -> None:
        assert self.run_item is not None
        self.handled += 1
        try:
            self.run_item(delivery.payload)
        except runner.MalformedItem as exc:
            log.warning("malformed item %s goes to the dead list: %s", _show(delivery), exc)
            pending.failed.append(Failure(delivery, f"malformed: {exc}", final=True))
            self.failed_count += 1
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("handler failed on %s: %s", _show(delivery), error)
            pending.failed.append(Failure(delivery, error))
            self.failed_count += 1
        else:
            pending.done.append(delivery)
            self.done_count += 1

    def settle(self, pending: Pending, release: list[Delivery], *, complete: bool) -> None:
        if not (pending or release):
            return
        self._until_done(
            lambda q: q.settle(
                self.consumer_id,
                pending.done,
                pending.failed,
                release,
                complete=complete,
                retries=self.cfg.retries,
                retry_delay=self.cfg.retry_delay,
            )
        )

    # -- helpers ------------------------------------------------------------------------

    def beat(self, busy_since: float = 0.0, position: int = -1) -> None:
        self.board.write(
            heartbeat=self.clock(),
            busy_since=busy_since,
            position=position,
            done=self.done_count,
            failed=self.failed_count,
        )

    def _until_done(self, step: Callable[[Queue], T]) -> T:
        """Run a Redis step, retrying with capped exponential backoff while Redis is away.
        Keeps heartbeating so the master knows this wait is not a hang."""
        assert self.queue is not None
        failures = 0
        while True:
            try:
                return step(self.queue)
            except TRANSIENT_ERRORS as exc:
                failures += 1
                delay = backoff_delay(failures, REDIS_BACKOFF_BASE, REDIS_BACKOFF_MAX)
                if failures == 1 or delay >= REDIS_BACKOFF_MAX:
                    log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                self._pause(delay)
                if failures > 1 and failures % 20 == 0:
                    log.warning("redis still unavailable after %d attempts", failures)

    def _pause(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while (left := deadline - self.clock()) > 0:
            self.beat()
            time.sleep(min(left, 0.25))


def _show(delivery: Delivery, limit: int = 80) -> str:
    text = repr(delivery.payload)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install_signals(consumer: Consumer) -> None:
    """First SIGTERM: finish the current item, give back the rest, exit. Second: exit now.
    HUP/INT/TTIN/TTOU belong to the master (a terminal or systemd may send them to all)."""

    def on_term(signum: int, frame: object) -> None:
        if not consumer.running:
            os._exit(1)
        consumer.running = False

    signal.signal(signal.SIGTERM, on_term)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)


def run(consumer: Consumer) -> int:
    """The child's whole life; returns its exit code."""
    install_signals(consumer)
    consumer.initialize()
    while consumer.running:
        consumer.loop()
    consumer.shutdown()
    return 0
