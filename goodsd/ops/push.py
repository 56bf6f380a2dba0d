"""`goodsd push`: items from the arguments, or one per line from stdin, into the ready list.

Lines are read in large blocks and pushed in pipelined batches (one round trip per batch), so
a file of a million lines goes in within seconds. Empty lines carry no item and are skipped
(and counted). ``--wait-below N`` keeps the backlog at N or less, the way a producer would.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from goodsd.config import Config
from goodsd.ops.common import OpsError, open_queue, redis_errors
from goodsd.queue import Queue

# Items per LPUSH: one round trip each; large enough that the network is not the limit.
BATCH = 10_000
# How much of stdin one read takes; a pipe gives what it has, so slow input is not held back.
READ_SIZE = 1 << 20
# Progress is shown for a regular file at least this large (and only to a terminal).
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_EVERY = 0.2
# Backlog polling while --wait-below holds the push back.
WAIT_MIN, WAIT_MAX = 0.01, 0.25


@dataclass
class Tally:
    """What a push has done so far, for the summary and for an error half way."""

    pushed: int = 0  # items now in the ready list
    skipped: int = 0  # empty lines (or empty arguments) left out
    read: int = 0  # bytes of stdin consumed


def split_lines(blocks: Iterable[bytes], tally: Tally) -> Iterator[list[bytes]]:
    """Items of each block of input, as lists; a line split across blocks is joined. A line
    ends at \\n; a \\r before it is part of the line ending, not of the item."""
    rest = b""
    for block in blocks:
        tally.read += len(block)
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield _items(lines, tally)
    if rest:
        yield _items([rest], tally)


def _items(lines: list[bytes], tally: Tally) -> list[bytes]:
    items = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    kept = [item for item in items if item]
    tally.skipped += len(items) - len(kept)
    return kept


def read_blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read1(READ_SIZE):  # type: ignore[attr-defined]
        yield block


def push_all(
    queue: Queue, groups: Iterable[list[bytes]], tally: Tally, wait_below: int | None
) -> None:
    """Push every item in order; with ``wait_below``, only as many as keep the backlog <= it."""
    delay = WAIT_MIN
    for group in groups:
        start = 0
        while start < len(group):
            size = BATCH
            if wait_below is not None:
                room = wait_below - queue.backlog()
                if room <= 0:
                    time.sleep(delay)
                    delay = min(delay * 2, WAIT_MAX)
                    continue
                delay = WAIT_MIN
                size = min(size, room)
            batch = group[start : start + size]
            queue.push(batch)
            tally.pushed += len(batch)
            start += len(batch)


class Progress:
    """`pushed 120,000 items (12%)` on one terminal line, a few times a second."""

    def __init__(self, tally: Tally, total_bytes: int, stream: TextIO) -> None:
        self.tally = tally
        self.total = total_bytes
        self.stream = stream
        self.next_at = 0.0
        self.started = time.monotonic()

    def groups(self, groups: Iterable[list[bytes]]) -> Iterator[list[bytes]]:
        for group in groups:
            yield group
            now = time.monotonic()
            if now >= self.next_at:
                self.next_at = now + PROGRESS_EVERY
                self.draw(now)
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def draw(self, now: float) -> None:
        percent = 100 * self.tally.read // max(self.total, 1)
        rate = self.tally.pushed / max(now - self.started, 1e-6)
        self.stream.write(
            f"\rpushed {self.tally.pushed:,} items ({percent}%), {rate:,.0f} items/s\x1b[K"
        )
        self.stream.flush()


def wants_progress(stdin: BinaryIO, stderr: TextIO) -> int:
    """The size of stdin when it is a large regular file and stderr a terminal, else 0."""
    try:
        info = os.fstat(stdin.fileno())
    except (OSError, ValueError):
        return 0
    if stat.S_ISREG(info.st_mode) and info.st_size >= PROGRESS_MIN_BYTES and stderr.isatty():
        return info.st_size
    return 0


def main(
    cfg: Config,
    items: list[str],
    *,
    wait_below: int | None,
    stdin: BinaryIO | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin.buffer
    tally = Tally()
    if items:
        groups: Iterable[list[bytes]] = [_items([os.fsencode(item) for item in items], tally)]
    else:
        if stdin.isatty():
            err.write("reading items from the terminal, one per line; end with Ctrl-D\n")
        groups = split_lines(read_blocks(stdin), tally)
        size = wants_progress(stdin, err)
        if size:
            groups = Progress(tally, size, err).groups(groups)
    queue = open_queue(cfg, "push")
    try:
        with redis_errors(cfg):
            push_all(queue, groups, tally, wait_below)
    except OpsError as exc:
        raise OpsError(f"{exc} (after {tally.pushed} item(s) were pushed)") from None
    except KeyboardInterrupt:
        err.write(f"\ngoodsd: push interrupted after {tally.pushed} item(s) were pushed\n")
        return 1
    skipped = f" (skipped {tally.skipped} empty)" if tally.skipped else ""
    out.write(f"pushed {tally.pushed} item(s) to {cfg.queue!r}{skipped}\n")
    return 0
