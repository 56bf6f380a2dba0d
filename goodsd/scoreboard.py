"""One shared-memory record per child, written by the child and read by the master.

A child updates it on every item without a system call (a pipe write per item would cost more
than a no-op handler); the master reads it whenever it likes to judge liveness and rates.
The master creates the record before fork; both sides then see the same anonymous mapping.

The record is a header (heartbeat and counters) and one slot per item a child may run at once
(``slots``: a consumer's ``concurrency``). A slot says whether its item runs, since when, and
which one: the item's fingerprint (``goodsd.store.records.fingerprint``), a number the master
matches against the values a dead consumer held, whatever order they are settled in. Each part
has its own writer: the header the child's main loop, a slot the thread or task running that
slot's items; so no two writers ever share a part.

A write is not atomic (it stores several fields; ``struct.pack_into`` even zeroes them first), so
the header and every slot are each guarded like a seqlock: the writer makes the part's counter
odd before it writes and even again after, and a reader takes only a read during which the
counter stayed the same and even. A torn read would show the master a heartbeat of 0 and make
it kill a healthy child. Parts are read one after the other, so a reading is whole per part,
not one instant of the whole record; the master's judgements (seconds apart) need no more.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time
from collections.abc import Iterable
from typing import NamedTuple

# The header, after its 8-byte write counter:
# heartbeat: monotonic time of the child's last loop step
# done / failed: items handled so far by this child (a producer: done = items it pushed)
# flags: FLAG_* bits (a producer's state)
# given_back: items a consumer gave back unstarted (claimed, then a stop came)
_HEADER = struct.Struct("=dQQQQ")
_HEADER_AT = 8
_COUNTERS_AT = _HEADER_AT + _HEADER.size
# Then three arrays of one 8-byte value per slot, each taken by a reader in one copy: the
# slots' write counters; busy_since (monotonic time the slot's item started, 0.0 when idle);
# item (the fingerprint of the slot's item, never negative; -1 when idle).
IDLE_SINCE = 0.0
IDLE_ITEM = -1
# Most slots one record holds: enough for thousands of asyncio tasks per consumer.
MAX_SLOTS = 10_000
# Reads tried while a write is under way (the writer may have been preempted mid-write): the
# first ones spin, the rest yield the CPU first. If none succeeds (a child stopped mid-write),
# the part's last whole reading stands: its times age, as a stopped child's should.
READ_SPINS = 50
READ_TRIES = 200
FLAG_PAUSED = 1  # producer: the queue is at its high watermark, waiting to drain
FLAG_STANDBY = 2  # producer: waiting for the singleton lock
FLAG_FINISHED = 4  # producer: its source is exhausted; exit 0 means done, not restart
# Bits 8-15 of flags: the code of the Redis trouble a child waits out (0: none), see
# goodsd.redisconn.Kind.
REDIS_WAIT_SHIFT = 8


class Slot(NamedTuple):
    """One slot as last written: idle when ``busy_since`` is 0.0."""

    busy_since: float  # monotonic time its item started, 0.0 when idle
    item: int  # its item's fingerprint, -1 when idle


class Reading(NamedTuple):
    """One look at a child's record.

    ``busy_since`` and ``item`` are those of the slot busy longest (0.0 and -1 when all are
    idle): with one slot, simply the current item. ``heartbeat`` is the child's latest sign of
    life, its last loop step or the start of its latest item. ``starts`` and ``items`` hold
    every slot's busy_since and item fingerprint, in slot order."""

    heartbeat: float
    busy_since: float
    item: int
    done: int
    failed: int
    flags: int
    given_back: int
    starts: tuple[float, ...] = ()
    items: tuple[int, ...] = ()
    beat: float = 0.0  # the header's heartbeat alone: the child's main loop, not its slots

    @property
    def slots(self) -> tuple[Slot, ...]:
        """Every slot, in slot order."""
        return tuple(map(Slot, self.starts, self.items))

    @property
    def busy(self) -> tuple[Slot, ...]:
        """The busy slots, in slot order: when each running item started, and its
        fingerprint."""
        return tuple(slot for slot in self.slots if slot.busy_since)

    @property
    def running(self) -> tuple[int, ...]:
        """Fingerprints of the items running now (the busy slots'), in slot order."""
        return tuple(item for since, item in zip(self.starts, self.items, strict=True) if since)


# What the master assumes of a child whose record is already gone.
NO_READING = Reading(0.0, IDLE_SINCE, IDLE_ITEM, 0, 0, 0, 0)


class Scoreboard:
    """A child's liveness and counters in an anonymous shared mapping, with ``slots`` item
    slots (1 to MAX_SLOTS; ValueError otherwise)."""

    def __init__(self, slots: int = 1) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"a scoreboard holds 1 to {MAX_SLOTS} slots, not {slots}")
        self.slots = slots
        size = _COUNTERS_AT + 3 * 8 * slots
        self._map = mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        whole = memoryview(self._map)
        self._counter = whole[:_HEADER_AT].cast("Q")  # [0]: odd while a header write is on
        arrays = [whole[_COUNTERS_AT + 8 * slots * i :][: 8 * slots] for i in range(3)]
        self._counts = arrays[0].cast("Q")  # [i]: odd while a write of slot i is on
        self._starts = arrays[1].cast("d")
        self._items = arrays[2].cast("q")
        self._views = (self._counter, self._counts, self._starts, self._items, *arrays, whole)
        # A mask of every counter's lowest bit: a counts area ANDed with it is 0 when all
        # counters are even (no write under way).
        self._odd_bits = int.from_bytes((1).to_bytes(8, sys.byteorder) * slots, sys.byteorder)
        # The counters' values, kept by the writing process (a slot's by its one writer).
        self._writes = 0
        self._slot_writes = [0] * slots
        for slot in range(slots):
            self.idle(slot)
        self.write(heartbeat=time.monotonic())
        # The reader's last whole reading of each part (no other writer exists yet).
        self._last_header: tuple[float, int, int, int, int] = _HEADER.unpack_from(
            self._map, _HEADER_AT
        )
        self._last_starts = self._starts.tolist()
        self._last_items = self._items.tolist()

    def write(
        self,
        *,
        heartbeat: float,
        done: int = 0,
        failed: int = 0,
        flags: int = 0,
        given_back: int = 0,
        busy_since: float | None = None,
        item: int = IDLE_ITEM,
    ) -> None:
        """Write the header. With ``busy_since`` (0.0: idle) also slot 0, the one slot of a
        child that runs one item at a time."""
        self._writes += 1
        self._counter[0] = self._writes
        _HEADER.pack_into(self._map, _HEADER_AT, heartbeat, done, failed, flags, given_back)
        self._writes += 1
        self._counter[0] = self._writes
        if busy_since is not None:
            self.busy(busy_since, item)

    def busy(self, now: float, item: int, slot: int = 0) -> None:
        """The item whose fingerprint is ``item`` starts ``now`` (monotonic seconds) in
        ``slot``: the one write per item. ``now`` 0.0 makes the slot idle. IndexError for a
        slot out of range."""
        seq = self._slot_writes[slot] + 1
        self._counts[slot] = seq
        self._starts[slot] = now
        self._items[slot] = item
        self._counts[slot] = self._slot_writes[slot] = seq + 1

    def idle(self, slot: int = 0) -> None:
        """``slot`` runs nothing now."""
        self.busy(IDLE_SINCE, IDLE_ITEM, slot)

    def read(self) -> Reading:
        """The record as the child last wrote it, never a part torn by a write under way."""
        heartbeat, done, failed, flags, given_back = self._read_header()
        starts, items = self._read_slots()
        oldest = min((since for since in starts if since), default=IDLE_SINCE)
        item = items[starts.index(oldest)] if oldest else IDLE_ITEM
        return Reading(
            max(heartbeat, max(starts)),
            oldest,
            item,
            done,
            failed,
            flags,
            given_back,
            tuple(starts),
            tuple(items),
            heartbeat,
        )

    def _read_header(self) -> tuple[float, int, int, int, int]:
        for attempt in range(READ_TRIES):
            if attempt >= READ_SPINS:
                os.sched_yield()
            before = self._counter[0]
            fields = _HEADER.unpack_from(self._map, _HEADER_AT)
            if not before % 2 and self._counter[0] == before:
                self._last_header = fields
                return fields
        return self._last_header

    def _read_slots(self) -> tuple[list[float], list[int]]:
        """Every slot's (busy_since, item): the counters, the values, the counters again, each
        in one copy. A slot whose counter stayed the same and even was read whole; the others
        are read again."""
        starts, items = self._last_starts, self._last_items
        torn: Iterable[int] = range(self.slots)
        for attempt in range(READ_TRIES):
            if attempt >= READ_SPINS:
                os.sched_yield()
            before = self._counts.tobytes()
            now_starts, now_items = self._starts.tolist(), self._items.tolist()
            after = self._counts.tobytes()
            if before == after and not int.from_bytes(before, sys.byteorder) & self._odd_bits:
                starts, items = now_starts, now_items  # the common case: all whole
                break
            counts_before, counts_after = _counts(before), _counts(after)
            still_torn = []
            for i in torn:
                if counts_before[i] % 2 or counts_after[i] != counts_before[i]:
                    still_torn.append(i)
                else:
                    starts[i], items[i] = now_starts[i], now_items[i]
            torn = still_torn
            if not torn:
                break
        self._last_starts, self._last_items = starts, items
        return starts, items

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._map.close()


def _counts(area: bytes) -> list[int]:
    return memoryview(area).cast("Q").tolist()
