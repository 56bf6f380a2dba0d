"""What operators see of a queue and do to it: counts, who holds what, the registries, the dead
list (list, requeue, purge) and plain pushes. Read by `goodsd status|dead|push|demo`, by the
master's metrics and status line, and by benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import redis

from goodsd.store import scripts
from goodsd.store.keys import STAT_FIELDS, QueueKeys
from goodsd.store.records import (
    DeadRecord,
    MasterEntry,
    ProducerRecord,
    Registration,
    decode_hash,
)


@dataclass(frozen=True)
class Overview:
    """A queue's counts at one moment, for status and metrics."""

    backlog: int  # items in the ready list
    in_flight: int  # items claimed by consumers, not yet settled
    retry_waiting: int  # failed items waiting for their retry
    dead: int  # records in the dead list
    stats: dict[str, int]  # the fleet counters, STAT_FIELDS and any others found


@dataclass(frozen=True)
class ConsumerLoad:
    """What one registered consumer holds right now."""

    id: str  # consumer id: host-pid-token
    host: str  # where it runs
    pid: int  # its process id on that host
    in_flight: int  # items claimed, not yet settled
    lease_left: float | None  # seconds; None once the lease is gone (items await requeue)


class Views:
    """One queue as an operator sees it, through its own connection."""

    def __init__(self, client: redis.Redis, queue: str, wait_replicas: int = 0) -> None:
        self.client = client
        self.keys = QueueKeys.of(queue)
        self.wait_replicas = wait_replicas  # replicas that must acknowledge a push (WAIT)
        self._requeue_dead = scripts.register(client, "requeue_dead")

    # -- counts and registries ----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return _counters(self.client.hgetall(self.keys.stats))

    def backlog(self) -> int:
        return int(self.client.llen(self.keys.ready))

    def overview(self) -> Overview:
        """Every count at once, in two round trips (the second sums the in-flight lists)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.keys.ready)
        pipe.zcard(self.keys.retry)
        pipe.llen(self.keys.dead)
        pipe.hgetall(self.keys.stats)
        pipe.hkeys(self.keys.consumers)
        backlog, retry, dead, stats, consumers = pipe.execute()
        held = 0
        if consumers:
            pipe = self.client.pipeline(transaction=False)
            for consumer in consumers:
                pipe.llen(self.keys.inflight(consumer.decode()))
            held = sum(pipe.execute())
        return Overview(int(backlog), held, int(retry), int(dead), _counters(stats))

    def registered(self) -> dict[str, Registration]:
        """Consumer id -> its registration record (empty when it cannot be read: the consumer
        is registered all the same)."""
        raw = self.client.hgetall(self.keys.consumers)
        return {
            key.decode("utf-8", "replace"): Registration.decode(value) or Registration()
            for key, value in raw.items()
        }

    def consumer_loads(self) -> list[ConsumerLoad]:
        """Each registered consumer with the items it holds and its lease time left."""
        registered = sorted(self.registered().items())
        pipe = self.client.pipeline(transaction=False)
        for consumer, _ in registered:
            pipe.llen(self.keys.inflight(consumer))
            pipe.pttl(self.keys.lease(consumer))
        replies = pipe.execute()
        loads = []
        for i, (consumer, registration) in enumerate(registered):
            held, pttl = replies[2 * i], replies[2 * i + 1]
            loads.append(
                ConsumerLoad(
                    id=consumer,
                    host=registration.host if registration.host is not None else "?",
                    pid=registration.pid or 0,
                    in_flight=int(held),
                    lease_left=pttl / 1000 if pttl >= 0 else None,
                )
            )
        return loads

    def masters(self) -> dict[str, MasterEntry]:
        """Master id -> its registry entry, live or not (judge by ``seen``)."""
        return decode_hash(self.client.hgetall(self.keys.masters), MasterEntry.decode)

    def producers(self) -> dict[str, ProducerRecord]:
        """Producer id -> its registry entry."""
        return decode_hash(self.client.hgetall(self.keys.producers), ProducerRecord.decode)

    # -- the dead list ------------------------------------------------------------------

    def dead_count(self) -> int:
        return int(self.client.llen(self.keys.dead))

    def dead_records(self, limit: int) -> list[DeadRecord]:
        """The ``limit`` newest dead records, newest first."""
        return [DeadRecord.decode(raw) for raw in self.client.lrange(self.keys.dead, 0, limit - 1)]

    def dead_oldest(self, count: int) -> list[bytes]:
        """The ``count`` oldest raw dead records, newest of them first (list order). New records
        arrive at the other end, so this end stays put while consumers work."""
        return list(self.client.lrange(self.keys.dead, -count, -1))

    def dead_scan(self, page: int = 1000) -> Iterator[bytes]:
        """Every raw dead record, oldest first, a page per round trip."""
        seen = 0
        while True:
            chunk = self.client.lrange(self.keys.dead, -(seen + page), -(seen + 1))
            yield from reversed(chunk)
            seen += len(chunk)
            if len(chunk) < page:
                return

    def requeue_dead(self, records: list[bytes]) -> int:
        """Put these dead records' items back at the pop end (they run next), attempts reset.
        Returns how many were still there to move; the last one given runs first."""
        if not records:
            return 0
        args: list[bytes] = []
        for record in records:
            args += [record, DeadRecord.decode(record).item]
        return int(self._requeue_dead(keys=[self.keys.dead, self.keys.ready], args=args))

    def purge_dead(self) -> int:
        """Delete the dead list; returns how many records it held."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.keys.dead)
        pipe.delete(self.keys.dead)
        count, _ = pipe.execute()
        return int(count)

    # -- plain pushes -------------------------------------------------------------------

    def push(self, items: list[bytes]) -> None:
        """LPUSH a batch (the far end from the pops, so FIFO) and count it; with
        ``wait_replicas``, return only once that many replicas have it (else raise
        TooFewReplicas: the batch is on the primary only)."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.keys.ready, *items)
        pipe.hincrby(self.keys.stats, "pushed", len(items))
        if self.wait_replicas:
            pipe.wait(self.wait_replicas, scripts.WAIT_TIMEOUT_MS)
        replies = pipe.execute()
        if self.wait_replicas and replies[-1] < self.wait_replicas:
            raise scripts.TooFewReplicas(
                f"NOREPLICAS {replies[-1]} of {self.wait_replicas} replica(s) acknowledged the "
                f"push within {scripts.WAIT_TIMEOUT_MS} ms"
            )


def _counters(raw: dict[bytes, bytes]) -> dict[str, int]:
    out = dict.fromkeys(STAT_FIELDS, 0)
    for key, value in raw.items():
        out[key.decode()] = int(value)
    return out
