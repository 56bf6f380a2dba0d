"""Handlers' output into the log, line by line.

What a Python handler prints and what a command handler writes to its stdout reach the log as
one info line per line of output, from the logger ``goodsd.output``, so they carry the
worker's name and journal priority like every log line, control characters escaped, and are
kept whatever ``logging.level`` says. Without this, a handler's ``print`` under systemd (a
pipe, block-buffered) would sit in a buffer until the worker exits, and be lost when it dies.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from goodsd.logs import printable

LOGGER = "goodsd.output"
# A line longer than this is passed on in pieces of this many bytes, so memory stays bounded.
MAX_LINE = 65536
# Longest a flush waits for a writer in progress (seconds).
FLUSH_WAIT = 0.1


class LineRelay:
    """Bytes written in pieces -> ``emit(line)`` once per line (without its line ending),
    decoded as UTF-8 with ``\\xff`` escapes for other bytes. Thread-safe, and each thread's
    lines are kept apart: ``print`` writes a line's text and its newline in two calls, so with
    one unfinished line for all, threads printing at once (a handler run in K threads) would
    mix their lines together."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        # thread id -> the start of that thread's unfinished line, at most MAX_LINE bytes
        self._pending: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        me = threading.get_ident()
        with self._lock:
            *lines, rest = (self._pending.pop(me, b"") + data).split(b"\n")
            for line in lines:
                self._pass_on(line)
            while len(rest) > MAX_LINE:
                self._pass_on(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            if rest:
                self._pending[me] = rest

    def flush(self) -> None:
        """Pass on the calling thread's unfinished line, if any (other threads may be in the
        middle of theirs). From a signal handler that interrupted a ``feed`` on the same
        thread the lock is never freed: give up after a moment."""
        self._flush(threading.get_ident())

    def flush_all(self) -> None:
        """Pass on every thread's unfinished line: before the process exits."""
        self._flush(None)

    def _flush(self, thread: int | None) -> None:
        if not self._lock.acquire(timeout=FLUSH_WAIT):
            return
        try:
            if thread is None:
                unfinished = list(self._pending.values())
                self._pending.clear()
            else:
                unfinished = [self._pending.pop(thread, b"")]
            for line in unfinished:
                if line:
                    self._pass_on(line)
        finally:
            self._lock.release()

    def _pass_on(self, line: bytes) -> None:
        self._emit(line.removesuffix(b"\r").decode("utf-8", "backslashreplace"))


def log_line(line: str) -> None:
    """A line of a handler's output as a log line of this worker."""
    logging.getLogger(LOGGER).info("%s", line)


class _StderrLines:
    """``emit`` for what Python code writes to ``sys.stderr`` (tracebacks it prints itself,
    warnings, ``print(file=sys.stderr)``): a warning line each. Should logging itself write to
    ``sys.stderr`` while it handles one (its own error report), that text goes to the real
    stderr, escaped, instead of back into logging."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.inside = threading.local()

    def __call__(self, line: str) -> None:
        if getattr(self.inside, "active", False):
            with contextlib.suppress(OSError, ValueError):
                self.real.write(printable(line) + "\n")
            return
        self.inside.active = True
        try:
            logging.getLogger(LOGGER).warning("%s", line)
        finally:
            self.inside.active = False


class _BinaryStdout(io.RawIOBase):
    """``sys.stdout.buffer`` of a worker: bytes go to the same relay."""

    def __init__(self, relay: LineRelay) -> None:
        super().__init__()
        self._relay = relay

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        self._relay.feed(chunk)
        return len(chunk)

    def flush(self) -> None:
        self._relay.flush()


class LoggedStream(io.TextIOBase):
    """A worker's ``sys.stdout`` or ``sys.stderr``: each line written becomes a log line (see
    module doc)."""

    def __init__(self, relay: LineRelay) -> None:
        super().__init__()
        self._relay = relay
        self.buffer = _BinaryStdout(relay)

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._relay.feed(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def flush(self) -> None:
        self._relay.flush()

    def flush_all(self) -> None:
        """Pass on every thread's unfinished line (see LineRelay.flush_all)."""
        self._relay.flush_all()


def capture_stdout() -> None:
    """In a worker: what Python code prints (to ``sys.stdout``: info lines; to ``sys.stderr``:
    warning lines) goes to the log, line by line, at any level. Output written straight to
    file descriptors 1 and 2 (``os.write``, C code, programs a handler starts without
    capturing their output) is not Python's to see and reaches the journal as it is."""
    logging.getLogger(LOGGER).setLevel(logging.INFO)
    sys.stdout = LoggedStream(LineRelay(log_line))
    sys.stderr = LoggedStream(LineRelay(_StderrLines(sys.__stderr__ or sys.stderr)))


def flush_everything() -> None:
    """Before a worker's ``os._exit``: nothing printed or logged may be left in a buffer."""
    flushable: list[object] = [sys.stdout, sys.stderr, *logging.getLogger().handlers]
    for target in flushable:
        # a closed or broken stream, or one interrupted mid-write by the signal that ends the
        # process: nothing more can be saved, and the exit must go on
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            if isinstance(target, LoggedStream):
                target.flush_all()  # the unfinished lines of threads still running too
            else:
                target.flush()  # type: ignore[attr-defined]
