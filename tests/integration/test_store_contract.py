"""The consumer store's contract (goodsd.store.ConsumerStore), run against the real store on a
real redis-server and against the in-memory stand-in the unit tests use (tests/memory_store.py),
so the two cannot drift apart. Requeues by a master (Upkeep) is checked on Redis only."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from memory_store import FakeClock, MemoryConsumerStore
from support import wait_for

from goodsd.store import (
    STAT_FIELDS,
    TAG_MARK,
    Batch,
    ConsumerStore,
    DeadRecord,
    Failure,
    InFlightLost,
    RedisConsumerStore,
    Registration,
    RetryPolicy,
    Settlement,
    Upkeep,
    Views,
)
from goodsd.store.records import ENVELOPE_HEAD, Delivery, Suspect, fingerprint

POLICY = RetryPolicy(retries=2, delay=60.0)
LEASE = 30.0
ME = "host-1-aa"


@dataclass
class Harness:
    """A store under test and what a test needs around it: push items as any program does,
    read what the store keeps, tamper with an in-flight list, let time pass (on Redis it passes
    by itself: a test then waits for what it expects)."""

    store: ConsumerStore
    push: Callable[..., None]  # items, first given first taken
    ready: Callable[[], list[bytes]]  # the ready list, pop end first
    retry_waiting: Callable[[], list[bytes]]  # values in the retry set
    dead: Callable[[], list[DeadRecord]]  # newest first
    stats: Callable[[], dict[str, int]]
    attempts: Callable[[], dict[str, int]]  # tag -> failed attempts
    registered: Callable[[], set[str]]
    slip_in: Callable[[str, bytes], None]  # an unclaimed value at the oldest end of a list
    pass_time: Callable[[float], None]
    now: Callable[[], float]  # seconds, the clock the store waits by
    # a master requeues a gone consumer's items, marking suspect the values named
    requeue_suspects: Callable[[str, list[bytes]], int]
    suspects: Callable[[], dict[str, str]]  # tag -> the consumer that died with it


def on_redis(r: redis.Redis) -> Harness:
    views = Views(r, "q")
    return Harness(
        store=RedisConsumerStore(r, "q"),
        push=lambda *items: r.lpush("q", *items) and None,
        ready=lambda: r.lrange("q", 0, -1)[::-1],
        retry_waiting=lambda: r.zrange(views.keys.retry, 0, -1),
        dead=lambda: views.dead_records(10_000),
        stats=views.stats,
        attempts=lambda: {k.decode(): int(v) for k, v in r.hgetall(views.keys.attempts).items()},
        registered=lambda: set(views.registered()),
        slip_in=lambda consumer, value: r.rpush(views.keys.inflight(consumer), value) and None,
        pass_time=lambda seconds: None,
        now=time.monotonic,
        requeue_suspects=lambda consumer, values: Upkeep(r, "q").requeue(
            consumer, suspects=[fingerprint(value) for value in values]
        ),
        suspects=lambda: {
            k.decode(): v.decode() for k, v in r.hgetall(views.keys.suspects).items()
        },
    )


def in_memory() -> Harness:
    clock = FakeClock()
    store = MemoryConsumerStore(clock, clock.sleep)
    return Harness(
        store=store,
        push=store.push,
        ready=lambda: list(reversed(store.ready)),
        retry_waiting=lambda: sorted(store.retry, key=lambda value: (store.retry[value], value)),
        dead=lambda: [DeadRecord.decode(raw) for raw in store.dead],
        stats=lambda: {**dict.fromkeys(STAT_FIELDS, 0), **store.stats},
        attempts=lambda: dict(store.attempts),
        registered=lambda: set(store.registrations),
        slip_in=lambda consumer, value: store.inflight[consumer].append(value),
        pass_time=clock.advance,
        now=clock,
        requeue_suspects=store.requeue_suspects,
        suspects=lambda: dict(store.suspects),
    )


@pytest.fixture(params=["redis", "memory"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "redis":
        yield on_redis(request.getfixturevalue("r"))
    else:
        yield in_memory()


def registered_with(h: Harness, *items: bytes) -> list:
    """Given a registered consumer and ``items`` pushed, what it claims of them."""
    h.store.register(ME, Registration(host="host", pid=1), LEASE)
    h.push(*items)
    return h.store.claim(ME, len(items), LEASE, 0)


# -- claiming --------------------------------------------------------------------------------


def test_a_claim_takes_the_oldest_items_first(h):
    # Given five items pushed
    h.store.register(ME, Registration(host="host", pid=1), LEASE)
    h.push(b"good1", b"good2", b"good3", b"good4", b"good5")
    # When a consumer claims three
    claimed = h.store.claim(ME, 3, LEASE, 0)
    # Then it gets the three oldest, whole and untagged, holds them oldest first, and they count
    assert claimed == [(item, item, None) for item in (b"good1", b"good2", b"good3")]
    assert h.store.held(ME) == claimed
    assert h.ready() == [b"good4", b"good5"]
    assert h.stats()["claimed"] == 3


def test_a_claim_on_an_empty_queue_gets_nothing(h):
    h.store.register(ME, Registration(host="host", pid=1), LEASE)
    assert h.store.claim(ME, 5, LEASE, 0) == []
    assert h.store.claim(ME, 5, LEASE, 0.05) == []
    assert h.store.held(ME) == []


def test_envelope_shaped_items_from_strangers_are_ordinary_items(h):
    # Given items that look like retry envelopes, with tags Redis never gave out
    forged = [TAG_MARK + b"0123456789abcdef:x", TAG_MARK + b"not-hex-at-all!!:y", TAG_MARK]
    # When they are claimed, then each is delivered whole, untagged
    assert registered_with(h, *forged) == [(value, value, None) for value in forged]


def test_claims_and_read_backs_are_batches_of_parallel_lists(h):
    # Given a consumer holding a retry that is due and an item pushed after it
    claimed = registered_with(h, b"good1", b"good2")
    failed = (Failure(claimed[0], "boom"),)
    h.store.settle(ME, Settlement("s1", done=claimed[1:], failed=failed), RetryPolicy(2, 0.0))
    h.push(b"good3")
    # When it claims them, reads back what it holds, settles them claiming more than there
    # is, and claims again
    retried = h.store.claim(ME, 2, LEASE, 0)
    held = h.store.held(ME)
    following = h.store.settle(ME, Settlement("s2", done=retried), POLICY, 5, LEASE)
    again = h.store.claim(ME, 5, LEASE, 0)
    # Then each answer is a Batch whose lists are its deliveries' fields, empty ones too
    assert [(d.payload, d.tag is not None) for d in retried] == [
        (b"good1", True),
        (b"good3", False),
    ]
    for batch in (retried, held, following, again):
        assert isinstance(batch, Batch)
        fields = [[d.claimed for d in batch], [d.payload for d in batch], [d.tag for d in batch]]
        assert [batch.values, batch.payloads, batch.tags] == fields
    assert held == retried and following == again == [] and h.store.held(ME) == []


# -- settling --------------------------------------------------------------------------------


def test_settling_everything_done_leaves_nothing_held(h):
    claimed = registered_with(h, b"good1", b"good2")
    h.store.settle(ME, Settlement("s1", done=tuple(claimed)), POLICY)
    assert h.store.held(ME) == []
    assert h.stats()["done"] == 2
    assert h.ready() == [] and h.retry_waiting() == [] and h.dead() == []


@pytest.mark.parametrize("seed", range(8))
def test_any_subset_of_what_is_held_can_be_settled(h, seed):
    # Given a consumer holding a few items, some of them equal
    rng = random.Random(seed)
    items = [f"good{rng.randrange(4)}".encode() for _ in range(rng.randint(2, 8))]
    claimed = registered_with(h, *items)
    # When it settles a random subset of them, each done, failed or given back
    chosen = sorted(rng.sample(range(len(claimed)), rng.randint(1, len(claimed))))
    outcome = {position: rng.choice("dfg") for position in chosen}
    settlement = Settlement(
        "s1",
        done=tuple(claimed[p] for p in chosen if outcome[p] == "d"),
        failed=tuple(Failure(claimed[p], "boom") for p in chosen if outcome[p] == "f"),
        given_back=tuple(claimed[p] for p in chosen if outcome[p] == "g"),
        kept=len(claimed) - len(chosen),
    )
    h.store.settle(ME, settlement, POLICY)
    # Then it holds exactly the others, in claimed order; the failed wait for a retry, the
    # given back are next in the ready list, oldest first; the counters agree
    assert h.store.held(ME) == [d for p, d in enumerate(claimed) if p not in outcome]
    waiting = sorted(value[ENVELOPE_HEAD:] for value in h.retry_waiting())
    assert waiting == sorted(f.delivery.payload for f in settlement.failed)
    assert h.ready() == [d.claimed for d in settlement.given_back]
    stats = h.stats()
    assert (stats["done"], stats["failed"], stats["requeued"]) == (
        len(settlement.done),
        len(settlement.failed),
        len(settlement.given_back),
    )


def test_a_failed_item_waits_for_its_delay_and_comes_back_tagged(h):
    # Given an item that failed, to be retried after half a second
    [first] = registered_with(h, b"good1")
    h.store.settle(ME, Settlement("s1", failed=(Failure(first, "boom"),)), RetryPolicy(2, 0.5))
    # Then it waits in the retry set, not in the ready list, one attempt counted
    assert h.ready() == [] and len(h.retry_waiting()) == 1
    assert list(h.attempts().values()) == [1]
    assert h.store.claim(ME, 1, LEASE, 0) == []
    # When its delay has passed, then a claim takes it, the same item, tagged
    h.pass_time(0.5)
    [again] = wait_for(lambda: h.store.claim(ME, 1, LEASE, 0), 5, "the retry claimed")
    assert again.payload == b"good1" and again.tag in h.attempts()
    # And once done, its attempts are forgotten
    h.store.settle(ME, Settlement("s2", done=(again,)), POLICY)
    assert h.attempts() == {} and h.retry_waiting() == []


def test_a_claim_waiting_on_an_empty_queue_ends_when_a_retry_falls_due(h):
    # Given an empty queue and one failed item, to be retried after 0.3 s
    [first] = registered_with(h, b"good1")
    h.store.settle(ME, Settlement("s1", failed=(Failure(first, "boom"),)), RetryPolicy(2, 0.3))
    # When a consumer claims one item, willing to wait up to 10 s for it
    started = h.now()
    [again] = wait_for(lambda: h.store.claim(ME, 1, LEASE, 10.0), 20, "the retry claimed")
    # Then its wait ended once the retry was due (about 0.3 s; not at the 10 s), and it took
    # the retry
    assert h.now() - started < 5.0
    assert again.payload == b"good1" and again.tag in h.attempts()


def test_an_item_out_of_retries_or_malformed_goes_to_the_dead_list(h):
    # Given two items: one that may not be retried, one malformed (final) despite retries
    first, second = registered_with(h, b"good1", b"bad\xff")
    settlement = Settlement("s1", failed=(Failure(first, "boom"),), kept=1)
    h.store.settle(ME, settlement, RetryPolicy(0, 60))
    malformed = Failure(second, "malformed: not UTF-8", final=True)
    h.store.settle(ME, Settlement("s2", failed=(malformed,)), POLICY)
    # Then both are dead, newest first, with their error, attempts and consumer
    dead = h.dead()
    assert [(d.item, d.error, d.attempts, d.consumer) for d in dead] == [
        (b"bad\xff", "malformed: not UTF-8", 1, ME),
        (b"good1", "boom", 1, ME),
    ]
    assert h.retry_waiting() == [] and h.attempts() == {}
    assert (h.stats()["failed"], h.stats()["dead"], h.stats()["retried"]) == (2, 2, 0)


def test_given_back_items_are_taken_next_and_a_retry_stays_a_retry(h):
    # Given a retry claimed again with two fresh items behind it
    [first] = registered_with(h, b"good1")
    h.store.settle(ME, Settlement("s1", failed=(Failure(first, "boom"),)), RetryPolicy(2, 0))
    h.push(b"good2", b"good3")
    retry, *fresh = h.store.claim(ME, 3, LEASE, 0)
    assert retry.tag is not None
    # When all three are given back unstarted
    h.store.settle(ME, Settlement("s2", given_back=(retry, *fresh)), POLICY)
    # Then the fresh ones are next in the ready list, oldest first, and the retry waits as a
    # retry again, due at once, its attempts kept
    assert h.ready() == [b"good2", b"good3"]
    assert h.retry_waiting() == [retry.claimed]
    assert h.attempts() == {retry.tag: 1}
    assert [d.payload for d in h.store.claim(ME, 3, LEASE, 0)] == [b"good1", b"good2", b"good3"]


def test_a_repeated_settle_changes_nothing(h):
    claimed = registered_with(h, b"good1", b"good2")
    settlement = Settlement("s1", done=claimed[:1], failed=(Failure(claimed[1], "boom"),))
    h.store.settle(ME, settlement, POLICY)
    before = (h.stats(), h.retry_waiting(), h.attempts())
    h.store.settle(ME, settlement, POLICY)
    assert (h.stats(), h.retry_waiting(), h.attempts()) == before


def test_a_settle_that_no_longer_matches_raises_and_changes_nothing(h):
    # Given a consumer holding two items, and a value it never claimed slipped into its list
    claimed = registered_with(h, b"good1", b"good2")
    h.slip_in(ME, b"ghost")
    before = (h.stats(), h.ready(), h.retry_waiting())
    # When it settles what it holds, then nothing is settled
    settlement = Settlement("s1", done=claimed[:1], failed=(Failure(claimed[1], "boom"),))
    with pytest.raises(InFlightLost):
        h.store.settle(ME, settlement, POLICY)
    assert (h.stats(), h.ready(), h.retry_waiting()) == before
    assert [d.claimed for d in h.store.held(ME)] == [b"ghost", b"good1", b"good2"]


def test_a_settle_claims_the_next_batch_in_the_same_call(h):
    claimed = registered_with(h, b"good1")
    h.push(b"good2", b"good3")
    following = h.store.settle(ME, Settlement("s1", done=tuple(claimed)), POLICY, 5, LEASE)
    assert [d.payload for d in following] == [b"good2", b"good3"]
    assert h.store.held(ME) == following


def test_claimed_counts_each_item_once_however_many_are_held(h):
    # Given a consumer holding three items (as one running several at once does)
    claimed = registered_with(h, b"good1", b"good2", b"good3")
    h.push(b"good4", b"good5", b"good6")
    # When it settles one, keeping two, and claims more with the same call, then without one
    more = h.store.settle(ME, Settlement("s1", done=claimed[:1], kept=2), POLICY, 2, LEASE)
    more += h.store.claim(ME, 1, LEASE, 0)
    # Then each item claimed counted once: the ones still held are not counted again
    assert len(more) == 3 and len(h.store.held(ME)) == 5
    assert h.stats()["claimed"] == 6


def test_giving_back_everything_forgets_the_consumer_until_its_next_claim(h):
    claimed = registered_with(h, b"good1", b"good2")
    assert h.store.give_back_all(ME) == 2
    assert h.ready() == [d.claimed for d in claimed] and h.store.held(ME) == []
    assert ME not in h.registered()
    h.store.claim(ME, 1, LEASE, 0)
    assert ME in h.registered()


def test_a_consumer_leaves_the_registry_when_it_deregisters(h):
    h.store.register(ME, Registration(host="host", pid=1), LEASE)
    assert h.registered() == {ME}
    h.store.deregister(ME)
    assert h.registered() == set()


# -- suspects: items running beside others when their worker died ----------------------------


def suspects_made(h: Harness, *items: bytes) -> list:
    """Given a consumer that claimed ``items`` and died running them all, requeued by its
    master: what the next claim takes of them."""
    registered_with(h, *items)
    assert h.requeue_suspects(ME, list(items)) == len(items)
    return h.store.claim(ME, len(items), LEASE, 0)


def test_items_running_when_their_worker_died_come_back_suspect_no_attempt_counted(h):
    # Given a consumer that died holding three items, running the first and the last
    registered_with(h, b"good1", b"good2", b"good3")
    # When its master requeues them, naming those two as suspects
    assert h.requeue_suspects(ME, [b"good1", b"good3"]) == 3
    # Then no attempt counted: both wait in the retry set (due now), the other is ready
    assert (h.stats()["failed"], h.stats()["requeued"]) == (0, 3)
    assert h.ready() == [b"good2"] and len(h.retry_waiting()) == 2
    assert sorted(h.attempts().values()) == [0, 0]
    assert h.suspects() == dict.fromkeys(h.attempts(), ME)
    # And the next claim takes them first, each a suspect, then the other item, not one
    claimed = h.store.claim(ME, 3, LEASE, 0)
    assert sorted(d.payload for d in claimed[:2]) == [b"good1", b"good3"]
    assert [d.suspect for d in claimed] == [True, True, False]
    assert {d.tag for d in claimed[:2]} == set(h.suspects())
    # And a read-back of what is held says so too
    assert {d.payload: d.suspect for d in h.store.held(ME)} == {
        b"good1": True,
        b"good2": False,
        b"good3": True,
    }


def test_a_retry_made_suspect_keeps_its_tag_and_attempts(h):
    # Given an item that failed once and is claimed again
    [first] = registered_with(h, b"good1")
    h.store.settle(ME, Settlement("s1", failed=(Failure(first, "boom"),)), RetryPolicy(2, 0))
    [retry] = h.store.claim(ME, 1, LEASE, 0)
    # When its worker dies running it beside others, then it comes back a suspect, the same
    # delivery, its attempt still counted
    h.requeue_suspects(ME, [retry.claimed])
    [again] = h.store.claim(ME, 1, LEASE, 0)
    assert again.suspect and again.claimed == retry.claimed
    assert h.attempts() == {retry.tag: 1} and h.suspects() == {retry.tag: ME}


def test_a_suspect_loses_its_mark_when_done_or_failed_and_keeps_it_when_given_back(h):
    # Given three suspects claimed
    done, failed, back = suspects_made(h, b"good1", b"good2", b"good3")
    # When one is done, one fails and one is given back unstarted
    settlement = Settlement(
        "s1", done=(done,), failed=(Failure(failed, "boom"),), given_back=(back,)
    )
    h.store.settle(ME, settlement, RetryPolicy(2, 0))
    # Then only the one given back is still a suspect; the failed one counts its attempt
    assert h.suspects() == {back.tag: ME}
    assert h.attempts() == {failed.tag: 1, back.tag: 0}
    claimed = {d.payload: d.suspect for d in h.store.claim(ME, 3, LEASE, 0)}
    assert claimed == {back.payload: True, failed.payload: False}


def test_a_claim_holding_a_suspect_is_a_batch_with_that_delivery_a_suspect(h):
    # Given a consumer that failed one item, then died running another beside a third: one
    # retry and one suspect wait in the retry set, the third is back in the ready list
    claimed = registered_with(h, b"good1", b"good2", b"good3")
    failed = (Failure(claimed[0], "boom"),)
    h.store.settle(ME, Settlement("s1", failed=failed, kept=2), RetryPolicy(2, 0))
    assert h.requeue_suspects(ME, [b"good2"]) == 2
    [suspect_tag] = h.suspects()
    # When it claims them with two items pushed after, and reads back what it holds
    h.push(b"good4", b"good5")
    batch = h.store.claim(ME, 5, LEASE, 0)
    held = h.store.held(ME)
    # Then the claim is a Batch: the due retries first (the suspect among them), then the
    # ready items
    assert isinstance(batch, Batch)
    assert sorted(batch.payloads[:2]) == [b"good1", b"good2"]
    assert batch.payloads[2:] == [b"good3", b"good4", b"good5"]
    # And the delivery at the suspect's index, and there only, is a Suspect, its payload and
    # tag right, however it is reached; the retry beside it is a plain tagged delivery
    at = batch.payloads.index(b"good2")
    for deliveries in (batch, held):
        assert [type(d) for d in deliveries] == [Suspect if i == at else Delivery for i in range(5)]
        assert [type(deliveries[i]) for i in range(-5, 5)] == [
            Suspect if i % 5 == at else Delivery for i in range(-5, 5)
        ]
        suspect = deliveries[at]
        assert suspect.suspect and suspect.payload == b"good2" and suspect.tag == suspect_tag
        assert suspect.claimed.endswith(b":good2") and suspect.claimed[:1] == TAG_MARK[:1]
        retry = deliveries[1 - at]
        assert (retry.payload, retry.tag is not None, retry.suspect) == (b"good1", True, False)
        assert h.attempts() == {retry.tag: 1, suspect_tag: 0}
        # And the plain items beside it are whole and untagged
        assert list(deliveries)[2:] == [
            (item, item, None) for item in (b"good3", b"good4", b"good5")
        ]
    assert held == batch


# -- requeues by a master (Redis only) -------------------------------------------------------


def test_a_requeue_counts_a_failed_attempt_for_each_item_that_was_running(r):
    # Given a consumer that died holding three items, running the first and the last
    store = RedisConsumerStore(r, "q")
    store.register("c1", Registration(host="h", pid=1), 30)
    r.lpush("q", b"good1", b"good2", b"good3")
    store.claim("c1", 3, 30, 0)
    # When its master requeues them, naming the two that were running by their fingerprints
    running = [fingerprint(b"good1"), fingerprint(b"good3")]
    count = Upkeep(r, "q").requeue("c1", running=running, error="worker died", policy=POLICY)
    # Then each of those counts a failed attempt and waits for its retry, the other is back
    # at the pop end, and the consumer is forgotten
    assert count == 3
    waiting = sorted(value[ENVELOPE_HEAD:] for value in r.zrange("goodsd:{q}:retry", 0, -1))
    assert waiting == [b"good1", b"good3"]
    assert sorted(int(n) for n in r.hvals("goodsd:{q}:attempts")) == [1, 1]
    assert r.lrange("q", 0, -1) == [b"good2"]
    assert r.hlen("goodsd:{q}:consumers") == 0


def test_a_requeue_blames_one_held_item_per_fingerprint_and_ignores_settled_ones(r):
    # Given a consumer that died holding an item twice (pushed twice) and another item
    store = RedisConsumerStore(r, "q")
    store.register("c1", Registration(host="h", pid=1), 30)
    r.lpush("q", b"same", b"same", b"other")
    store.claim("c1", 3, 30, 0)
    # When its master requeues them, naming one copy as running, and an item it no longer held
    running = [fingerprint(b"same"), fingerprint(b"settled before the death")]
    count = Upkeep(r, "q").requeue("c1", running=running, error="worker died", policy=POLICY)
    # Then one copy counts a failed attempt; the other copy and the other item are back
    assert count == 3
    waiting = [value[ENVELOPE_HEAD:] for value in r.zrange("goodsd:{q}:retry", 0, -1)]
    assert waiting == [b"same"]
    assert sorted(r.lrange("q", 0, -1)) == [b"other", b"same"]
