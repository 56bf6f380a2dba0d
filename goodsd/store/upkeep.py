"""What a master does to a queue: keep its live consumers' leases, requeue what gone ones held
(its own at once, other hosts' once their lease is gone), and keep its registry entry."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Sequence

import redis

from goodsd.store import scripts
from goodsd.store.keys import QueueKeys
from goodsd.store.records import (
    Delivery,
    MasterEntry,
    decode_hash,
    deliveries,
    fingerprint,
    new_tag,
    tagged_value,
    without,
)
from goodsd.store.views import Views
from goodsd.store.worker import Failure, RetryPolicy, failure_args, ms

# What a requeue does to a running item when no policy is given: it goes to the dead list.
NO_RETRIES = RetryPolicy(retries=0, delay=0.0)


class Upkeep:
    """One queue as a master sees it, through its own connection; ``views`` reads the rest."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.keys = QueueKeys.of(queue)
        self.views = Views(client, queue)
        self._requeue = scripts.register(client, "requeue")
        self._held = scripts.register(client, "held")

    def renew_leases(self, consumers: list[str], lease: float) -> int:
        """Extend the leases of live consumers in one round trip; returns how many."""
        if not consumers:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for consumer in consumers:
            pipe.set(self.keys.lease(consumer), consumer, px=ms(lease))
        pipe.execute()
        return len(consumers)

    def requeue(
        self,
        consumer: str,
        *,
        running: Sequence[int] = (),
        suspects: Sequence[int] = (),
        error: str = "",
        policy: RetryPolicy = NO_RETRIES,
        only_if_expired: bool = False,
    ) -> int:
        """Requeue a gone consumer's in-flight items (back to the pop end) and forget it (see
        scripts/requeue.lua).

        ``running`` holds the fingerprints (``records.fingerprint``, as its scoreboard slots
        showed them) of the items to blame for its death; each held item they name counts a
        failed attempt with ``error``, retried by ``policy``, so an item that kills its worker
        every time ends in the dead list instead of looping. ``suspects`` names the same way
        the items to mark suspect instead: back to the retry set, due now, no attempt counted,
        to run alone next time (``Delivery.suspect``). A fingerprint names one held item each
        time it is given (equal values are interchangeable), those of ``running`` first; one
        that names none (an item settled just before the death) is ignored. Returns the number
        of items handled, or -1 when ``only_if_expired`` and the lease still lives.
        """
        keys = self.keys.consumer(consumer)
        args: list[object] = [int(only_if_expired), consumer, policy.retries]
        args.append(int(policy.delay * 1000))
        blamed: list[Delivery] = []
        marked: list[Delivery] = []
        if running or suspects:
            held = deliveries(*self._held(keys=keys))
            blamed = named_by(held, running)
            marked = named_by(without(held, blamed), suspects)
        args.append(len(blamed))
        now = time.time()
        for delivery in blamed:
            args += failure_args(Failure(delivery, error), consumer, now)
        for delivery in marked:
            tag = delivery.tag or new_tag()
            args += [delivery.claimed, tag, tagged_value(tag, delivery.payload)]
        return int(self._requeue(keys=keys, args=args))

    def requeue_expired(self, skip: Collection[str] = ()) -> dict[str, int]:
        """Requeue the in-flight items of every registered consumer whose lease is gone
        (a dead host), except ``skip``: a master's own live children, whose leases may have
        lapsed only because Redis was away. Safe to run from every master at once: the
        check is in the script."""
        requeued: dict[str, int] = {}
        for consumer in self.views.registered():
            if consumer in skip:
                continue
            count = self.requeue(consumer, only_if_expired=True)
            if count >= 0:
                requeued[consumer] = count
        return requeued

    def beat_master(self, master: str, entry: MasterEntry, forget_after: float) -> None:
        """Write a master's registry entry, and drop entries not refreshed for ``forget_after``
        seconds: masters that died without cleaning up after themselves."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.masters, master, entry.encode())
        pipe.hgetall(self.keys.masters)
        _, raw = pipe.execute()
        oldest = time.time() - forget_after
        stale = [
            name
            for name, other in decode_hash(raw, MasterEntry.decode).items()
            if other.seen is None or other.seen < oldest
        ]
        if stale:
            self.client.hdel(self.keys.masters, *stale)

    def forget_master(self, master: str) -> None:
        self.client.hdel(self.keys.masters, master)


def named_by(held: Sequence[Delivery], fingerprints: Sequence[int]) -> list[Delivery]:
    """The deliveries of ``held`` that ``fingerprints`` name, each fingerprint taking one
    delivery not yet taken (oldest first)."""
    wanted = Counter(fingerprints)
    named = []
    for delivery in held:
        mark = fingerprint(delivery.claimed)
        if wanted[mark] > 0:
            wanted[mark] -= 1
            named.append(delivery)
    return named
