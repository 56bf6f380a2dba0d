"""What operators see of a queue and do to it: counts, who holds what, the registries, the dead
list (list, requeue, purge) and plain pushes. Read by `goodsd status|dead|push|demo`, by the
master's metrics and status line, and by benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.connection import Connection

from goodsd.store import scripts
from goodsd.store.keys import STAT_FIELDS, QueueKeys
from goodsd.store.records import (
    DeadRecord,
    MasterEntry,
    ProducerRecord,
    Registration,
    decode_hash,
)


class Unreplicated(scripts.TooFewReplicas):
    """A push that is in the list, on the primary, but that fewer replicas acknowledged than
    ``redis.wait_replicas`` asks for: a failover now could lose it, and pushing it again
    would add it twice."""

    def __init__(
        self,
        items: int,
        acknowledged: int,
        wanted: int,
        waited: float,
        broken: BaseException | None = None,
    ) -> None:
        cut = f" (then: {broken})" if broken is not None else ""
        super().__init__(
            f"NOREPLICAS {acknowledged} of {wanted} replica(s) acknowledged the push of "
            f"{items} item(s) within {waited:g}s{cut}"
        )
        self.items = items  # the batch's items, all in the list
        self.acknowledged = acknowledged  # replicas that acknowledged it, at the last WAIT
        self.wanted = wanted  # redis.wait_replicas
        self.waited = waited  # seconds the WAIT was repeated for
        self.broken = broken  # the error that ended the waiting early, if any


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

    def push(self, items: list[bytes], *, patience: float = 0.0) -> None:
        """LPUSH a batch (the far end from the pops, so FIFO) and count it, in one round trip.
        With ``wait_replicas``, WAIT in the same round trip for that many replicas to have it;
        when fewer did, repeat only the WAIT (a second LPUSH would add the batch twice) for up
        to ``patience`` seconds, and then raise Unreplicated: the batch is in the list, on the
        primary only. Any other error means the batch is not in."""
        if not items:
            return
        if not self.wait_replicas:
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(self.keys.ready, *items)
            pipe.hincrby(self.keys.stats, "pushed", len(items))
            pipe.execute()
            return
        pool = self.client.connection_pool
        # One connection throughout: WAIT counts the writes of its own connection only.
        connection = pool.get_connection()
        try:
            self._push_and_wait(connection, items, patience)
        except BaseException:
            connection.disconnect()  # replies may be left unread
            raise
        finally:
            pool.release(connection)

    def _push_and_wait(self, connection: Connection, items: list[bytes], patience: float) -> None:
        wanted, timeout = self.wait_replicas, scripts.WAIT_TIMEOUT_MS
        deadline = time.monotonic() + patience
        commands = [
            ("LPUSH", self.keys.ready, *items),
            ("HINCRBY", self.keys.stats, "pushed", len(items)),
            ("WAIT", wanted, timeout),
        ]
        connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []  # each reply, or the error Redis answered instead
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        if isinstance(replies[0], Exception):
            raise replies[0]  # not pushed: nothing else ran before it
        acknowledged = 0
        try:
            if failed := next((r for r in replies if isinstance(r, Exception)), None):
                raise failed
            acknowledged = int(replies[-1])
            while acknowledged < wanted and time.monotonic() < deadline:
                connection.send_command("WAIT", wanted, timeout)
                acknowledged = int(connection.read_response())
        except (redis.RedisError, OSError) as exc:
            raise Unreplicated(len(items), acknowledged, wanted, patience, exc) from exc
        if acknowledged < wanted:
            raise Unreplicated(len(items), acknowledged, wanted, patience)


def _counters(raw: dict[bytes, bytes]) -> dict[str, int]:
    out = dict.fromkeys(STAT_FIELDS, 0)
    for key, value in raw.items():
        out[key.decode()] = int(value)
    return out
