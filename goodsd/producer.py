"""A producer child: take items from a source, push them in batches, hold back while the queue
is too long.

Its life is ``initialize()``, then ``loop()`` (one bounded step) until ``running`` turns false,
then ``shutdown()``. Rules:

- Backpressure is atomic: one script checks the ready list's length and pushes the batch only
  below ``high_watermark`` (goodsd/store/scripts/push.lua), so racing producers overshoot by at most
  one batch together. At or above it the producer holds its batch and reads the length again
  when, at the rate it has been draining, it should be down to ``low_watermark`` (never sooner
  than POLL_MIN nor later than POLL_MAX) until it is: no spinning, no recursion.
- A batch taken from the source is pushed by one script call, retried with the same batch id
  while Redis is away; the script records the id, so a retry after a lost reply is a no-op.
- With ``singleton``, only the holder of the Redis lock pushes (the push script checks the
  token, so even a holder paused past its TTL cannot push); the others wait in standby.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from goodsd import hostinfo, sources, stopsignal
from goodsd.config import Config
from goodsd.redisconn import REDIS_ERRORS, Outage, outage_of, until_done
from goodsd.scoreboard import FLAG_FINISHED, FLAG_PAUSED, FLAG_STANDBY, Scoreboard
from goodsd.sources import Feed, SourceError
from goodsd.store import NOT_HOLDER, PUSHED, ProducerRecord, ProducerStore

log = logging.getLogger("goodsd.producer")
T = TypeVar("T")

# How long the main thread waits for a source's next item before it checks in (heartbeat, stop).
IDLE_WAIT = 0.5
# Once an item is there, how long to wait for the rest of a batch before pushing what there is.
LINGER = 0.02
# A paused producer reads the ready list's length again when, at the rate it drained since
# the last read, it should be down to the low watermark; never sooner or later than these.
POLL_MIN = 0.002
POLL_MAX = 0.05
# At most one pause/resume pair is logged per this many seconds; a producer much faster than
# its consumers pauses many times a second.
PAUSE_LOG_QUIET = 10.0
# Longest a standby blocks waiting for the singleton lock to be freed before it tries again.
STANDBY_WAIT = 1.0
# How often the registry record (goodsd:{<queue>}:producers) is refreshed besides on changes.
REPORT_EVERY = 1.0
# How long stopping waits for the source's thread to hand over the item it holds; longer only
# when the source itself is busy (a generator blocked between items).
FEED_STOP_WAIT = 1.0
# The high watermark of a push that must not be refused: the last batches of a stopping producer.
NO_LIMIT = 2**62
# What the master sees of each state in the scoreboard.
STATE_FLAGS = {"paused": FLAG_PAUSED, "standby": FLAG_STANDBY, "finished": FLAG_FINISHED}


@dataclass
class Backpressure:
    """Pause at the high watermark, resume at the low one: the gap between them keeps a
    producer from flapping around a single mark. Pure: lengths and times come in."""

    high: int
    low: int
    paused: bool = False
    seen: tuple[int, float] = (0, 0.0)  # (length, time) of the last read while paused
    rate: float | None = None  # items/s drained between the last two reads; None: one read

    def full(self, length: int, now: float) -> bool:
        """A push found or left the list at ``length``; True when that starts a pause."""
        if self.paused or length < self.high:
            return False
        self.paused, self.seen, self.rate = True, (length, now), None
        return True

    def drained(self, length: int, now: float) -> bool:
        """While paused, the list is at ``length``; True when that ends the pause."""
        if not self.paused:
            return False
        if length <= self.low:
            self.paused = False
            return True
        last_length, last_time = self.seen
        if now > last_time:
            self.rate = (last_length - length) / (now - last_time)
        self.seen = (length, now)
        return False

    def poll_delay(self) -> float:
        """How long to wait before the next read: soon after the pause began (to learn the
        drain rate), then until the low watermark should be reached, within the bounds."""
        if self.rate is None:
            return POLL_MIN
        if self.rate <= 0:
            return POLL_MAX
        length, _ = self.seen
        return min(POLL_MAX, max(POLL_MIN, (length - self.low) / self.rate))


@dataclass
class PauseLog:
    """Decides which pauses and resumes get a log line: the first, then at most one pair per
    ``quiet`` seconds, the next one telling how many went unlogged."""

    quiet: float
    logged_at: float | None = None  # when the last logged pause began
    logging: bool = False  # the current pause was logged, so its resume is too
    unlogged: int = 0  # pauses since the last logged one

    def pause(self, now: float) -> bool:
        self.logging = self.logged_at is None or now - self.logged_at >= self.quiet
        if self.logging:
            self.logged_at = now
        else:
            self.unlogged += 1
        return self.logging

    def note(self) -> str:
        """Text to add to a logged pause about the pauses not logged before it."""
        if not self.unlogged:
            return ""
        text = f" ({self.unlogged} more pause(s) since the last message)"
        self.unlogged = 0
        return text

    def resume(self) -> bool:
        logged, self.logging = self.logging, False
        return logged


def stale_producers(
    records: dict[str, ProducerRecord],
    host: str,
    alive: Callable[[int, int | None], bool],
) -> list[str]:
    """Registry entries of this host left by producers that are gone: a finished one stays
    while its master lives (status shows it finished), any other only while it lives."""
    stale = []
    for producer, record in records.items():
        if record.host != host:
            continue
        if record.state == "finished":
            pid, start = record.master_pid, record.master_start
        else:
            pid, start = record.pid, record.proc_start
        if pid is None or not alive(pid, start):
            stale.append(producer)
    return stale


class Producer:
    """One producer process's loop; constructed in the child, after fork."""

    def __init__(
        self,
        config: Config,
        producer_id: str,
        board: Scoreboard,
        ready: Callable[[], None],
        store: ProducerStore,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store  # the queue, through this process's own connection
        self.cfg = config.producer
        self.producer_id = producer_id
        self.board = board
        self.ready = ready
        self.clock = clock
        self.running = True  # false after SIGTERM or when the source is exhausted
        self.finished = False  # the source is exhausted and all it gave is pushed
        self.pressure = Backpressure(self.cfg.high_watermark, self.cfg.low_watermark)
        self.pause_log = PauseLog(PAUSE_LOG_QUIET)
        self.pushed = 0  # items this process pushed
        self.batch: list[bytes] = []  # taken from the source, not yet pushed
        self.batch_id = ""  # names self.batch in Redis, so a retried push is a no-op
        self.batch_seq = 0
        self.open_source: Callable[[], Iterable[object]] | None = None
        self.feed: Feed | None = None  # the open source, None while standby
        self.token = secrets.token_hex(16) if self.cfg.singleton else ""
        self.holding = False  # holds the singleton lock
        self.renew_at = 0.0  # when to extend the lock next
        self.reported: tuple[str, bool] | None = None  # (state, holding) last published
        self.report_at = 0.0
        self.identity = ProducerRecord()  # the registry record's fixed part
        self.outage = Outage()  # this process's Redis outage, across all its Redis steps

    # -- lifecycle ----------------------------------------------------------------------

    def initialize(self) -> None:
        """Load the source (HandlerLoadError: the child exits 78), clean up what earlier
        producers of this host left in the registry, open the source unless this is a
        singleton standby, then tell the master we are ready."""
        self.open_source = sources.load(self.cfg, self.config.pythonpath)
        pid, master_pid = os.getpid(), os.getppid()
        self.identity = ProducerRecord(
            host=hostinfo.hostname(),
            pid=pid,
            proc_start=hostinfo.process_start(pid),
            master_pid=master_pid,
            master_start=hostinfo.process_start(master_pid),
        )
        self._until_done(self.forget_stale)
        if not self.cfg.singleton:
            self.activate()
        self.beat(self.clock())
        self.report(self.clock())
        self.ready()

    def loop(self) -> None:
        """One step, bounded in time: keep the lock, fill a batch, push it or wait."""
        now = self.clock()
        self.beat(now)
        self.report(now)
        if self.cfg.singleton and not self.keep_lock(now):
            return
        assert self.feed is not None
        if not self.batch:
            self.batch = self.feed.take(IDLE_WAIT, LINGER)
            if not self.batch:
                if self.feed.exhausted:
                    self.source_ended()
                return
            self.name_batch()
        if self.pressure.paused:
            self.wait_for_drain()
            return
        length = self.push(self.cfg.high_watermark)
        now = self.clock()
        if length is not None and self.pressure.full(length, now):
            if self.pause_log.pause(now):
                log.info(
                    "paused at %d (high watermark %d)%s",
                    length,
                    self.pressure.high,
                    self.pause_log.note(),
                )
            self.beat(now)

    def shutdown(self) -> None:
        """Stop the source, push everything taken from it (even past the high watermark:
        stopping must not lose it), free the lock, leave the registry."""
        if self.feed is not None:
            rest = self.feed.stop(FEED_STOP_WAIT)
            if rest:
                self.batch += rest  # a held batch was refused, never recorded: rename it
                self.name_batch()
            if self.batch:
                log.info(
                    "stopping: pushing the %d item(s) taken from the source%s",
                    len(self.batch),
                    " past the high watermark" if self.pressure.paused else "",
                )
            while self.batch and self.feed is not None:  # None: another producer has the lock
                self.push(NO_LIMIT)
        if self.holding:
            self._until_done(lambda q: q.release_lock(self.token))
            self.holding = False
            log.info("released the singleton producer lock")
        if self.finished:
            self.beat(self.clock())
            self.report(self.clock(), force=True)
        else:
            self._until_done(lambda q: q.forget_producers([self.producer_id]))

    # -- the source ---------------------------------------------------------------------

    def activate(self) -> None:
        assert self.open_source is not None
        self.feed = Feed(self.open_source(), self.cfg.batch)
        self.feed.start()

    def deactivate(self, why: str) -> None:
        """Stop the source and drop what it gave that is not pushed (another producer now
        pushes from its own source)."""
        if self.feed is not None:
            dropped = len(self.batch) + len(self.feed.stop(FEED_STOP_WAIT))
            self.feed = None
            if dropped:
                log.warning("%s: %d item(s) taken from the source were not pushed", why, dropped)
        self.batch = []
        self.pressure.paused = False

    def source_ended(self) -> None:
        assert self.feed is not None
        error = self.feed.error
        if error is None:
            log.info("source exhausted: pushed %d items", self.pushed)
            self.finished = True
            self.running = False
            return
        if isinstance(error, SourceError):
            raise error
        raise SourceError(f"{type(error).__name__}: {error}") from error

    # -- pushing ------------------------------------------------------------------------

    def name_batch(self) -> None:
        self.batch_seq += 1
        self.batch_id = str(self.batch_seq)

    def push(self, high: int) -> int | None:
        """One script call for the held batch, kept when the list is full. Returns the list's
        length after it, or None when this producer turned out not to hold the lock."""
        batch, batch_id = self.batch, self.batch_id
        result = self._until_done(
            lambda q: q.push_batch(self.producer_id, batch_id, batch, high, self.token)
        )
        if result.status == NOT_HOLDER:
            self.lock_lost(self.clock())
            return None
        if result.status == PUSHED:
            self.pushed += len(batch)
            self.batch = []
        return result.length

    def wait_for_drain(self) -> None:
        """One read of the list's length while paused, then a bounded wait."""
        length = self._until_done(lambda q: q.backlog(), what="backlog")
        now = self.clock()
        if self.pressure.drained(length, now):
            if self.pause_log.resume():
                log.info("resumed at %d (low watermark %d)", length, self.pressure.low)
            self.beat(now)
            return
        time.sleep(self.pressure.poll_delay())

    # -- the singleton lock -------------------------------------------------------------

    def keep_lock(self, now: float) -> bool:
        """True while this producer may push. A holder renews every third of the TTL; a
        failed renewal stops the source at once. A standby tries to take the lock, then
        blocks until it is freed or about to expire."""
        ttl = self.config.supervisor.lease
        if self.holding:
            if now >= self.renew_at:
                if not self._until_done(lambda q: q.extend_lock(self.token, ttl)):
                    return self.lock_lost(now)
                self.renew_at = now + ttl / 3
            return True
        left_ms = self._until_done(lambda q: q.acquire_lock(self.token, ttl))
        if left_ms == 0:
            self.holding = True
            self.renew_at = now + ttl / 3
            log.info("took the singleton producer lock: active")
            try:
                self.activate()
            except BaseException:
                self._until_done(lambda q: q.release_lock(self.token))  # let a standby try
                self.holding = False
                raise
            self.report(now)
            return True
        self.report(now)
        wait = min(STANDBY_WAIT, max(0.01, left_ms / 1000))
        self._until_done(lambda q: q.wait_lock_free(wait))
        return False

    def lock_lost(self, now: float) -> bool:
        """The lock is no longer this producer's. If nobody else took it (it expired while
        Redis was away, or Redis restarted empty), take it back and go on with the same
        source; else stop the source. True when it holds the lock again."""
        ttl = self.config.supervisor.lease
        if self._until_done(lambda q: q.acquire_lock(self.token, ttl)) == 0:
            self.renew_at = now + ttl / 3
            log.warning("the singleton producer lock had expired; took it again")
            return True
        self.holding = False
        log.error("another producer holds the singleton lock now: stopped pushing")
        self.deactivate("lost the singleton producer lock")
        self.report(now)
        return False

    # -- reporting ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.finished:
            return "finished"
        if self.cfg.singleton and not self.holding:
            return "standby"
        return "paused" if self.pressure.paused else "active"

    def beat(self, now: float) -> None:
        flags = STATE_FLAGS.get(self.state, 0) | self.outage.flags
        self.board.write(heartbeat=now, done=self.pushed, flags=flags)

    def report(self, now: float, *, force: bool = False) -> None:
        """Publish this producer's record on a change of state, else every REPORT_EVERY.
        Best effort: status views must not hold up pushing, so a failure is not retried at
        once."""
        current = (self.state, self.holding)
        if not force and current == self.reported and now < self.report_at:
            return
        record = dataclasses.replace(
            self.identity,
            state=current[0],
            pushed=self.pushed,
            lock=self.holding,
            updated=round(time.time(), 3),
        )
        try:
            self.store.report_producer(self.producer_id, record)
        except REDIS_ERRORS as exc:
            # Said once, like any failed step; a refusal, or no Redis trouble, goes on up.
            self.outage.failed(outage_of(exc), now)
        else:
            self.outage.succeeded(now)
        # Tried: again on the next change or after REPORT_EVERY, not on every step (a paused
        # producer steps every few milliseconds).
        self.reported = current
        self.report_at = now + REPORT_EVERY

    def forget_stale(self, store: ProducerStore) -> None:
        stale = stale_producers(store.producers(), hostinfo.hostname(), hostinfo.process_alive)
        store.forget_producers(stale)

    # -- helpers ------------------------------------------------------------------------

    def _until_done(self, step: Callable[[ProducerStore], T], what: str = "") -> T:
        """Run a Redis step through the shared retry loop (``what`` names a step that only
        reads). Unlike a consumer, a producer keeps trying through a stop: the batch it holds
        exists nowhere else, so it waits for Redis until the master's graceful_timeout runs
        out."""
        store = self.store
        return until_done(
            lambda: step(store),
            beat=lambda: self.beat(self.clock()),
            outage=self.outage,
            what=what,
        )


def run(producer: Producer) -> int:
    """The child's whole life; returns its exit code (0 also when the source is exhausted:
    the scoreboard's FLAG_FINISHED tells the master not to restart it)."""
    stopsignal.install(producer)
    producer.initialize()
    try:
        while producer.running:
            producer.loop()
    except SourceError as exc:
        log.error("source failed: %s", exc, exc_info=exc.__cause__)
        producer.running = False
        producer.shutdown()
        return 1
    producer.shutdown()
    return 0
