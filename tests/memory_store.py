"""An in-memory stand-in for a consumer's store (``goodsd.store.ConsumerStore``): the contract
of the Redis scripts (goodsd/store/scripts/), kept in plain containers and timed by an injected
clock, so that unit tests can drive a Consumer step by step without Redis.

tests/integration/test_store_contract.py runs the same tests against this and against the real
store on a real redis-server, so the two cannot drift apart. Only tests use it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable

from goodsd.store import Failure, InFlightLost, Registration, RetryPolicy, Settlement
from goodsd.store.records import (
    NO_DELIVERIES,
    TAG_LEN,
    TAG_MARK,
    Batch,
    deliveries,
    new_tag,
    tagged_value,
)
from goodsd.store.worker import MIN_BLOCK, failure_args

SETTLED_TTL = 3600.0  # seconds a settle id is remembered, as scripts/lib/settle.lua keeps it


class FakeClock:
    """Time that passes only when told to: ``clock()`` reads it, ``advance``/``sleep`` move it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    sleep = advance


class MemoryConsumerStore:
    """One queue's state as the scripts keep it in Redis. Lists are deques with the push end
    on the left: the ready list and each in-flight list pop (and hold their oldest) on the
    right, as RPOP/LPUSH have it in Redis."""

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.clock = clock  # wall-clock seconds: due times, leases, dead records
        self.sleep = sleep  # how a blocking claim waits (nothing arrives meanwhile)
        self.ready: deque[bytes] = deque()
        self.inflight: dict[str, deque[bytes]] = {}
        self.retry: dict[bytes, int] = {}  # envelope -> due time in ms
        self.attempts: dict[str, int] = {}  # delivery tag -> failed attempts
        self.suspects: dict[str, str] = {}  # delivery tag -> the consumer that died with it
        self.dead: deque[bytes] = deque()  # raw records, newest on the left
        self.stats: Counter[str] = Counter()
        self.registrations: dict[str, str] = {}  # the consumers hash
        self.leases: dict[str, float] = {}  # consumer -> when its lease ends
        self.settled: dict[str, tuple[str, float]] = {}  # consumer -> (settle id, expiry)
        self._put_back: dict[str, str] = {}  # registrations a claim puts back if gone

    # -- what other programs do -----------------------------------------------------------

    def push(self, *items: bytes) -> None:
        """LPUSH, as any program may: the first item given is taken first."""
        self.ready.extendleft(items)

    # -- the ConsumerStore contract -----------------------------------------------------

    def register(self, consumer: str, registration: Registration, lease: float) -> None:
        self._put_back[consumer] = self.registrations[consumer] = registration.encode()
        self.leases[consumer] = self.clock() + lease

    def deregister(self, consumer: str) -> None:
        self._put_back.pop(consumer, None)
        self.registrations.pop(consumer, None)
        self.leases.pop(consumer, None)
        self.settled.pop(consumer, None)

    def claim(self, consumer: str, batch: int, lease: float, block: float) -> Batch:
        if batch <= 0:
            return NO_DELIVERIES
        claimed = self._claim(consumer, batch, lease)
        if claimed or block <= 0:
            return claimed
        if self.retry:  # the wait ends when the earliest retry is due, if that is sooner
            due_in = (min(self.retry.values()) - self._now_ms() + 1) / 1000
            block = min(block, max(due_in, MIN_BLOCK))
        self.sleep(block)  # BLMOVE times out: nobody pushes while this thread waits
        return self._claim(consumer, batch - 1, lease)

    def settle(
        self,
        consumer: str,
        settlement: Settlement,
        policy: RetryPolicy,
        claim_next: int = 0,
        lease: float = 0.0,
    ) -> Batch:
        if not settlement:
            return self.claim(consumer, claim_next, lease, 0) if claim_next else NO_DELIVERIES
        in_step = self._settle(consumer, settlement, policy)
        claimed = self._claim(consumer, claim_next, lease) if claim_next else NO_DELIVERIES
        if not in_step:
            raise InFlightLost(
                f"the in-flight list of {consumer} no longer matches what it claimed (its lease "
                "lapsed, or Redis lost recent writes)"
            )
        return claimed

    def held(self, consumer: str) -> Batch:
        values = list(reversed(self.inflight.get(consumer, ())))
        return self._deliveries(values)

    def give_back_all(self, consumer: str) -> int:
        held = self.inflight.pop(consumer, deque())
        for value in held:  # newest first: the oldest ends nearest the pop end
            self._give_back(value)
        self._count("requeued", len(held))
        self.registrations.pop(consumer, None)  # its next claim puts it back
        self.leases.pop(consumer, None)
        self.settled.pop(consumer, None)
        return len(held)

    # -- what a master does ----------------------------------------------------------------

    def requeue_suspects(self, consumer: str, suspects: Iterable[bytes]) -> int:
        """Requeue a gone consumer's items (scripts/requeue.lua), marking suspect the held
        values named in ``suspects`` (the items it was running beside others; lib/shared.lua
        ``suspect_delivery``) and giving back the rest. Returns how many items."""
        named = Counter(suspects)
        held = self.inflight.pop(consumer, deque())
        for value in held:  # newest first, as the script goes
            if named[value] > 0:
                named[value] -= 1
                [delivery] = self._deliveries([value])
                tag = delivery.tag or new_tag()
                self.attempts.setdefault(tag, 0)
                self.suspects[tag] = consumer
                self.retry[tagged_value(tag, delivery.payload)] = self._now_ms()
            else:
                self._give_back(value)
        self._count("requeued", len(held))
        self.registrations.pop(consumer, None)
        self.leases.pop(consumer, None)
        self.settled.pop(consumer, None)
        return len(held)

    # -- the scripts' steps -------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _claim(self, consumer: str, n: int, lease: float) -> Batch:
        held = self.inflight.setdefault(consumer, deque())
        claimed: list[bytes] = []
        if n > 0:
            due = sorted((ms, value) for value, ms in self.retry.items() if ms <= self._now_ms())
            for _, value in due[:n]:
                del self.retry[value]
                self.attempts.setdefault(value[len(TAG_MARK) : len(TAG_MARK) + TAG_LEN].decode(), 1)
                held.appendleft(value)
                claimed.append(value)
            while len(claimed) < n and self.ready:
                claimed.append(self.ready.pop())
                held.appendleft(claimed[-1])
        self.leases[consumer] = self.clock() + lease
        if consumer in self._put_back:
            self.registrations.setdefault(consumer, self._put_back[consumer])
        self._count("claimed", len(claimed))
        return self._deliveries(claimed)

    def _settle(self, consumer: str, settlement: Settlement, policy: RetryPolicy) -> bool:
        """False when the consumer holds what the store does not (nothing changes then)."""
        last = self.settled.get(consumer)
        if last is not None and last[0] == settlement.settle_id and last[1] > self.clock():
            return True
        held = self.inflight.get(consumer, deque())
        named = [failure.delivery.claimed for failure in settlement.failed]
        named += [delivery.claimed for delivery in settlement.given_back]
        if settlement.kept:
            named += [delivery.claimed for delivery in settlement.done]
        if len(held) != len(settlement) + settlement.kept or not _holds_all(held, named):
            return False
        self.settled[consumer] = (settlement.settle_id, self.clock() + SETTLED_TTL)
        if settlement.kept:
            for value in named:
                _remove_oldest(held, value)
        else:
            held.clear()
        for delivery in settlement.done:
            if delivery.tag:
                self.attempts.pop(delivery.tag, None)
                self.suspects.pop(delivery.tag, None)
        dead = sum(self._fail(failure, consumer, policy) for failure in settlement.failed)
        for delivery in reversed(settlement.given_back):
            self._give_back(delivery.claimed)
        self._count("done", len(settlement.done))
        self._count("failed", len(settlement.failed))
        self._count("retried", len(settlement.failed) - dead)
        self._count("dead", dead)
        self._count("requeued", len(settlement.given_back))
        return True

    def _fail(self, failure: Failure, consumer: str, policy: RetryPolicy) -> bool:
        """One failed attempt (lib/shared.lua ``fail_delivery``); True when it went dead."""
        _, tag, envelope, head, final = failure_args(failure, consumer, self.clock())
        self.suspects.pop(tag, None)
        attempts = self.attempts[tag] = self.attempts.get(tag, 0) + 1
        if final or attempts > policy.retries:
            del self.attempts[tag]
            self.dead.appendleft(head + str(attempts).encode() + b"}")
            return True
        self.retry[envelope] = self._now_ms() + int(policy.delay * 1000)
        return False

    def _give_back(self, value: bytes) -> None:
        """An unstarted value back where it came from (lib/shared.lua ``give_back``)."""
        if self._retry_tag(value):
            self.retry[value] = self._now_ms()
        else:
            self.ready.append(value)

    def _retry_tag(self, value: bytes) -> str | None:
        """The tag of a live retry envelope (lib/shared.lua ``retry_tag``), else None."""
        head = len(TAG_MARK) + TAG_LEN
        if len(value) <= head or not value.startswith(TAG_MARK) or value[head : head + 1] != b":":
            return None
        tag = value[len(TAG_MARK) : head]
        if not tag or any(c not in b"0123456789abcdef" for c in tag):
            return None
        return tag.decode() if tag.decode() in self.attempts else None

    def _deliveries(self, values: list[bytes]) -> Batch:
        retries = []
        for i, value in enumerate(values):
            if tag := self._retry_tag(value):
                retries.append(-(i + 1) if tag in self.suspects else i + 1)
        return deliveries(values, retries)

    def _count(self, field: str, n: int) -> None:
        if n > 0:
            self.stats[field] += n


def _holds_all(held: Iterable[bytes], values: list[bytes]) -> bool:
    """Whether ``held`` holds each of ``values`` as many times as it is named."""
    have = Counter(held)
    return all(have[value] >= times for value, times in Counter(values).items())


def _remove_oldest(held: deque[bytes], value: bytes) -> None:
    """LREM with a count of -1: the occurrence nearest the pop end goes."""
    for i in range(len(held) - 1, -1, -1):
        if held[i] == value:
            del held[i]
            return
