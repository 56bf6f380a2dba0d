"""A consumer with several items in flight (goodsd.concurrency), driven one ``loop()`` step at
a time on the in-memory store with a fake clock. Its slots are finished by hand, in any order,
so each test says exactly which item ends when; waiting for an outcome moves the fake clock."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import pytest
import redis
from memory_store import FakeClock, MemoryConsumerStore

from goodsd.concurrency import CLAIM_POLL, ConcurrentConsumer
from goodsd.config import Config, ConsumersConfig
from goodsd.consumer import FLUSH_AFTER
from goodsd.runner import MalformedItem
from goodsd.scoreboard import Scoreboard
from goodsd.slots import Outcome, Report
from goodsd.store import Delivery

ME = "host-1-aa"


class HandSlots:
    """Slots that run nothing: ``running`` holds what was started; an outcome is reported when
    the test finishes an item, or when the consumer next waits for one (``finish_on_wait``)."""

    def __init__(self, size: int, report: Report) -> None:
        self.size = size
        self.report = report
        self.running: list[Delivery] = []
        self.on_wait: deque[tuple[bytes, Exception | None]] = deque()
        self.closed = False

    def start(self, deliveries: Sequence[Delivery]) -> None:
        assert len(self.running) + len(deliveries) <= self.size, "more started than slots"
        self.running.extend(deliveries)

    def finish(self, payload: bytes, error: Exception | None = None) -> None:
        delivery = next(d for d in self.running if d.payload == payload)
        self.running.remove(delivery)
        self.report([Outcome(delivery, error)])

    def finish_on_wait(self, payload: bytes, error: Exception | None = None) -> None:
        self.on_wait.append((payload, error))

    def close(self) -> None:
        self.closed = True

    def payloads(self) -> list[bytes]:
        return [d.payload for d in self.running]


class Stepped(ConcurrentConsumer):
    """The consumer under test: hand slots; a wait moves the fake clock instead of waiting,
    and finishes the next item the test lined up for it."""

    slots: HandSlots

    def load_handler(self) -> None:
        self.slots = HandSlots(self.size, self.outcomes.put)

    def wait(self, timeout: float) -> list[Outcome]:
        assert isinstance(self.clock, FakeClock)
        self.clock.advance(timeout)
        if self.slots.on_wait:
            self.slots.finish(*self.slots.on_wait.popleft())
        return self.arrived()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryConsumerStore:
    return MemoryConsumerStore(clock, clock.sleep)


def started(store: MemoryConsumerStore, clock: FakeClock, **consumers: object) -> Stepped:
    """A consumer of ``store``, initialized: registered, its slots made."""
    settings = ConsumersConfig(processes=1, handler="goodsd.handlers:noop", **consumers)
    config = Config(queue="q", consumers=settings)
    worker = Stepped(config, ME, Scoreboard(settings.concurrency), lambda: None, store, clock)
    worker.initialize()
    return worker


def goods(*numbers: int) -> list[bytes]:
    return [f"good{n}".encode() for n in numbers]


def held(store: MemoryConsumerStore) -> list[bytes]:
    return [d.payload for d in store.held(ME)]


def test_it_claims_k_plus_batch_and_starts_k(store, clock):
    # Given 20 items and a consumer running 4 at once, claiming 3 at a time
    store.push(*goods(*range(1, 21)))
    worker = started(store, clock, concurrency=4, batch=3)
    # When it takes a step
    worker.loop()
    # Then it holds 7 (4 + 3), runs the 4 oldest, and keeps 3 ready to start
    assert worker.slots.payloads() == goods(1, 2, 3, 4)
    assert held(store) == goods(*range(1, 8))
    assert list(d.payload for d in worker.unstarted) == goods(5, 6, 7)


def test_items_finishing_out_of_order_are_acked_each_and_replaced(store, clock):
    # Given a consumer running 4 items, 3 more claimed
    store.push(*goods(*range(1, 21)))
    worker = started(store, clock, concurrency=4, batch=3)
    worker.loop()
    # When the third and the first finish, and the fourth fails
    worker.slots.finish(b"good3")
    worker.slots.finish(b"good1")
    worker.slots.finish(b"good4", ValueError("cannot"))
    worker.loop()
    # Then the freed slots start the next items at once, and as 3 outcomes (a batch) wait,
    # they are settled with a claim of as many more, in one round trip
    assert worker.slots.payloads() == goods(2, 5, 6, 7)
    assert (store.stats["done"], store.stats["failed"]) == (2, 1)
    assert sorted(held(store)) == sorted(goods(2, 5, 6, 7, 8, 9, 10))
    assert list(d.payload for d in worker.unstarted) == goods(8, 9, 10)


def test_a_lone_outcome_is_settled_within_flush_after(store, clock):
    # Given a consumer running 2 slow items, two more in reserve
    store.push(*goods(*range(1, 11)))
    worker = started(store, clock, concurrency=2, batch=2)
    worker.loop()
    # When one finishes, the reserve starts in its slot, and nothing else happens
    worker.slots.finish(b"good2")
    before = clock.now
    worker.loop()
    assert worker.slots.payloads() == goods(1, 3) and store.stats["done"] == 0
    worker.loop()
    # Then its ack is written FLUSH_AFTER later (not held for a whole batch), with the claim
    # of a new reserve in the same round trip
    assert store.stats["done"] == 1 and clock.now - before == pytest.approx(FLUSH_AFTER)
    assert held(store) == goods(1, 3, 4, 5)


class CountsClaims(MemoryConsumerStore):
    """A store that counts the round trips that claim."""

    claims = 0

    def claim(self, consumer, batch, lease, block):
        self.claims += 1
        return super().claim(consumer, batch, lease, block)

    def settle(self, consumer, settlement, policy, claim_next=0, lease=0.0):
        self.claims += bool(claim_next and settlement)  # else it calls claim()
        return super().settle(consumer, settlement, policy, claim_next, lease)


def test_an_empty_queue_is_not_polled_in_a_tight_loop_while_items_run(clock):
    # Given a consumer running 2 items, with room for 2 more, and an empty queue
    store = CountsClaims(clock, clock.sleep)
    store.push(*goods(1, 2))
    worker = started(store, clock, concurrency=4, batch=2)
    worker.loop()
    # When it takes steps while they run, for a second
    start, claims = clock.now, store.claims
    while clock.now - start < 1.0:
        worker.loop()
    # Then it claimed on its own at most once per CLAIM_POLL
    assert 1 <= store.claims - claims <= 1.0 / CLAIM_POLL + 1
    # And an item pushed meanwhile is started within CLAIM_POLL
    store.push(b"good3")
    start = clock.now
    while len(worker.slots.running) < 3:
        worker.loop()
    assert worker.slots.payloads() == goods(1, 2, 3) and clock.now - start <= CLAIM_POLL


def test_a_stop_gives_back_the_unstarted_at_once_and_lets_the_running_finish(store, clock):
    # Given a consumer running 2 items, 2 more claimed
    store.push(*goods(1, 2, 3, 4, 5))
    worker = started(store, clock, concurrency=2, batch=2)
    worker.loop()
    # When a stop is asked for, and then one running item finishes and the other fails
    worker.running = False
    worker.slots.finish_on_wait(b"good2")
    worker.slots.finish_on_wait(b"good1", ValueError("a TERM reached its program too"))
    worker.shutdown()
    # Then the unstarted ones went back first, next in line; the finished one is done; the
    # one that failed after the stop began went back too, no attempt counted; nothing is held
    assert list(reversed(store.ready)) == goods(1, 3, 4, 5)
    assert (store.stats["done"], store.stats["failed"]) == (1, 0)
    assert store.attempts == {} and store.held(ME) == [] and worker.given_back == 3
    assert worker.slots.closed and ME not in store.registrations


def test_a_malformed_item_failing_during_a_stop_still_goes_dead(store, clock):
    # Given a consumer running an item when a stop comes
    store.push(b"good1")
    worker = started(store, clock, concurrency=2, batch=1)
    worker.loop()
    worker.running = False
    # When the item turns out malformed
    worker.slots.finish_on_wait(b"good1", MalformedItem("not UTF-8"))
    worker.shutdown()
    # Then it is dead, not given back
    assert len(store.dead) == 1 and store.ready == deque()


def test_max_items_counts_across_slots_and_is_never_passed(store, clock):
    # Given a consumer running 4 at once, replaced after 6 items, and 20 waiting
    store.push(*goods(*range(1, 21)))
    worker = started(store, clock, concurrency=4, batch=10, max_items=6)
    # When it runs: all 4 finish, then the last 2
    worker.loop()
    assert held(store) == goods(1, 2, 3, 4, 5, 6)  # never more than max_items claimed
    for n in (1, 2, 3, 4):
        worker.slots.finish(f"good{n}".encode())
    worker.loop()
    assert worker.slots.payloads() == goods(5, 6)
    worker.slots.finish(b"good5")
    worker.slots.finish(b"good6")
    worker.loop()
    # Then it stops once 6 are handled, having claimed no seventh
    assert not worker.running and worker.handled == 6
    worker.shutdown()
    assert store.stats["done"] == 6 and len(store.ready) == 14 and store.held(ME) == []


def test_out_of_step_gives_back_everything_and_drops_the_running_outcomes(store, clock):
    # Given a consumer running 2 items, and a value it never claimed slipped into its list
    store.push(*goods(1, 2))
    worker = started(store, clock, concurrency=2, batch=1)
    worker.loop()
    store.inflight[ME].append(b"ghost")
    # When one finishes and is settled
    worker.slots.finish(b"good1")
    worker.loop()
    # Then nothing is settled: everything held goes back, the running item too
    assert store.stats["done"] == 0 and store.held(ME) == []
    assert sorted(store.ready) == sorted([b"ghost", *goods(1, 2)])
    # And when the running one then finishes, its outcome goes nowhere (it runs again), and
    # the consumer claims afresh: it holds exactly what it runs and keeps in reserve
    worker.slots.finish(b"good2")
    worker.loop()
    assert store.stats["done"] == 0 and not worker.orphans
    mine = [d.payload for d in (*worker.in_slots.values(), *worker.unstarted)]
    assert sorted(held(store)) == sorted(mine) and len(mine) == 3


class LosesOneSettleReply(MemoryConsumerStore):
    """A store whose first settle with a claim is done but its reply lost."""

    lost = False

    def settle(self, consumer, settlement, policy, claim_next=0, lease=0.0):
        claimed = super().settle(consumer, settlement, policy, claim_next, lease)
        if claim_next and not self.lost:
            self.lost = True
            raise redis.ConnectionError("reply lost")
        return claimed


def test_after_a_lost_reply_it_learns_what_the_claim_took_besides_what_it_holds(clock):
    # Given a consumer running 2 items, one claimed in reserve, whose next settle and claim
    # reach Redis but whose reply is lost
    store = LosesOneSettleReply(clock, clock.sleep)
    store.push(*goods(1, 2, 3, 4, 5))
    worker = started(store, clock, concurrency=2, batch=1)
    worker.loop()
    # When one item finishes and its settle claims more
    worker.slots.finish(b"good1")
    worker.loop()
    # Then it knows exactly the item the lost claim took, beside those it held already
    assert worker.slots.payloads() == goods(2, 3)
    assert [d.payload for d in worker.unstarted] == goods(4)
    assert sorted(held(store)) == goods(2, 3, 4) and store.stats["done"] == 1


def suspects_left_by_a_dead_worker(store: MemoryConsumerStore, *items: bytes) -> None:
    """``items`` claimed by another consumer that died running them all at once, and requeued
    by its master: suspects now, due at once."""
    store.push(*items)
    store.claim("host-2-bb", len(items), 30.0, 0)
    store.requeue_suspects("host-2-bb", items)


def test_suspects_run_alone_one_after_the_other_before_the_rest(store, clock):
    # Given two suspects waiting, then 3 fresh items, and a consumer running 3 at once
    suspects_left_by_a_dead_worker(store, b"good7", b"good8")
    store.push(*goods(1, 2, 3))
    worker = started(store, clock, concurrency=3, batch=2)
    # When it takes a step, then it claims them all but starts one suspect alone
    worker.loop()
    [first] = worker.slots.running
    assert first.suspect and first.payload in goods(7, 8)
    assert sorted(held(store)) == sorted(goods(1, 2, 3, 7, 8))
    # When that one is done, then the other suspect runs, alone too
    worker.slots.finish(first.payload)
    worker.loop()
    [second] = worker.slots.running
    assert second.suspect and {first.payload, second.payload} == set(goods(7, 8))
    # When that one fails, then the fresh items start, 3 at once, and neither suspect is one
    # any more: the failed one waits for its retry as an ordinary failure
    worker.slots.finish(second.payload, ValueError("cannot"))
    worker.loop()
    assert worker.slots.payloads() == goods(1, 2, 3)
    worker.running = False
    for n in (1, 2, 3):
        worker.slots.finish_on_wait(f"good{n}".encode())
    worker.shutdown()
    assert store.suspects == {} and list(store.attempts.values()) == [1]


def test_a_suspect_waits_for_the_running_items_and_nothing_starts_beside_it(store, clock):
    # Given a consumer running 3 items at once, one more claimed
    store.push(*goods(1, 2, 3, 4))
    worker = started(store, clock, concurrency=3, batch=1)
    worker.loop()
    assert worker.slots.payloads() == goods(1, 2, 3)
    # When a suspect appears and an item finishes, then the next fresh item starts, and the
    # suspect claimed with that settle waits, first in line, while others run
    suspects_left_by_a_dead_worker(store, b"good5")
    worker.slots.finish(b"good1")
    worker.loop()
    assert worker.slots.payloads() == goods(2, 3, 4)
    assert [(d.payload, d.suspect) for d in worker.unstarted] == [(b"good5", True)]
    # When the running ones end, then the suspect starts alone, and what is claimed meanwhile
    # waits for it
    store.push(*goods(6, 7))
    for n in (2, 3, 4):
        worker.slots.finish(f"good{n}".encode())
    worker.loop()
    assert worker.slots.payloads() == [b"good5"]
    worker.loop()
    assert worker.slots.payloads() == [b"good5"]
    assert [d.payload for d in worker.unstarted] == goods(6, 7)
    # When it is done, then the rest start together
    worker.slots.finish(b"good5")
    worker.loop()
    assert worker.slots.payloads() == goods(6, 7)
