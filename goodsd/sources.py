"""Where a producer's items come from, and how they reach its main thread.

A source is a Python callable returning an iterable of ``str``/``bytes`` (usually a generator),
or a command whose stdout lines are items. It is opened only when its producer becomes active,
so the standbys of a singleton producer run nothing. An exhausted source (the iterable ends,
the command exits 0) finishes the producer; a raise or a non-zero exit fails it, and the
master restarts it with backoff.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator

from goodsd import runner
from goodsd.config import ProducerConfig
from goodsd.hostinfo import parent_death_command, signal_name
from goodsd.redisconn import without_secrets
from goodsd.runner import HandlerLoadError

# How long a command source gets to exit after SIGTERM before SIGKILL.
COMMAND_STOP_TIMEOUT = 2.0


class SourceError(Exception):
    """The source raised, or its command failed: the producer exits 1 and is restarted."""


def counter() -> Iterator[bytes]:
    """Endless ``good10, good11, good12, ...``: the classic example's items, for demos and
    benchmarks (``producer.source: goodsd.sources:counter``)."""
    for i in itertools.count():
        yield b"good1%d" % i


class CommandSource:
    """A running command's stdout, one item per line (empty lines are skipped). Exit 0 ends
    the source; any other exit raises SourceError after the lines before it were yielded.

    Opened in the producer's main thread: the command gets SIGTERM when that thread (its
    parent) dies, even by SIGKILL, so a source command never outlives its producer."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self.argv = argv
        try:
            self.proc = subprocess.Popen(
                parent_death_command(argv, signal.SIGTERM),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=without_secrets(os.environ),
            )
        except OSError as exc:
            raise HandlerLoadError(f"cannot run producer command {argv[0]!r}: {exc}") from exc

    def __iter__(self) -> Iterator[bytes]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            item = line.rstrip(b"\n").removesuffix(b"\r")
            if item:
                yield item
        code = self.proc.wait()
        if code < 0:
            raise SourceError(f"command {self.argv[0]!r} killed by {signal_name(-code)}")
        if code > 0:
            raise SourceError(f"command {self.argv[0]!r} exited with status {code}")

    def stop(self) -> None:
        """End the command (from any thread): its reader then sees end of file."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(COMMAND_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load(cfg: ProducerConfig, pythonpath: tuple[str, ...]) -> Callable[[], Iterable[object]]:
    """A function that opens the configured source. Checked now (HandlerLoadError: the child
    exits 78), opened later: a callable is imported here and called on open; a command must
    be found now and is started on open."""
    if cfg.command:
        argv = cfg.command
        if shutil.which(argv[0]) is None:
            raise HandlerLoadError(f"producer command {argv[0]!r} not found or not executable")
        return lambda: CommandSource(argv)
    if not cfg.source:
        raise HandlerLoadError("no producer source or command configured")
    runner.add_pythonpath(pythonpath)
    make = runner.load_callable(cfg.source)
    spec = cfg.source

    def open_source() -> Iterable[object]:
        made = make()
        try:
            return iter(made)  # type: ignore[call-overload]
        except TypeError:
            raise HandlerLoadError(
                f"source {spec!r} returned {type(made).__name__}, not an iterable"
            ) from None

    return open_source


def to_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise SourceError(f"the source yielded {type(item).__name__}; items must be str or bytes")


class Feed:
    """Runs an opened source in a thread and hands its items over in batches.

    Why a thread: a source may block for minutes between items (a tail of a log). The
    producer's main thread must meanwhile keep heartbeating, notice SIGTERM, hold a batch while
    the queue is full, and push a partial batch when the source is slow. The thread waits once
    it holds one batch, with the next item already in hand, so at most two batches and one item
    (the batch being pushed, the one held here, the item waiting for room) have been taken from
    the source and are not yet in Redis. Closing keeps that item: after ``stop()``, ``take()``
    hands over everything the source gave.
    """

    def __init__(self, source: Iterable[object], batch: int) -> None:
        self.source = source
        self.batch = batch
        self.cond = threading.Condition(threading.Lock())
        self.items: list[bytes] = []  # taken from the source, not yet handed over
        self.ended = False  # the source is exhausted or failed
        self.error: BaseException | None = None  # why it failed, None when exhausted
        self.closed = False  # the producer stopped listening: drop, and stop the source
        self.thread = threading.Thread(target=self._run, name="goodsd-source", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        error: BaseException | None = None
        cond, batch = self.cond, self.batch
        try:
            for item in self.source:
                data = item if type(item) is bytes else to_bytes(item)
                with cond:
                    while len(self.items) >= batch and not self.closed:
                        cond.wait()
                    self.items.append(data)  # taken from the source: kept even when closed
                    if self.closed:
                        break
                    held = len(self.items)
                    if held == 1 or held >= batch:
                        cond.notify_all()
        except BaseException as exc:
            error = exc
        if self.closed:
            close = getattr(self.source, "close", None)
            if close is not None:  # a generator's finally blocks run, in its own thread
                with contextlib.suppress(Exception):
                    close()
        with cond:
            self.ended = True
            self.error = error
            cond.notify_all()

    def take(self, idle: float, linger: float) -> list[bytes]:
        """Up to one batch: waits up to ``idle`` seconds for a first item, then up to
        ``linger`` more for the batch to fill. Empty when nothing came (or it ended)."""
        with self.cond:
            if idle > 0:
                self.cond.wait_for(lambda: self.items or self.ended, idle)
            if linger > 0 and self.items and len(self.items) < self.batch:
                self.cond.wait_for(lambda: len(self.items) >= self.batch or self.ended, linger)
            taken, self.items = self.items, []
            self.cond.notify_all()
            return taken

    @property
    def exhausted(self) -> bool:
        """Ended, and everything it gave was taken."""
        with self.cond:
            return self.ended and not self.items

    def close(self) -> None:
        """Stop listening: the thread keeps the item it holds, then stops; a command source is
        stopped now, a generator once its thread gets control back."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        stop = getattr(self.source, "stop", None)
        if stop is not None:
            stop()

    def stop(self, wait: float) -> list[bytes]:
        """Close, give the thread up to ``wait`` seconds to finish (it may be inside the
        source, which nobody can interrupt), then take everything it kept."""
        self.close()
        self.thread.join(wait)
        with self.cond:
            taken, self.items = self.items, []
            return taken
