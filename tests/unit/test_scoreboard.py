"""The scoreboard: a header plus one busy slot per item a child runs at once, each read whole.

The torn-read tests fork a real writer: only a second process writing the shared mapping while
this one reads can show a read that a write tore.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable

import pytest

from goodsd.scoreboard import MAX_SLOTS, NO_READING, Reading, Scoreboard, Slot

IDLE = Slot(0.0, -1)


@pytest.mark.parametrize("slots", [1, 3, MAX_SLOTS])
def test_a_new_board_has_every_slot_idle(slots: int) -> None:
    board = Scoreboard(slots)
    reading = board.read()
    assert reading.slots == (IDLE,) * slots
    assert (reading.busy_since, reading.item, reading.running) == (0.0, -1, ())
    assert reading.heartbeat > 0
    board.close()


@pytest.mark.parametrize("slots", [0, -1, MAX_SLOTS + 1])
def test_a_board_holds_1_to_max_slots(slots: int) -> None:
    with pytest.raises(ValueError, match="1 to 10000 slots"):
        Scoreboard(slots)


def test_the_last_of_max_slots_is_its_own_beyond_the_first_page() -> None:
    # Given the largest board (several pages)
    board = Scoreboard(MAX_SLOTS)
    # When only its last slot starts an item
    board.busy(50.0, 7, MAX_SLOTS - 1)
    # Then only that slot is busy, and a slot past the end does not exist
    reading = board.read()
    assert reading.slots[-1] == Slot(50.0, 7)
    assert reading.slots[:-1] == (IDLE,) * (MAX_SLOTS - 1)
    assert reading.running == (7,)
    with pytest.raises(IndexError):
        board.busy(1.0, 0, MAX_SLOTS)
    board.close()


def test_a_reading_gives_each_busy_slot_s_start_and_item() -> None:
    # Given a board of four slots, two of them running items
    board = Scoreboard(4)
    board.busy(30.0, 12, 1)
    board.busy(20.0, 11, 3)
    # Then a reading gives each busy slot's start and item in slot order, and the oldest
    reading = board.read()
    assert reading.busy == (Slot(30.0, 12), Slot(20.0, 11))
    assert reading.running == (12, 11)
    assert (reading.busy_since, reading.item) == (20.0, 11)
    board.close()


def test_one_slot_reads_as_today_s_record() -> None:
    # Given a one-slot board written the way a one-item consumer writes it
    board = Scoreboard()
    board.write(heartbeat=5.0, busy_since=4.0, item=2, done=3, failed=1, given_back=6)
    # Then a reading has the fields it always had, in their order
    heartbeat, busy_since, *_ = board.read()
    assert (heartbeat, busy_since) == (5.0, 4.0)
    assert board.read()[:7] == (5.0, 4.0, 2, 3, 1, 0, 6)
    # And an item start is a sign of life and the current item
    board.busy(7.0, 3)
    assert board.read()[:3] == (7.0, 7.0, 3)
    assert board.read().running == (3,)
    # And a write with busy_since 0.0 idles the slot; one without leaves it (a producer's)
    board.write(heartbeat=8.0, flags=4)
    assert board.read()[:3] == (8.0, 7.0, 3)
    board.write(heartbeat=9.0, busy_since=0.0)
    assert board.read()[:3] == (9.0, 0.0, -1)
    assert board.read().running == ()
    board.close()


def test_a_reading_of_a_gone_record_is_idle() -> None:
    assert (NO_READING.busy_since, NO_READING.item, NO_READING.running) == (0.0, -1, ())


@pytest.mark.parametrize("seed", range(6))
def test_slots_are_independent(seed: int) -> None:
    # Given a board of 1 to 40 slots, and a model of what its header and each slot hold
    rng = random.Random(seed)
    slots = rng.randint(1, 40)
    board = Scoreboard(slots)
    model, heartbeat, done = [IDLE] * slots, 1.0, 0
    board.write(heartbeat=heartbeat)
    for _ in range(300):
        # When slots start and finish items, and the header is written, in any order
        slot, choice = rng.randrange(slots), rng.random()
        if choice < 0.6:
            model[slot] = Slot(round(rng.uniform(2.0, 1000.0), 3), rng.randrange(10_000))
            board.busy(*model[slot], slot)
        elif choice < 0.9:
            model[slot] = IDLE
            board.idle(slot)
        else:
            heartbeat, done = round(rng.uniform(1.0, 1000.0), 3), done + 1
            board.write(heartbeat=heartbeat, done=done)
        # Then every slot reads as its own writes left it, whatever the others did
        assert board.read() == expected_reading(model, heartbeat, done)
    board.close()


def expected_reading(model: list[Slot], heartbeat: float, done: int) -> Reading:
    """What a board must read as whose slots hold ``model``: the oldest busy slot (the first
    in slot order of equals) is its current item; the latest start counts as a heartbeat, and
    the header's heartbeat is also read alone."""
    busy = [slot for slot in model if slot.busy_since]
    oldest = min(busy, key=lambda slot: slot.busy_since, default=IDLE)
    return Reading(
        max([heartbeat, *(slot.busy_since for slot in busy)]),
        *oldest,
        done,
        0,
        0,
        0,
        tuple(slot.busy_since for slot in model),
        tuple(slot.item for slot in model),
        heartbeat,  # the header's own heartbeat
    )


def test_a_slot_whose_writer_stopped_mid_write_keeps_its_last_whole_value() -> None:
    # Given two busy slots, read once
    board = Scoreboard(2)
    board.busy(5.0, 1, 0)
    board.busy(6.0, 2, 1)
    board.read()
    # When slot 1's writer stops halfway through its next write (as a SIGSTOPped child would:
    # its counter left odd, one field written), and slot 0 moves on
    board._counts[1] += 1
    board._starts[1] = 9.0
    board.busy(7.0, 3, 0)
    # Then slot 1 reads as its last whole write, so its item ages; slot 0 reads as written
    assert board.read().slots == (Slot(7.0, 3), Slot(6.0, 2))
    board.close()


# A writer forked from the test: one thread per slot rewrites its own slot as fast as it can,
# each write a pair that only a whole read shows equal (busy_since == item, or idle), while
# the main thread rewrites the header with four equal counters.
def run_writer(board: Scoreboard) -> None:
    def write_slot(slot: int) -> None:
        n = slot
        while True:
            n += board.slots
            board.busy(float(n), n, slot)
            board.idle(slot)

    for slot in range(board.slots):
        threading.Thread(target=write_slot, args=(slot,), daemon=True).start()
    n = 0
    while True:
        n += 1
        board.write(heartbeat=1.0, done=n, failed=n, flags=n, given_back=n)


def whole(reading: Reading) -> bool:
    """Whether ``reading`` shows only whole writes of ``run_writer``."""
    slots_whole = all(slot == IDLE or slot.busy_since == slot.item for slot in reading.slots)
    return slots_whole and reading.done == reading.failed == reading.flags == reading.given_back


@pytest.mark.parametrize("slots", [1, 8])
def test_a_read_never_returns_a_slot_or_header_torn_by_a_write(slots: int) -> None:
    # Given a board that another process rewrites as fast as it can, from a thread per slot
    board = Scoreboard(slots)
    # Then every read sees whole writes only, in the header and in every slot
    torn = read_while_written(board, run_writer, 20_000, lambda reading: not whole(reading))
    assert torn == []


def read_while_written(
    board: Scoreboard,
    writer: Callable[[Scoreboard], None],
    reads: int,
    keep: Callable[[Reading], bool],
) -> list[Reading]:
    """Read ``board`` ``reads`` times while a forked process runs ``writer`` on it; the
    readings ``keep`` accepts."""
    pid = os.fork()
    if pid == 0:
        try:
            writer(board)
        finally:
            os._exit(0)
    try:
        return [reading for _ in range(reads) if keep(reading := board.read())]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        board.close()
