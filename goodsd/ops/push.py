"""`goodsd push`: items from the arguments, or one per line from stdin, into the ready list.

Lines are read in large blocks and pushed in pipelined batches (one round trip per batch), so
a file of a million lines goes in within seconds, and so does one line of hundreds of
megabytes. Empty lines carry no item and are skipped (and counted). A line longer than
the largest item (``MAX_ITEM_BYTES``) is refused: dropped as it is read, named on stderr, and
the push goes on and ends with exit status 1. ``--wait-below N`` keeps the backlog at N or
less, the way a producer would.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from goodsd.config import Config
from goodsd.exits import EXIT_UNREPLICATED
from goodsd.ops.common import OpsError, open_queue, redis_errors
from goodsd.store import Views
from goodsd.store.views import Unreplicated

# The largest item, in bytes. Redis refuses a bulk string over proto-max-bulk-len (512 MiB by
# default), and a failed item travels to Redis again inside its dead record, as base64 when it
# is not UTF-8 (4 bytes for 3): 3/4 of 512 MiB, less 1 MiB for the record's other fields.
MAX_ITEM_BYTES = (512 << 20) * 3 // 4 - (1 << 20)
# Items per LPUSH: one round trip each; large enough that the network is not the limit.
BATCH = 10_000
# How much of stdin one read takes; a pipe gives what it has, so slow input is not held back.
READ_SIZE = 1 << 20
# Progress is shown for a regular file at least this large (and only to a terminal).
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_EVERY = 0.2
# Backlog polling while --wait-below holds the push back.
WAIT_MIN, WAIT_MAX = 0.01, 0.25
# With redis.wait_replicas: how long a push repeats WAIT for replicas that fall short (a
# replica catching up after a stall), before it says which items are on the primary only.
WAIT_PATIENCE = 10.0


@dataclass
class Tally:
    """What a push has done so far, for the summary and for an error half way."""

    pushed: int = 0  # items now in the ready list
    skipped: int = 0  # empty lines (or empty arguments) left out
    refused: int = 0  # lines (or arguments) over the largest item, left out
    lines: int = 0  # lines (or arguments) seen, so a refused one can be named by its number
    read: int = 0  # bytes of stdin consumed
    unreplicated: Unreplicated | None = None  # the last batch, in but on too few replicas


# refuse(number, size): line (or argument) ``number``, counted from 1, holds an item of
# ``size`` bytes, over the largest item, and is left out.
Refuse = Callable[[int, int], None]


def split_lines(
    blocks: Iterable[bytes],
    tally: Tally,
    *,
    limit: int = MAX_ITEM_BYTES,
    refuse: Refuse | None = None,
) -> Iterator[list[bytes]]:
    """Items of each block of input, as lists; a line split across blocks is joined. A line
    ends at \\n; a \\r before it is part of the line ending, not of the item. A line whose item
    is longer than ``limit`` bytes is refused (see ``items_of``); its bytes are dropped as they
    are read, so memory stays bounded by about ``limit`` plus a block."""
    line = LongLine(limit)
    for block in blocks:
        tally.read += len(block)
        lines = block.split(b"\n")  # [block] itself, not a copy, when it holds no \n
        line.add(lines[0])
        if len(lines) == 1:
            continue
        first = line.end(tally, refuse)
        line = LongLine(limit)
        line.add(lines.pop())
        yield first + items_of(lines[1:], tally, limit=limit, refuse=refuse)
    if line.size:
        yield line.end(tally, refuse)


class LongLine:
    """The line being read, which may span any number of blocks.

    Its bytes go into one growing buffer (``io.BytesIO``: in CPython it grows in place and its
    value is that buffer, not a copy), so a line costs time linear in its length and about one
    copy of it in memory, not a copy per block. Once its item is sure to be over ``limit``, the
    buffer is let go and further bytes are dropped as they come; only the length is kept, to
    name the line in the refusal.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = io.BytesIO()  # the line so far; emptied once it is over the limit
        self.size = 0  # its length so far in bytes, a \r at its end included
        self.last = b""  # its last byte so far: a \r may be the start of its line ending
        self.dropping = False  # over the limit: its bytes are no longer kept

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        self.size += len(piece)
        self.last = piece[-1:]
        if self.dropping:
            return
        if self.item_size() > self.limit:
            self.dropping = True
            self.buffer = io.BytesIO()
        else:
            self.buffer.write(piece)

    def item_size(self) -> int:
        """The length of the item if the line ended here: without a \\r at its end."""
        return self.size - 1 if self.last == b"\r" else self.size

    def end(self, tally: Tally, refuse: Refuse | None) -> list[bytes]:
        """The line is whole: its item, in a list of one, or none when it is empty or over the
        limit."""
        tally.lines += 1
        if self.dropping:
            _refuse(tally, refuse, tally.lines, self.item_size())
            return []
        if not self.item_size():
            tally.skipped += 1
            return []
        self.buffer.truncate(self.item_size())  # the \r of a line ending, if any
        return [self.buffer.getvalue()]


def items_of(
    lines: list[bytes], tally: Tally, *, limit: int, refuse: Refuse | None = None
) -> list[bytes]:
    """The items of whole ``lines`` (or arguments), in order: a \\r at the end is taken off,
    empty ones are skipped and those longer than ``limit`` refused, both counted in
    ``tally``; ``refuse`` hears of each refusal."""
    cut = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    kept = [item for item in cut if item]
    tally.skipped += len(cut) - len(kept)
    first_number = tally.lines + 1
    tally.lines += len(cut)
    if kept and max(map(len, kept)) > limit:
        for number, item in enumerate(cut, start=first_number):
            if len(item) > limit:
                _refuse(tally, refuse, number, len(item))
        kept = [item for item in kept if len(item) <= limit]
    return kept


def _refuse(tally: Tally, refuse: Refuse | None, number: int, size: int) -> None:
    tally.refused += 1
    if refuse is not None:
        refuse(number, size)


def read_blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read1(READ_SIZE):  # type: ignore[attr-defined]
        yield block


def push_all(
    queue: Views, groups: Iterable[list[bytes]], tally: Tally, wait_below: int | None
) -> None:
    """Push every item in order; with ``wait_below``, only as many as keep the backlog <= it.
    A batch that too few replicas acknowledged (``redis.wait_replicas``) is counted in and
    ends the push (``tally.unreplicated``): what follows would be as unsafe."""
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
            try:
                queue.push(batch, patience=WAIT_PATIENCE)
            except Unreplicated as exc:
                tally.pushed += len(batch)
                tally.unreplicated = exc
                return
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


@dataclass
class Refusal:
    """Says on stderr which line (or argument) was left out for its size."""

    err: TextIO
    noun: str  # "line" or "argument"
    limit: int  # the largest item, in bytes
    clear_line: bool = False  # the progress line is on the terminal: write over it

    def __call__(self, number: int, size: int) -> None:
        clear = "\r\x1b[K" if self.clear_line else ""
        self.err.write(
            f"{clear}goodsd: {self.noun} {number} not pushed: {size:,} bytes,"
            f" over the largest item ({self.limit:,} bytes)\n"
        )
        self.err.flush()


def main(
    cfg: Config,
    items: list[str],
    *,
    wait_below: int | None,
    stdin: BinaryIO | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    max_item: int = MAX_ITEM_BYTES,
) -> int:
    """Push ``items``, or else the lines of ``stdin``; the exit status: EXIT_UNREPLICATED when
    the last batch is in but fewer replicas acknowledged it than ``redis.wait_replicas`` asks
    for (nothing after it is pushed), 1 when an item was refused for being over ``max_item``
    bytes (the others are pushed all the same), else 0. Raises OpsError when Redis fails."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    tally = Tally()
    if items:
        refuse = Refusal(err, "argument", max_item)
        arguments = [os.fsencode(item) for item in items]
        groups: Iterable[list[bytes]] = [items_of(arguments, tally, limit=max_item, refuse=refuse)]
    else:
        if stdin.isatty():
            err.write("reading items from the terminal, one per line; end with Ctrl-D\n")
        size = wants_progress(stdin, err)
        refuse = Refusal(err, "line", max_item, clear_line=bool(size))
        groups = split_lines(read_blocks(stdin), tally, limit=max_item, refuse=refuse)
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
    if (short := tally.unreplicated) is not None:
        err.write(
            f"goodsd: pushed {tally.pushed} item(s) to {cfg.queue!r}, but the last {short.items} "
            f"are on the redis primary only: {short.acknowledged} of {short.wanted} replica(s) "
            f"acknowledged them within {short.waited:g}s (redis.wait_replicas)"
            f"{f'; then: {short.broken}' if short.broken is not None else ''}; a failover "
            "now could lose them, and pushing them again would add them twice; nothing after "
            "them was pushed\n"
        )
        return EXIT_UNREPLICATED
    out.write(f"pushed {tally.pushed} item(s) to {cfg.queue!r}{_left_out(tally, max_item)}\n")
    return 1 if tally.refused else 0


def _left_out(tally: Tally, max_item: int) -> str:
    """` (skipped 1 empty, refused 2 over 401,604,608 bytes)`, or nothing."""
    notes = []
    if tally.skipped:
        notes.append(f"skipped {tally.skipped} empty")
    if tally.refused:
        notes.append(f"refused {tally.refused} over {max_item:,} bytes")
    return f" ({', '.join(notes)})" if notes else ""
