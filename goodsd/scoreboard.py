"""One shared-memory record per child, written by the child and read by the master.

A child updates it on every item without a system call (a pipe write per item would cost more
than a no-op handler); the master reads it whenever it likes to judge liveness and rates.
The master creates the record before fork; both sides then see the same anonymous page.
"""

from __future__ import annotations

import mmap
import struct
import time
from typing import NamedTuple

# heartbeat: monotonic time of the child's last loop step
# busy_since: monotonic time the current item started, 0.0 when idle
# position: index in the claimed batch (0 = oldest) of the current item, -1 when idle
# done / failed: items handled so far by this child (a producer: done = items it pushed)
# flags: FLAG_* bits (a producer's state)
_LAYOUT = struct.Struct("=ddqQQQ")
# The first three fields alone: what changes with every item.
_BUSY = struct.Struct("=ddq")
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


# What the master assumes of a child whose record is already gone.
NO_READING = Reading(0.0, 0.0, -1, 0, 0, 0)


class Scoreboard:
    """A child's liveness and counters in an anonymous shared mapping."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self.write(heartbeat=time.monotonic())

    def write(
        self,
        *,
        heartbeat: float,
        busy_since: float = 0.0,
        position: int = -1,
        done: int = 0,
        failed: int = 0,
        flags: int = 0,
    ) -> None:
        _LAYOUT.pack_into(self._map, 0, heartbeat, busy_since, position, done, failed, flags)

    def busy(self, now: float, position: int) -> None:
        """An item starts now: heartbeat, busy_since and position in one small write."""
        _BUSY.pack_into(self._map, 0, now, now, position)

    def read(self) -> Reading:
        return Reading(*_LAYOUT.unpack_from(self._map, 0))

    def close(self) -> None:
        self._map.close()
