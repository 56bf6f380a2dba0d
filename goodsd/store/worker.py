"""The hot path: what a consumer and a producer ask of the store, each with its own connection.

A consumer registers, claims batches, settles them (the acks of one batch and the claim of the
next in one round trip) and reads back what it holds after a lost reply. A producer pushes
batches below the high watermark, holds the singleton lock when asked to, and publishes its
record for status views.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import redis

from goodsd.store import scripts
from goodsd.store.keys import QueueKeys
from goodsd.store.records import (
    NO_DELIVERIES,
    TAG_MARK,
    Batch,
    DeadRecord,
    Delivery,
    ProducerRecord,
    Registration,
    decode_hash,
    deliveries,
    new_tag,
    tagged_value,
)

# How long a producer's last batch id is kept for its retries; how long an unclaimed wake-up
# waits for a standby.
PUSHED_MARKER_TTL_MS = 3_600_000
WAKE_TTL_MS = 10_000
# Results of the push script.
PUSHED, FULL, NOT_HOLDER = 1, 0, -1
# The shortest wait of a blocking claim, in seconds. BLMOVE's timeout of 0 means "forever",
# and Redis 6.2 to 7.0.7 truncate a timeout to whole milliseconds, so 0.001 can become 0
# (redis/redis#11687): never below 10 ms.
MIN_BLOCK = 0.01


class PushResult(NamedTuple):
    """What the push script did: ``status`` is PUSHED, FULL or NOT_HOLDER; ``length`` is the
    ready list's length after it."""

    status: int
    length: int


class InFlightLost(Exception):
    """A consumer's in-flight list no longer matches what it claimed; nothing was settled."""


@dataclass(frozen=True)
class Failure:
    """A handler failure to record: ``final`` skips the remaining retries (malformed items)."""

    delivery: Delivery
    error: str
    final: bool = False


class RetryPolicy(NamedTuple):
    """How failed items are retried: up to ``retries`` times (``retries + 1`` attempts in
    all), each ``delay`` seconds after its failure."""

    retries: int
    delay: float


@dataclass(frozen=True)
class Settlement:
    """The outcomes of some of the deliveries a consumer holds, any subset of them, recorded
    together: ``done`` ones leave, ``failed`` ones wait for a retry or die, ``given_back`` ones
    (unstarted) go back to be taken next, oldest first. Each group is in claimed order.
    ``kept`` is how many other deliveries the consumer goes on holding: Redis must hold
    exactly those and the ones named, or nothing is settled (InFlightLost). ``settle_id``
    names it, so that recording it again (after a lost reply) changes nothing. ``done`` is
    best a Batch (with one item at a time, a slice of what the consumer claimed): its values
    and tags then go to Redis as they are, without a look at each delivery."""

    settle_id: str
    done: Sequence[Delivery] = ()
    failed: tuple[Failure, ...] = ()
    given_back: Sequence[Delivery] = ()
    kept: int = 0

    def __len__(self) -> int:
        return len(self.done) + len(self.failed) + len(self.given_back)


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds Redis wants, never 0 (PX 0 is an error)."""
    return max(1, int(seconds * 1000))


class ConsumerStore(Protocol):
    """What a consumer asks of its queue; ``RedisConsumerStore`` is the real one. Methods that
    talk to Redis raise redis-py's errors (the consumer's retry loop sorts them out)."""

    def register(self, consumer: str, registration: Registration, lease: float) -> None:
        """Make the consumer visible and take its lease (``lease`` seconds)."""

    def deregister(self, consumer: str) -> None:
        """A clean exit: its in-flight list is already empty."""

    def claim(self, consumer: str, batch: int, lease: float, block: float) -> Batch:
        """Up to ``batch`` items, oldest first (due retries before the backlog), waiting up to
        ``block`` seconds while there are none; renews the lease."""

    def settle(
        self,
        consumer: str,
        settlement: Settlement,
        policy: RetryPolicy,
        claim_next: int = 0,
        lease: float = 0.0,
    ) -> Batch:
        """Record ``settlement`` (InFlightLost, changing nothing, when the store no longer
        holds what the consumer does), then claim up to ``claim_next`` items without waiting;
        returns them."""

    def held(self, consumer: str) -> Batch:
        """What the consumer holds, oldest first."""

    def give_back_all(self, consumer: str) -> int:
        """Give back everything held and forget the consumer; returns how many items."""


class RedisConsumerStore:
    """One queue as a consumer process sees it, through its own connection (a ConsumerStore)."""

    def __init__(self, client: redis.Redis, queue: str, wait_replicas: int = 0) -> None:
        self.client = client
        self.keys = QueueKeys.of(queue)
        self.wait_replicas = wait_replicas  # replicas that must acknowledge a settle (WAIT)
        # consumer id -> its registration record, put back by every claim if it went missing
        self._registrations: dict[str, str] = {}
        self._consumer_keys: dict[str, list[str]] = {}
        self._claim = scripts.register(client, "claim")
        self._settle = scripts.register(client, "settle")
        self._requeue = scripts.register(client, "requeue")
        self._held = scripts.register(client, "held")
        # the scripts sent inside pipelines, by hash only: they must be loaded beforehand
        self._pipelined = (self._claim,)

    def register(self, consumer: str, registration: Registration, lease: float) -> None:
        """Make the consumer visible (for status and for requeue by host) and take its lease."""
        self._registrations[consumer] = registration.encode()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.consumers, consumer, self._registrations[consumer])
        pipe.set(self.keys.lease(consumer), consumer, px=ms(lease))
        for script in self._pipelined:  # pipelines send them by hash only
            pipe.script_load(script.script)
        pipe.execute()

    def deregister(self, consumer: str) -> None:
        """A clean exit: its in-flight list is already empty."""
        self._registrations.pop(consumer, None)
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.consumers, consumer)
        pipe.delete(self.keys.lease(consumer), self.keys.settled(consumer))
        pipe.execute()

    # -- claiming -----------------------------------------------------------------------

    def _keys_of(self, consumer: str) -> list[str]:
        """The consumer's script KEYS, built once per consumer (they go with every call)."""
        keys = self._consumer_keys.get(consumer)
        if keys is None:
            keys = self._consumer_keys[consumer] = self.keys.consumer(consumer)
        return keys

    def _claim_args(self, consumer: str, n: int, lease: float) -> list[object]:
        return [n, ms(lease), consumer, self._registrations.get(consumer, "")]

    def claim(self, consumer: str, batch: int, lease: float, block: float) -> Batch:
        """Claim up to ``batch`` items, oldest first. Non-blocking first (one round trip when
        the queue has items); on an empty queue, BLMOVE waits up to ``block`` seconds, or until
        the earliest retry is due if that is sooner (a retry never enters the ready list, so
        BLMOVE cannot see it), and the rest of the batch is claimed in the same pipeline, so a
        pick-up costs one round trip."""
        if batch <= 0:
            return NO_DELIVERIES
        keys, args = self._keys_of(consumer), self._claim_args(consumer, batch, lease)
        values, retries, *due = self._claim(keys=keys, args=args)
        if values or block <= 0:
            return deliveries(values, retries)
        if due and due[0] >= 0:  # a millisecond more: a truncated timeout must not end early
            block = min(block, max((due[0] + 1) / 1000, MIN_BLOCK))
        pipe = self.client.pipeline(transaction=False)
        pipe.blmove(self.keys.ready, self.keys.inflight(consumer), block, "RIGHT", "LEFT")
        args[0] = batch - 1
        args.append("1")  # after_block: count what BLMOVE took too
        scripts.in_pipeline(pipe, self._claim, keys, args)
        first, (more, retries, *_) = scripts.execute(self.client, pipe, self._pipelined)
        if first is None:
            return deliveries(more, retries)
        if first[:1] == TAG_MARK[:1]:  # rare: let Redis judge it, like every claimed value
            return self.held(consumer)
        return Batch([first]) + deliveries(more, retries)

    # -- settling -----------------------------------------------------------------------

    def settle(
        self,
        consumer: str,
        settlement: Settlement,
        policy: RetryPolicy,
        claim_next: int = 0,
        lease: float = 0.0,
    ) -> Batch:
        """Record ``settlement`` (see scripts/lib/settle.lua) in one round trip; failures are
        retried by ``policy``. Safe to repeat with the same settlement. Raises InFlightLost,
        having changed nothing, when Redis no longer holds what the consumer does: every
        delivery named, and ``kept`` others.

        With ``claim_next``, a non-blocking claim of that many items rides in the same round
        trip (a busy consumer then pays one round trip per batch) with ``lease``; its items
        are returned.
        """
        if not settlement:
            return self.claim(consumer, claim_next, lease, 0) if claim_next else NO_DELIVERIES
        claim = self._claim_args(consumer, claim_next, lease) if claim_next else ["", "", "", ""]
        keys = self._keys_of(consumer)
        args = claim + settlement_args(settlement, policy, consumer, time.time())
        if self.wait_replicas:
            reply = scripts.call_and_wait(self.client, self._settle, keys, args, self.wait_replicas)
        else:
            reply = self._settle(keys=keys, args=args)
        if reply[0] == -1:
            raise InFlightLost(
                f"the in-flight list of {consumer} no longer matches what it claimed (its lease "
                "lapsed, or Redis lost recent writes)"
            )
        return deliveries(*reply[1]) if claim_next else NO_DELIVERIES

    def held(self, consumer: str) -> Batch:
        """What the consumer holds in flight, oldest first: after a lost reply this is the
        truth about what a claim took."""
        return deliveries(*self._held(keys=self._keys_of(consumer)))

    def give_back_all(self, consumer: str) -> int:
        """Give back everything the consumer holds (see scripts/requeue.lua) and forget it, so
        that it starts afresh; its next claim registers it again. Returns how many items."""
        return int(self._requeue(keys=self._keys_of(consumer), args=[0, consumer, 0, 0, 0]))


def settlement_args(
    settlement: Settlement, policy: RetryPolicy, consumer: str, at: float
) -> list[object]:
    """How scripts/lib/settle.lua takes a settlement (its failures dying ``at``)."""
    done = settlement.done
    batch = done if isinstance(done, Batch) else None  # its lists go as they are
    tags = list(filter(None, batch.tags)) if batch is not None else [d.tag for d in done if d.tag]
    args: list[object] = [settlement.settle_id, settlement.kept]
    args += [policy.retries, int(policy.delay * 1000)]
    args += [len(done), len(tags), len(settlement.failed), len(settlement.given_back)]
    if settlement.kept:  # else the whole list goes: the done values need not travel
        args += batch.values if batch is not None else [d.claimed for d in done]
    args += tags
    for failure in settlement.failed:
        args += failure_args(failure, consumer, at)
    args += [delivery.claimed for delivery in settlement.given_back]
    return args


def failure_args(failure: Failure, consumer: str, at: float) -> list[object]:
    """How the scripts take one failed delivery: its claimed value, its tag (a fresh one on a
    first failure), its retry envelope, its dead record's head and whether it is final."""
    delivery = failure.delivery
    tag = delivery.tag or new_tag()
    head = DeadRecord(delivery.payload, failure.error, at, consumer).head()
    return [delivery.claimed, tag, tagged_value(tag, delivery.payload), head, int(failure.final)]


class ProducerStore:
    """One queue as a producer process sees it, through its own connection."""

    def __init__(self, client: redis.Redis, queue: str, wait_replicas: int = 0) -> None:
        self.client = client
        self.keys = QueueKeys.of(queue)
        self.wait_replicas = wait_replicas  # replicas that must acknowledge a push (WAIT)
        self._push = scripts.register(client, "push")
        self._lock_acquire = scripts.register(client, "lock_acquire")
        self._lock_extend = scripts.register(client, "lock_extend")
        self._lock_release = scripts.register(client, "lock_release")

    def push_batch(
        self, producer: str, batch_id: str, items: list[bytes], high: int, token: str = ""
    ) -> PushResult:
        """LPUSH ``items`` (oldest first, so FIFO) if the ready list is below ``high``; see
        scripts/push.lua. Retrying with the same ``batch_id`` never pushes twice."""
        keys = [
            self.keys.ready,
            self.keys.stats,
            self.keys.pushed(producer),
            self.keys.producer_lock,
        ]
        args = [high, batch_id, PUSHED_MARKER_TTL_MS, token, *items]
        if self.wait_replicas:
            reply = scripts.call_and_wait(self.client, self._push, keys, args, self.wait_replicas)
        else:
            reply = self._push(keys=keys, args=args)
        status, length = reply
        return PushResult(int(status), int(length))

    def backlog(self) -> int:
        """The ready list's length."""
        return int(self.client.llen(self.keys.ready))

    def acquire_lock(self, token: str, ttl: float) -> int:
        """Try to take the singleton producer lock: 0 when taken, else the holder's ms left."""
        return int(self._lock_acquire(keys=[self.keys.producer_lock], args=[token, ms(ttl)]))

    def extend_lock(self, token: str, ttl: float) -> bool:
        """Renew the lock for ``ttl``; False means another token holds it, or none does."""
        return bool(self._lock_extend(keys=[self.keys.producer_lock], args=[token, ms(ttl)]))

    def release_lock(self, token: str) -> bool:
        """Free the lock if ``token`` still holds it, and wake one standby."""
        keys = [self.keys.producer_lock, self.keys.producer_wake]
        return bool(self._lock_release(keys=keys, args=[token, WAKE_TTL_MS]))

    def wait_lock_free(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a release; True when woken by one."""
        return self.client.blpop([self.keys.producer_wake], timeout=timeout) is not None

    def report_producer(self, producer: str, record: ProducerRecord) -> None:
        """Publish a producer's state for status views."""
        self.client.hset(self.keys.producers, producer, record.encode())

    def producers(self) -> dict[str, ProducerRecord]:
        """Producer id -> its registry entry."""
        return decode_hash(self.client.hgetall(self.keys.producers), ProducerRecord.decode)

    def forget_producers(self, producers: list[str]) -> None:
        """Drop producers from the registry, with their last-batch markers."""
        if not producers:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.keys.producers, *producers)
        pipe.delete(*(self.keys.pushed(p) for p in producers))
        pipe.execute()
