"""A consumer driven one ``loop()`` step at a time on the in-memory store (tests/memory_store.py)
with a fake clock: its delivery rules without Redis or processes."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from memory_store import FakeClock, MemoryConsumerStore

from goodsd.config import Config, ConsumersConfig
from goodsd.consumer import CLAIM_BLOCK, FLUSH_AFTER, Consumer
from goodsd.scoreboard import Scoreboard
from goodsd.store import DeadRecord
from goodsd.store.records import fingerprint

ME = "host-1-aa"
HANDLED: list[str] = []  # every item the handler was called with, in order
ACTIONS: dict[str, Callable[[], None]] = {}  # item -> what its next call does besides


def handle(item: str) -> None:
    """The consumers' handler (``test_consumer_steps:handle``)."""
    HANDLED.append(item)
    ACTIONS.pop(item, lambda: None)()


async def handle_async(item: str) -> None:
    """An async handler (``test_consumer_steps:handle_async``); the item "forever" never ends."""
    await asyncio.sleep(0)
    if item == "forever":
        await asyncio.Event().wait()
    HANDLED.append(item)


def fail() -> None:
    raise ValueError("cannot handle it")


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    HANDLED.clear()
    ACTIONS.clear()
    yield FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryConsumerStore:
    return MemoryConsumerStore(clock, clock.sleep)


def started(store: MemoryConsumerStore, clock: FakeClock, **consumers: Any) -> Consumer:
    """A consumer of ``store``, initialized: handler loaded, registered."""
    consumers.setdefault("handler", f"{__name__}:handle")
    settings = ConsumersConfig(processes=1, **consumers)
    config = Config(queue="q", consumers=settings)
    worker = Consumer(config, ME, Scoreboard(), lambda: None, store, clock)
    worker.initialize()
    return worker


def test_a_failed_item_runs_again_once_its_retry_delay_has_passed(store, clock):
    # Given three items, the second of which fails once, retried after 5 s
    store.push(b"good1", b"good2", b"good3")
    ACTIONS["good2"] = fail
    worker = started(store, clock, retries=3, retry_delay=5.0)
    # When the consumer takes a step
    worker.loop()
    # Then all three ran, and the failed one waits for its retry; nothing is held
    assert HANDLED == ["good1", "good2", "good3"]
    assert len(store.retry) == 1 and store.held(ME) == []
    # When it steps again before the delay is over, it waits for items and gets none
    worker.loop()
    assert HANDLED == ["good1", "good2", "good3"]
    assert clock.now - 1_700_000_000.0 == CLAIM_BLOCK
    # When the delay is over, the next step runs it again, and this time it is done
    clock.advance(5.0)
    worker.loop()
    assert HANDLED == ["good1", "good2", "good3", "good2"]
    assert store.retry == {} and store.attempts == {} and store.held(ME) == []
    assert (store.stats["done"], store.stats["failed"], store.stats["retried"]) == (3, 1, 1)


def test_a_malformed_item_goes_to_the_dead_list_at_once(store, clock):
    # Given an item that is not UTF-8 among good ones, and retries to spare
    store.push(b"good1", b"bad\xff", b"good2")
    worker = started(store, clock, retries=3, decode="utf-8")
    # When the consumer takes a step
    worker.loop()
    # Then the good ones ran, and the malformed one is dead after one attempt, never retried
    assert HANDLED == ["good1", "good2"]
    [dead] = [DeadRecord.decode(raw) for raw in store.dead]
    assert (dead.item, dead.attempts, dead.consumer) == (b"bad\xff", 1, ME)
    assert dead.error is not None and dead.error.startswith("malformed: not UTF-8")
    assert store.retry == {} and store.held(ME) == []


def test_a_stop_mid_batch_gives_back_the_items_not_started(store, clock):
    # Given four items, and a stop asked while the second runs (as SIGTERM does)
    store.push(b"good1", b"good2", b"good3", b"good4")
    worker = started(store, clock, batch=10)
    ACTIONS["good2"] = lambda: setattr(worker, "running", False)
    # When the consumer takes a step
    worker.loop()
    # Then the second item finishes, the last two go back unstarted, next in line, oldest
    # first, and nothing is held; after shutdown the consumer has left the registry
    assert HANDLED == ["good1", "good2"]
    assert list(reversed(store.ready)) == [b"good3", b"good4"]
    assert store.held(ME) == [] and worker.given_back == 2
    assert (store.stats["done"], store.stats["requeued"]) == (2, 2)
    worker.shutdown()
    assert ME not in store.registrations


def test_the_scoreboard_names_the_running_item_by_the_fingerprint_of_its_claimed_value(
    store, clock
):
    # Given two items taken one at a time, the first failing once, so that its retry runs
    # from its retry envelope
    store.push(b"good1", b"good2")
    worker = started(store, clock, batch=1, retries=3, retry_delay=5.0)
    seen: list[tuple[tuple[int, ...], bytes]] = []  # (running fingerprints, claimed value)

    def look() -> None:
        [held] = store.held(ME)
        seen.append((worker.board.read().running, held.claimed))

    ACTIONS["good1"], ACTIONS["good2"] = fail, look
    # When the consumer runs both, and then the retry once it is due
    worker.loop()
    worker.loop()
    ACTIONS["good1"] = look
    clock.advance(5.0)
    worker.loop()
    # Then while each ran, its one busy slot showed the fingerprint the master computes from
    # the value held in flight: the item itself, and for the retry its envelope
    assert [claimed[-5:] for _, claimed in seen] == [b"good2", b"good1"]
    assert seen[1][1] != b"good1"
    assert [running for running, _ in seen] == [(fingerprint(claimed),) for _, claimed in seen]
    assert HANDLED == ["good1", "good2", "good1"] and store.held(ME) == []


def test_slow_items_are_acked_as_they_go(store, clock):
    # Given three items that take longer than FLUSH_AFTER each
    store.push(b"good1", b"good2", b"good3")
    held_during_last: list[list[bytes]] = []
    ACTIONS["good1"] = ACTIONS["good2"] = lambda: clock.advance(FLUSH_AFTER * 2)
    ACTIONS["good3"] = lambda: held_during_last.append([d.payload for d in store.held(ME)])
    worker = started(store, clock, batch=10)
    # When the consumer takes a step
    worker.loop()
    # Then by the time the last one runs, the first two are done and no longer held
    assert held_during_last == [[b"good3"]]
    assert store.stats["done"] == 3 and store.held(ME) == []


def test_done_and_failed_items_acked_as_they_go_are_each_settled_once(store, clock):
    # Given five items: the first and third slow, the second and fourth failing
    store.push(b"good1", b"bad2", b"good3", b"bad4", b"good5")
    held_during_last: list[list[bytes]] = []
    ACTIONS["good1"] = ACTIONS["good3"] = lambda: clock.advance(FLUSH_AFTER * 2)
    ACTIONS["bad2"] = ACTIONS["bad4"] = fail
    ACTIONS["good5"] = lambda: held_during_last.append([d.payload for d in store.held(ME)])
    worker = started(store, clock, batch=10, retries=3)
    # When the consumer takes a step
    worker.loop()
    # Then the outcomes up to the last slow item were recorded as it went (the last failure
    # came too soon after it), and in the end every item is settled once: three done, two
    # waiting for a retry, nothing held
    assert held_during_last == [[b"bad4", b"good5"]]
    assert (store.stats["done"], store.stats["failed"], store.stats["retried"]) == (3, 2, 2)
    assert len(store.retry) == 2 and store.held(ME) == []
    assert (worker.done_count, worker.failed_count) == (3, 2)


def test_the_claim_with_the_acks_takes_only_what_max_items_leaves(store, clock):
    # Given five items and a consumer that may handle three, two at a time
    store.push(b"good1", b"good2", b"good3", b"good4", b"good5")
    worker = started(store, clock, batch=2, max_items=3)
    # When it steps until it stops
    while worker.running:
        worker.loop()
    # Then it ran three items and claimed no more: the rest wait in the queue
    assert HANDLED == ["good1", "good2", "good3"]
    assert list(reversed(store.ready)) == [b"good4", b"good5"] and store.held(ME) == []


def test_a_consumer_out_of_step_gives_back_everything_and_starts_afresh(store, clock):
    # Given two items, and a value the consumer never claimed slipped into its list meanwhile
    store.push(b"good1", b"good2")
    ACTIONS["good1"] = lambda: store.inflight[ME].append(b"ghost")
    worker = started(store, clock)
    # When it takes a step, nothing is settled: everything held goes back, the stranger too
    worker.loop()
    assert list(reversed(store.ready)) == [b"ghost", b"good1", b"good2"]
    assert store.stats["done"] == 0 and store.held(ME) == []
    # And the next step runs them all, once more for the two it ran before
    worker.loop()
    assert HANDLED == ["good1", "good2", "ghost", "good1", "good2"]
    assert store.stats["done"] == 3 and store.ready == deque() and store.held(ME) == []


def test_an_async_handler_runs_each_item_to_its_end_and_is_cut_at_the_timeout(store, clock):
    # Given an async handler, one at a time, a 0.1 s timeout and no retries
    store.push(b"good1", b"forever", b"good2")
    worker = started(store, clock, handler=f"{__name__}:handle_async", timeout=0.1, retries=0)
    # When the consumer takes a step
    worker.loop()
    # Then each coroutine ran to its end, and the one that never ends was cancelled at the
    # timeout and counts a failed attempt (dead, with no retries)
    assert HANDLED == ["good1", "good2"]
    [dead] = [DeadRecord.decode(raw) for raw in store.dead]
    assert (dead.item, dead.attempts) == (b"forever", 1)
    assert dead.error == "ItemTimeout: timed out after 0.1s and was cancelled"
    assert store.stats["done"] == 2 and store.held(ME) == []
