"""One shared-memory record per child, written by the child and read by the master.

A child updates it on every item without a system call (a pipe write per item would cost more
than a no-op handler); the master reads it whenever it likes to judge liveness and rates.
The master creates the record before fork; both sides then see the same anonymous page.

A write is not atomic (``struct.pack_into`` even zeroes the fields before it fills them), so
the record is guarded like a seqlock: the writer makes a counter odd before it writes and even
again after, and a reader takes only a read during which the counter stayed the same and even.
A torn read would show the master a heartbeat of 0 and make it kill a healthy child.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from typing import NamedTuple

# heartbeat: monotonic time of the child's last loop step
# busy_since: monotonic time the current item started, 0.0 when idle
# position: index in the claimed batch (0 = oldest) of the current item, -1 when idle
# done / failed: items handled so far by this child (a producer: done = items it pushed)
# flags: FLAG_* bits (a producer's state)
# given_back: items a consumer gave back unstarted (claimed, then a stop came)
_LAYOUT = struct.Struct("=ddqQQQQ")  # after the 8-byte write counter
# The first three fields alone: what changes with every item.
_BUSY = struct.Struct("=ddq")
# Where the fields start: the first 8 bytes hold the write counter.
_FIELDS = 8
# Reads tried while a write is under way (the writer may have been preempted mid-write): the
# first ones spin, the rest yield the CPU first. If none succeeds (a child stopped mid-write),
# the last whole reading stands: its heartbeat ages, as a stopped child's should.
READ_SPINS = 50
READ_TRIES = 200
FLAG_PAUSED = 1  # producer: the queue is at its high watermark, waiting to drain
FLAG_STANDBY = 2  # producer: waiting for the singleton lock
FLAG_FINISHED = 4  # producer: its source is exhausted; exit 0 means done, not restart
# Bits 8-15 of flags: the code of the Redis trouble a child waits out (0: none), see
# goodsd.redisconn.Kind.
REDIS_WAIT_SHIFT = 8


class Reading(NamedTuple):
    """One look at a child's record; the fields are those of ``Scoreboard.write``."""

    heartbeat: float
    busy_since: float
    position: int
    done: int
    failed: int
    flags: int
    given_back: int


# What the master assumes of a child whose record is already gone.
NO_READING = Reading(0.0, 0.0, -1, 0, 0, 0, 0)


class Scoreboard:
    """A child's liveness and counters in an anonymous shared mapping."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self._counter = memoryview(self._map).cast("Q")  # [0]: odd while a write is under way
        self._writes = 0  # the counter's value, kept by the one writing process
        self.write(heartbeat=time.monotonic())
        self._last = self._read_once() or NO_READING  # the reader's last whole reading

    def write(
        self,
        *,
        heartbeat: float,
        busy_since: float = 0.0,
        position: int = -1,
        done: int = 0,
        failed: int = 0,
        flags: int = 0,
        given_back: int = 0,
    ) -> None:
        self._writes += 1
        self._counter[0] = self._writes
        _LAYOUT.pack_into(
            self._map, _FIELDS, heartbeat, busy_since, position, done, failed, flags, given_back
        )
        self._writes += 1
        self._counter[0] = self._writes

    def busy(self, now: float, position: int) -> None:
        """An item starts now: heartbeat, busy_since and position in one small write."""
        self._writes += 1
        self._counter[0] = self._writes
        _BUSY.pack_into(self._map, _FIELDS, now, now, position)
        self._writes += 1
        self._counter[0] = self._writes

    def read(self) -> Reading:
        """The record as the child last wrote it, never one torn by a write under way."""
        for attempt in range(READ_TRIES):
            if attempt >= READ_SPINS:
                os.sched_yield()
            reading = self._read_once()
            if reading is not None:
                self._last = reading
                return reading
        return self._last

    def _read_once(self) -> Reading | None:
        before = self._counter[0]
        fields = _LAYOUT.unpack_from(self._map, _FIELDS)
        if before % 2 or self._counter[0] != before:
            return None
        return Reading(*fields)

    def close(self) -> None:
        self._counter.release()
        self._map.close()
