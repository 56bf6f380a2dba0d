"""A handler's printed lines as log lines: one per line, whole, when a handler runs in many
threads at once (``print`` writes a line's text and its newline in two calls).

Real threads; every wait is for an event, bounded."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from goodsd.output import MAX_LINE, LineRelay, LoggedStream

WAIT = 10.0  # the longest any test waits for an event


class Lines:
    """``emit`` that keeps the lines passed on, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)


def run_threads(count: int, work: Callable[[int], object]) -> None:
    """Run ``work(n)`` for n in 0..count-1, each in its own thread, until all are done."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a printing thread did not finish"


def test_a_line_in_progress_is_not_joined_by_another_threads_line() -> None:
    # Given a thread that has written a line's text but not yet its newline
    lines = Lines()
    relay = LineRelay(lines)
    text_written, other_done = threading.Event(), threading.Event()

    def first() -> None:
        relay.feed(b"first")
        text_written.set()
        assert other_done.wait(WAIT), "the other thread did not print"
        relay.feed(b"\n")

    thread = threading.Thread(target=first)
    thread.start()
    assert text_written.wait(WAIT), "the first thread did not print"
    # When another thread prints a whole line meanwhile
    relay.feed(b"second")
    relay.feed(b"\n")
    other_done.set()
    thread.join(WAIT)
    # Then each line comes out whole
    assert lines.lines == ["second", "first"]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switched between as often as the interpreter can, so that lines that could
    mix do."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("fast_switching")
def test_threads_printing_at_once_each_get_their_lines_whole() -> None:
    # Given 20 threads that print 300 lines each through one stream, all starting together
    lines = Lines()
    stream = LoggedStream(LineRelay(lines))
    start = threading.Barrier(20)

    def work(n: int) -> None:
        start.wait(WAIT)
        for i in range(300):
            print(f"thread {n} line {i}", file=stream)

    # When they run
    run_threads(20, work)
    # Then every line came out once, whole, and each thread's in its order
    expected = {f"thread {n} line {i}" for n in range(20) for i in range(300)}
    assert len(lines.lines) == len(expected)
    assert set(lines.lines) == expected
    for n in range(20):
        mine = [line for line in lines.lines if line.startswith(f"thread {n} ")]
        assert mine == [f"thread {n} line {i}" for i in range(300)]


def test_flush_passes_on_the_callers_unfinished_line_only() -> None:
    # Given two threads, each with an unfinished line
    lines = Lines()
    relay = LineRelay(lines)
    relay.feed(b"main's")
    run_threads(1, lambda n: relay.feed(b"other's"))
    # When the main thread flushes (print(..., flush=True))
    relay.flush()
    # Then its own line is passed on and the other thread's waits for its end
    assert lines.lines == ["main's"]
    # And before an exit, flush_all passes on every unfinished line
    relay.flush_all()
    assert lines.lines == ["main's", "other's"]
    relay.flush_all()
    assert lines.lines == ["main's", "other's"]


def test_a_long_line_is_passed_on_in_pieces_per_thread() -> None:
    # Given a line longer than MAX_LINE written in small pieces
    lines = Lines()
    relay = LineRelay(lines)
    pieces = MAX_LINE // 1000 + 1
    for _ in range(pieces):
        relay.feed(b"x" * 1000)
    relay.feed(b"\n")
    # Then it comes out as a piece of MAX_LINE bytes and the rest
    assert [len(line) for line in lines.lines] == [MAX_LINE, pieces * 1000 - MAX_LINE]
