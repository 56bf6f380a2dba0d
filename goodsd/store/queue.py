"""Every Redis script and stored value goodsd uses for one queue lives here, and nowhere else;
the key names are in ``goodsd.store.keys``.

A failed item waits in the retry set inside an *envelope*: ``TAG_MARK + <16 hex> + ":" + <item>``.
The tag (64 random bits) makes each delivery distinct, so equal items never merge in the retry
set or the attempts hash. Any bytes are a valid item, envelope-shaped ones included, so a value
counts as a retry only when it has the envelope's exact shape *and* the attempts hash holds its
tag (``retry_tag`` in scripts/lib/shared.lua). Retries never pass through the ready list: a
claim moves due ones from the retry set straight into the claimer's in-flight list, and an
unstarted one given back returns to the retry set, due at once. So the ready list holds only
what was pushed, and no program that can read only the ready list ever sees a live tag it
could copy.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import redis

from goodsd.store import scripts
from goodsd.store.keys import STAT_FIELDS, QueueKeys

log = logging.getLogger("goodsd.queue")

TAG_MARK = b"\x1egoodsd:"
TAG_LEN = 16
# Length of an envelope's head: the mark, the tag and the ":" before the item.
ENVELOPE_HEAD = len(TAG_MARK) + TAG_LEN + 1
# Longest error text kept in a dead record (a handler's exception message may be any size).
MAX_ERROR = 4000
# How long a producer's last batch id is kept for its retries; how long an unclaimed wake-up
# waits for a standby.
PUSHED_MARKER_TTL_MS = 3_600_000
WAKE_TTL_MS = 10_000
# Results of the push script.
PUSHED, FULL, NOT_HOLDER = 1, 0, -1


class PushResult(NamedTuple):
    """What the push script did: ``status`` is PUSHED, FULL or NOT_HOLDER; ``length`` is the
    ready list's length after it."""

    status: int
    length: int


class InFlightLost(Exception):
    """A consumer's in-flight list no longer matches what it claimed; nothing was settled."""


class Delivery(NamedTuple):
    """One claimed item: ``claimed`` is the exact value in the in-flight list, ``payload`` the
    user's item inside it, ``tag`` the delivery tag when the item failed before (else None).
    A tuple, not a dataclass: one is made per item on the hot path."""

    claimed: bytes
    payload: bytes
    tag: str | None


@dataclass(frozen=True)
class Failure:
    """A handler failure to record: ``final`` skips the remaining retries (malformed items)."""

    delivery: Delivery
    error: str
    final: bool = False


def deliveries(values: list[bytes], retries: list[int]) -> list[Delivery]:
    """Claimed values as deliveries: ``retries`` holds the 1-based positions of the values that
    Redis found to be retry envelopes (``retry_tag`` in scripts/lib/shared.lua); every other
    value is the raw item, taken as it is whatever bytes it holds."""
    out = [Delivery(value, value, None) for value in values]
    for position in retries:
        out[position - 1] = from_envelope(values[position - 1])
    return out


def from_envelope(value: bytes) -> Delivery:
    """A retry envelope (checked by Redis) as the delivery it carries: tag and exact item."""
    tag = value[len(TAG_MARK) : len(TAG_MARK) + TAG_LEN].decode("ascii")
    return Delivery(value, value[ENVELOPE_HEAD:], tag)


def new_tag() -> str:
    """A fresh delivery tag: 16 hex digits, 64 random bits."""
    return secrets.token_hex(TAG_LEN // 2)


def tagged_value(tag: str, payload: bytes) -> bytes:
    """The retry envelope of ``payload`` under ``tag``; ``from_envelope`` reverses it."""
    return TAG_MARK + tag.encode("ascii") + b":" + payload


def dead_record_head(payload: bytes, error: str, consumer: str, at: float) -> bytes:
    """The JSON of a dead record up to its attempts count, which only the script knows:
    the script appends ``<attempts>}``. Items that are not UTF-8 are kept as base64."""
    tail = {"error": clip(error, MAX_ERROR), "at": round(at, 3), "consumer": consumer}
    try:
        text = json.dumps({"item": payload.decode("utf-8"), **tail}, ensure_ascii=False)
    except UnicodeDecodeError:
        text = ""
    # JSON escapes a control character in six bytes: an item made of them would grow past what
    # Redis takes in one argument. base64 grows it by a third, whatever it holds.
    if not text or len(text) > len(payload) * 4 // 3 + 1024:
        item_b64 = base64.b64encode(payload).decode("ascii")
        text = json.dumps({"item_b64": item_b64, **tail}, ensure_ascii=False)
    return (text[:-1] + ', "attempts": ').encode("utf-8")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_dead_record(raw: bytes) -> dict[str, object]:
    """Decode one entry of the dead list; an entry some other program pushed is shown raw."""
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"item": raw.decode("utf-8", "replace"), "error": "", "attempts": 0, "at": 0}
    return record


def dead_payload(raw: bytes) -> bytes:
    """The user's item inside a dead record, byte for byte; an entry some other program pushed
    (not one of our JSON records) is taken as the item itself."""
    try:
        record = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(record, dict) and isinstance(record.get("item_b64"), str):
        return base64.b64decode(record["item_b64"])
    if isinstance(record, dict) and isinstance(record.get("item"), str):
        return record["item"].encode("utf-8")
    return raw


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


class Queue:
    """One queue's Redis state, as seen by one process with its own connection."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.keys = QueueKeys.of(name)
        # consumer id -> its registration record, put back by every claim if it went missing
        self._registrations: dict[str, str] = {}
        self._requeue_dead = scripts.register(client, "requeue_dead")
        self._claim = scripts.register(client, "claim")
        self._settle = scripts.register(client, "settle")
        self._settle_claim = scripts.register(client, "settle_claim")
        self._recover = scripts.register(client, "recover")
        self._held = scripts.register(client, "held")
        self._push = scripts.register(client, "push")
        self._lock_acquire = scripts.register(client, "lock_acquire")
        self._lock_extend = scripts.register(client, "lock_extend")
        self._lock_release = scripts.register(client, "lock_release")
        # the scripts sent inside pipelines, by hash only: they must be loaded beforehand
        self._pipelined = (self._claim,)

    # -- registration and leases --------------------------------------------------------

    def register(self, consumer: str, info: dict[str, object], lease: float) -> None:
        """Make the consumer visible (for status and for recovery by host) and take its lease."""
        self._registrations[consumer] = json.dumps(info)
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

    def renew_leases(self, consumers: list[str], lease: float) -> int:
        """Extend the leases of live consumers in one round trip; returns how many."""
        if not consumers:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for consumer in consumers:
            pipe.set(self.keys.lease(consumer), consumer, px=ms(lease))
        pipe.execute()
        return len(consumers)

    def registered(self) -> dict[str, dict[str, object]]:
        """Consumer id -> its registration record."""
        raw = self.client.hgetall(self.keys.consumers)
        out: dict[str, dict[str, object]] = {}
        for key, value in raw.items():
            try:
                out[key.decode()] = json.loads(value)
            except ValueError:
                out[key.decode()] = {}
        return out

    # -- claiming -----------------------------------------------------------------------

    def _claim_args(self, consumer: str, n: int, lease: float) -> tuple[list[str], list[object]]:
        keys = [
            self.keys.ready,
            self.keys.inflight(consumer),
            self.keys.lease(consumer),
            self.keys.retry,
            self.keys.stats,
            self.keys.consumers,
            self.keys.attempts,
        ]
        registration = self._registrations.get(consumer, "")
        return keys, [n, ms(lease), consumer, registration]

    def claim(self, consumer: str, batch: int, lease: float, block: float) -> list[Delivery]:
        """Claim up to ``batch`` items, oldest first. Non-blocking first (one round trip when
        the queue has items); on an empty queue, BLMOVE waits up to ``block`` seconds and the
        rest of the batch is claimed in the same pipeline, so a pick-up costs one round trip."""
        if batch <= 0:
            return []
        keys, args = self._claim_args(consumer, batch, lease)
        values, retries = self._claim(keys=keys, args=args)
        if values or block <= 0:
            return deliveries(values, retries)
        pipe = self.client.pipeline(transaction=False)
        pipe.blmove(keys[0], keys[1], block, "RIGHT", "LEFT")
        args[0] = batch - 1
        scripts.in_pipeline(pipe, self._claim, keys, args)
        first, (more, retries) = scripts.execute(self.client, pipe, self._pipelined)
        if first is None:
            return deliveries(more, retries)
        if first[:1] == TAG_MARK[:1]:  # rare: let Redis judge it, like every claimed value
            return self.held(consumer)
        return [Delivery(first, first, None), *deliveries(more, retries)]

    # -- settling -----------------------------------------------------------------------

    def settle(
        self,
        consumer: str,
        results: list[Failure | None],
        release: int,
        *,
        oldest: bytes,
        settle_id: str,
        retries: int,
        retry_delay: float,
        claim_next: int = 0,
        lease: float = 0.0,
        done_tags: tuple[str, ...] = (),
    ) -> list[Delivery]:
        """Record the outcome of the oldest claimed items in one round trip: ``results`` in
        claimed order (None = done), then ``release`` unstarted items back to the pop end;
        ``oldest`` is the claimed value of the first of them. Safe to repeat with the same
        ``settle_id``. ``done_tags``: tags of done items that had failed before, whose attempts
        entries can go. Raises InFlightLost, having changed nothing, when the in-flight list no
        longer matches (see scripts/lib/settle.lua).

        With ``claim_next``, a non-blocking claim of that many items rides in the same round
        trip (a busy consumer then pays one round trip per batch); its items are returned.
        """
        outcomes = "".join("d" if r is None else "f" for r in results) + "r" * release
        args: list[object] = [settle_id, retries, int(retry_delay * 1000), outcomes, oldest]
        args.append(len(done_tags))
        args.extend(done_tags)
        now = time.time()
        for failure in results:
            if failure is None:
                continue
            delivery = failure.delivery
            tag = delivery.tag or new_tag()
            args += [
                tag,
                tagged_value(tag, delivery.payload),
                dead_record_head(delivery.payload, failure.error, consumer, now),
                1 if failure.final else 0,
            ]
        keys = [
            self.keys.inflight(consumer),
            self.keys.attempts,
            self.keys.retry,
            self.keys.dead,
            self.keys.stats,
            self.keys.ready,
            self.keys.settled(consumer),
        ]
        if not outcomes:
            return self.claim(consumer, claim_next, lease, 0) if claim_next else []
        if not claim_next:
            self._check_in_step(consumer, self._settle(keys=keys, args=args))
            return []
        claim_keys, claim_args = self._claim_args(consumer, claim_next, lease)
        status, (values, retries) = self._settle_claim(
            keys=keys + claim_keys, args=[len(args), *args, *claim_args]
        )
        self._check_in_step(consumer, status)
        return deliveries(values, retries)

    @staticmethod
    def _check_in_step(consumer: str, status: object) -> None:
        if status == -1:
            raise InFlightLost(
                f"the in-flight list of {consumer} no longer matches what it claimed (its lease "
                "lapsed, or Redis lost recent writes)"
            )

    def held(self, consumer: str) -> list[Delivery]:
        """What the consumer holds in flight, oldest first: after a lost reply this is the
        truth about what a claim took."""
        values, retries = self._held(keys=[self.keys.inflight(consumer), self.keys.attempts])
        return deliveries(values, retries)

    # -- recovery -----------------------------------------------------------------------

    def recover(
        self,
        consumer: str,
        *,
        current: int | None = None,
        error: str = "",
        retries: int = 0,
        retry_delay: float = 0.0,
        only_if_expired: bool = False,
    ) -> int:
        """Give a gone consumer's in-flight items back to the pop end and forget it.

        ``current`` is the position (0 = oldest) of the item the consumer was running when it
        died; that item counts a failed attempt with ``error``, so an item that kills its
        worker every time ends in the dead list instead of looping. Returns the number of
        items handled, or -1 when ``only_if_expired`` and the lease still lives.
        """
        inflight = self.keys.inflight(consumer)
        delivery = None
        if current is not None:
            held = self.held(consumer)
            delivery = held[current] if current < len(held) else None
        claimed = delivery.claimed if delivery else b""
        tag = (delivery.tag if delivery else None) or new_tag()
        keys = [
            inflight,
            self.keys.lease(consumer),
            self.keys.consumers,
            self.keys.ready,
            self.keys.stats,
            self.keys.attempts,
            self.keys.retry,
            self.keys.dead,
            self.keys.settled(consumer),
        ]
        args: list[object] = [
            1 if only_if_expired else 0,
            claimed,
            tag,
            tagged_value(tag, delivery.payload) if delivery else b"",
            dead_record_head(delivery.payload, error, consumer, time.time()) if delivery else b"",
            retries,
            int(retry_delay * 1000),
            consumer,
        ]
        return int(self._recover(keys=keys, args=args))

    def reap_expired(self, skip: Collection[str] = ()) -> dict[str, int]:
        """Requeue the in-flight items of every registered consumer whose lease is gone
        (a dead host), except ``skip``: a master's own live children, whose leases may have
        lapsed only because Redis was away. Safe to run from every master at once: the
        check is in the script."""
        reaped: dict[str, int] = {}
        for consumer in self.registered():
            if consumer in skip:
                continue
            count = self.recover(consumer, only_if_expired=True)
            if count >= 0:
                reaped[consumer] = count
        return reaped

    # -- producing and inspecting ---------------------------------------------------------

    def push(self, items: list[bytes]) -> None:
        """LPUSH a batch (the far end from the pops, so FIFO) and count it."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.keys.ready, *items)
        pipe.hincrby(self.keys.stats, "pushed", len(items))
        pipe.execute()

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
        status, length = self._push(
            keys=keys, args=[high, batch_id, PUSHED_MARKER_TTL_MS, token, *items]
        )
        return PushResult(int(status), int(length))

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

    def report_producer(self, producer: str, record: dict[str, object]) -> None:
        """Publish a producer's state for status views (fields: see goodsd/producer.py)."""
        self.client.hset(self.keys.producers, producer, json.dumps(record))

    def forget_producers(self, producers: list[str]) -> None:
        """Drop producers from the registry, with their last-batch markers."""
        if not producers:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.keys.producers, *producers)
        pipe.delete(*(self.keys.pushed(p) for p in producers))
        pipe.execute()

    def stats(self) -> dict[str, int]:
        return _counters(self.client.hgetall(self.keys.stats))

    def backlog(self) -> int:
        return int(self.client.llen(self.keys.ready))

    def dead_records(self, limit: int) -> list[dict[str, object]]:
        return [parse_dead_record(raw) for raw in self.client.lrange(self.keys.dead, 0, limit - 1)]

    # -- operator views and actions -------------------------------------------------------

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

    def consumer_loads(self) -> list[ConsumerLoad]:
        """Each registered consumer with the items it holds and its lease time left."""
        registered = sorted(self.registered().items())
        pipe = self.client.pipeline(transaction=False)
        for consumer, _ in registered:
            pipe.llen(self.keys.inflight(consumer))
            pipe.pttl(self.keys.lease(consumer))
        replies = pipe.execute()
        loads = []
        for i, (consumer, info) in enumerate(registered):
            held, pttl = replies[2 * i], replies[2 * i + 1]
            pid = info.get("pid")
            loads.append(
                ConsumerLoad(
                    id=consumer,
                    host=str(info.get("host", "?")),
                    pid=pid if isinstance(pid, int) else 0,
                    in_flight=int(held),
                    lease_left=pttl / 1000 if pttl >= 0 else None,
                )
            )
        return loads

    def beat_master(self, master: str, info: dict[str, object], forget_after: float) -> None:
        """Write a master's registry entry, and drop entries not refreshed for ``forget_after``
        seconds: masters that died without cleaning up after themselves."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.masters, master, json.dumps(info))
        pipe.hgetall(self.keys.masters)
        _, raw = pipe.execute()
        oldest = time.time() - forget_after
        stale = [
            name
            for name, record in _json_records(raw).items()
            if not isinstance(record.get("seen"), int | float) or record["seen"] < oldest
        ]
        if stale:
            self.client.hdel(self.keys.masters, *stale)

    def forget_master(self, master: str) -> None:
        self.client.hdel(self.keys.masters, master)

    def masters(self) -> dict[str, dict[str, object]]:
        """Master id -> its registry entry, live or not (judge by ``seen``)."""
        return _json_records(self.client.hgetall(self.keys.masters))

    def producers(self) -> dict[str, dict[str, object]]:
        """Producer id -> its registry entry, as the producers write it."""
        return _json_records(self.client.hgetall(self.keys.producers))

    def dead_count(self) -> int:
        return int(self.client.llen(self.keys.dead))

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
            args += [record, dead_payload(record)]
        return int(self._requeue_dead(keys=[self.keys.dead, self.keys.ready], args=args))

    def purge_dead(self) -> int:
        """Delete the dead list; returns how many records it held."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.keys.dead)
        pipe.delete(self.keys.dead)
        count, _ = pipe.execute()
        return int(count)


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds Redis wants, never 0 (PX 0 is an error)."""
    return max(1, int(seconds * 1000))


def _counters(raw: dict[bytes, bytes]) -> dict[str, int]:
    out = dict.fromkeys(STAT_FIELDS, 0)
    for key, value in raw.items():
        out[key.decode()] = int(value)
    return out


def _json_records(raw: dict[bytes, bytes]) -> dict[str, dict[str, object]]:
    """A hash of JSON objects; an entry that is not one is skipped, not fatal."""
    out: dict[str, dict[str, object]] = {}
    for key, value in raw.items():
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if isinstance(record, dict):
            out[key.decode("utf-8", "replace")] = record
    return out
