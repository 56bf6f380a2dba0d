"""Where items run when a consumer runs several at once: thread slots, task slots on the
process's event loop, and that loop itself (item timeouts, async setups, a blocked loop).

Real threads and a real event loop; every wait is for an event, bounded."""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from goodsd.config import ConsumersConfig
from goodsd.eventloop import EventLoop, ItemTimeout
from goodsd.forkguard import ForkGuard
from goodsd.runner import build, build_async, is_async, run_setup
from goodsd.scoreboard import Scoreboard
from goodsd.slots import Outcome, TaskSlots, ThreadSlots
from goodsd.store import Delivery
from goodsd.store.records import fingerprint

WAIT = 10.0  # the longest any test waits for an event


def item(text: str) -> Delivery:
    return Delivery(text.encode(), text.encode(), None)


def eventually(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class Outcomes:
    """What slots report, collected."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()

    def take(self, count: int) -> list[Outcome]:
        got: list[Outcome] = []
        while len(got) < count:
            got += self.queue.get(timeout=WAIT)
        return got


@pytest.fixture
def event_loop() -> Iterator[EventLoop]:
    loop = EventLoop(timeout=30.0)
    yield loop
    loop.close()


# --- thread slots ------------------------------------------------------------------------------


def test_thread_slots_run_items_at_once_each_in_its_own_slot() -> None:
    # Given 3 thread slots whose handler waits for a go
    go = threading.Event()
    outcomes, board = Outcomes(), Scoreboard(3)

    def run_item(raw: bytes) -> None:
        go.wait(WAIT)
        if raw == b"bad":
            raise ValueError("cannot")

    slots = ThreadSlots(3, run_item, board, ForkGuard(), outcomes.queue.put)
    # When 3 items start
    slots.start([item("a"), item("bad"), item("c")])
    # Then all 3 run at once, each slot showing its item's fingerprint
    eventually(lambda: len(board.read().running) == 3, "3 busy slots")
    marks = sorted(fingerprint(raw) for raw in (b"a", b"bad", b"c"))
    assert sorted(board.read().running) == marks
    # And once they end, each reports its outcome and its slot is idle
    go.set()
    ended = {o.delivery.payload: o.error for o in outcomes.take(3)}
    assert ended[b"a"] is None and ended[b"c"] is None
    assert isinstance(ended[b"bad"], ValueError)
    assert board.read().running == ()
    slots.close()
    for thread in slots.threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in slots.threads)


# --- task slots --------------------------------------------------------------------------------


def test_task_slots_run_items_as_tasks_and_cut_one_at_its_timeout() -> None:
    # Given 4 task slots with a 1 s item timeout, whose handler waits for a go, or forever
    loop = EventLoop(timeout=1.0)
    outcomes, board = Outcomes(), Scoreboard(4)
    go = asyncio.Event()

    async def call(raw: bytes) -> None:
        if raw == b"forever":
            await asyncio.Event().wait()
        await go.wait()

    slots = TaskSlots(4, call, loop, board, ForkGuard(), outcomes.queue.put)
    # When 4 items start, one of which never ends
    slots.start([item("a"), item("b"), item("forever"), item("c")])
    # Then all 4 run at once; given their go, the others end, each slot idle and free again
    eventually(lambda: len(board.read().running) == 4, "4 busy slots")
    loop.loop.call_soon_threadsafe(go.set)
    assert {o.error for o in outcomes.take(3)} == {None}
    assert board.read().running == (fingerprint(b"forever"),)
    # And the one that never ends is cut at the timeout
    [cut] = outcomes.take(1)
    assert cut.delivery.payload == b"forever" and isinstance(cut.error, ItemTimeout)
    assert str(cut.error) == "timed out after 1s and was cancelled"
    assert board.read().running == ()
    eventually(lambda: len(slots.free) == 4, "every slot free")
    loop.close()


def test_a_task_that_swallows_its_cancellation_still_times_out() -> None:
    # Given task slots with a 0.2 s timeout, whose handler ignores being cancelled
    loop = EventLoop(timeout=0.2)
    outcomes = Outcomes()

    async def call(raw: bytes) -> None:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            return

    TaskSlots(2, call, loop, Scoreboard(2), ForkGuard(), outcomes.queue.put).start([item("a")])
    # Then its item fails with the timeout all the same
    [ended] = outcomes.take(1)
    assert isinstance(ended.error, ItemTimeout)
    assert str(ended.error) == "timed out after 0.2s; it ignored its cancellation"
    loop.close()


def test_an_item_that_swallows_its_cancellation_still_times_out(event_loop) -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            return "ignored it"
        return "slept"

    event_loop.timeout = 0.05
    with pytest.raises(ItemTimeout, match="ignored its cancellation"):
        event_loop.run(stubborn())


# --- the event loop ----------------------------------------------------------------------------


def test_one_at_a_time_an_awaitable_runs_in_the_calling_thread(event_loop) -> None:
    # Given the loop not serving (concurrency 1)
    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    # Then run() runs an awaitable to completion right here, and no thread exists
    assert event_loop.run(where()) == threading.get_ident()
    assert event_loop.thread is None


def test_setup_and_items_share_the_loop_in_either_mode(event_loop) -> None:
    # Given an async setup that keeps the loop it ran on
    seen: list[asyncio.AbstractEventLoop] = []

    async def note() -> None:
        seen.append(asyncio.get_running_loop())

    # When the setup runs before the loop serves, and items run after it does
    event_loop.run_setup(note())
    event_loop.serve()
    event_loop.run(note())
    done = threading.Thread(target=lambda: event_loop.run_served(note()))
    done.start()
    done.join(WAIT)
    # Then all ran on one loop
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]


def test_a_blocked_loop_is_seen_with_the_item_that_blocks_it(event_loop) -> None:
    # Given task slots, and an item whose coroutine blocks the loop (sync code in a coroutine)
    release = threading.Event()
    outcomes = Outcomes()

    async def call(raw: bytes) -> None:
        if raw == b"blocker":
            release.wait(WAIT)

    slots = TaskSlots(2, call, event_loop, Scoreboard(2), ForkGuard(), outcomes.queue.put)
    slots.start([item("blocker")])
    # Then another thread sees the lag grow and which item's task holds the loop
    eventually(lambda: event_loop.blocked_for(time.monotonic()) > 0.2, "the lag seen")
    blocker = event_loop.blocking_item()
    assert blocker is not None and blocker.payload == b"blocker"
    # And once it lets go, the loop is on time again
    release.set()
    outcomes.take(1)
    eventually(lambda: event_loop.blocked_for(time.monotonic()) == 0.0, "the loop on time")
    assert event_loop.blocking_item() is None


# --- building handlers -------------------------------------------------------------------------

CALLS: list[object] = []


async def async_handler(item: str) -> None:
    await asyncio.sleep(0)
    CALLS.append(item)


class AsyncCallable:
    async def __call__(self, item: str) -> None:
        CALLS.append(item)


async_object = AsyncCallable()
async_partial = functools.partial(async_handler)


def returns_awaitable(item: str) -> object:
    return async_handler(item)


async def async_setup() -> None:
    CALLS.append("setup")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("async_handler", True),
        ("async_object", True),
        ("async_partial", True),
        ("returns_awaitable", False),
        ("eventually", False),
    ],
)
def test_a_handler_is_async_when_calling_it_makes_a_coroutine(name: str, expected: bool) -> None:
    assert is_async(globals()[name]) is expected


@pytest.mark.parametrize("name", ["async_handler", "returns_awaitable"])
def test_a_built_handler_runs_the_awaitable_it_gets_to_completion(name, event_loop) -> None:
    # Given a handler that returns an awaitable (an async def one, or a plain one)
    CALLS.clear()
    cfg = ConsumersConfig(handler=f"{__name__}:{name}")
    run_item = build(cfg, (), event_loop.run)
    # When an item runs, then the awaitable ran to its end
    run_item(b"good1")
    assert CALLS == ["good1"]
    # And without a loop to run it, the item fails instead of passing unrun
    with pytest.raises(TypeError, match="returned an awaitable"):
        build(cfg, ())(b"good2")


def test_an_async_handler_builds_a_coroutine_function_and_a_plain_one_does_not() -> None:
    assert build_async(ConsumersConfig(handler=f"{__name__}:async_object"), ()) is not None
    assert build_async(ConsumersConfig(handler=f"{__name__}:returns_awaitable"), ()) is None
    assert build_async(ConsumersConfig(command=("true",)), ()) is None


def test_an_async_setup_runs_to_completion(event_loop) -> None:
    CALLS.clear()
    run_setup(f"{__name__}:async_setup", event_loop.run_setup)
    assert CALLS == ["setup"]
