"""Every Redis key goodsd uses for one queue. Only this module builds key names.

All of a queue's keys share the hash tag ``{<queue>}``, so they sit in one Cluster slot; the
ready list ``<queue>`` has no braces (a queue name may not hold any), so it hashes by its whole
name, which is what the tag holds: the same slot (tests/unit/test_redis_urls.py checks it):

| key                                  | type   | holds                                        |
|--------------------------------------|--------|----------------------------------------------|
| ``<queue>``                          | list   | ready items; anyone may LPUSH; we pop right  |
| ``goodsd:{<queue>}:inflight:<id>``   | list   | items one consumer claimed, not yet settled  |
| ``goodsd:{<queue>}:lease:<id>``      | string | the consumer's lease (PX); gone: requeued    |
| ``goodsd:{<queue>}:settled:<id>``    | string | id of its last settle, so a retry is a no-op |
| ``goodsd:{<queue>}:consumers``       | hash   | consumer id -> JSON {host, pid, started...}  |
| ``goodsd:{<queue>}:masters``         | hash   | master id (host-pid) -> JSON {host, seen...} |
| ``goodsd:{<queue>}:producers``       | hash   | producer id -> JSON {state, lock, pushed...} |
| ``goodsd:{<queue>}:attempts``        | hash   | delivery tag -> failed attempts so far       |
| ``goodsd:{<queue>}:suspects``        | hash   | delivery tag -> consumer that died with it   |
| ``goodsd:{<queue>}:retry``           | zset   | retry envelopes by due time ms (never ready) |
| ``goodsd:{<queue>}:dead``            | list   | JSON {item, error, attempts, at, consumer}   |
| ``goodsd:{<queue>}:stats``           | hash   | fleet counters (see ``STAT_FIELDS``)         |
| ``goodsd:{<queue>}:producer:lock``   | string | the singleton producer's lock (random token) |
| ``goodsd:{<queue>}:producer:wake``   | list   | wakes a standby producer when the lock frees |
| ``goodsd:{<queue>}:pushed:<id>``     | string | id of a producer's last pushed batch         |
"""

from __future__ import annotations

from dataclasses import dataclass

# The fields of the stats hash, in the order views show them.
STAT_FIELDS = ("pushed", "claimed", "done", "failed", "retried", "dead", "requeued")


@dataclass(frozen=True)
class QueueKeys:
    """The key names of one queue; the per-consumer and per-producer ones come from methods."""

    ready: str  # the queue's own list
    consumers: str
    masters: str
    producers: str
    attempts: str
    suspects: str
    retry: str
    dead: str
    stats: str
    producer_lock: str
    producer_wake: str
    prefix: str  # "goodsd:{<queue>}:", the start of every key but the ready list

    @classmethod
    def of(cls, queue: str) -> QueueKeys:
        prefix = f"goodsd:{{{queue}}}:"
        return cls(
            ready=queue,
            consumers=prefix + "consumers",
            masters=prefix + "masters",
            producers=prefix + "producers",
            attempts=prefix + "attempts",
            suspects=prefix + "suspects",
            retry=prefix + "retry",
            dead=prefix + "dead",
            stats=prefix + "stats",
            producer_lock=prefix + "producer:lock",
            producer_wake=prefix + "producer:wake",
            prefix=prefix,
        )

    def inflight(self, consumer: str) -> str:
        """A consumer's in-flight list; ``inflight("*")`` is the SCAN pattern of them all."""
        return f"{self.prefix}inflight:{consumer}"

    def lease(self, consumer: str) -> str:
        return f"{self.prefix}lease:{consumer}"

    def settled(self, consumer: str) -> str:
        return f"{self.prefix}settled:{consumer}"

    def pushed(self, producer: str) -> str:
        return f"{self.prefix}pushed:{producer}"

    def consumer(self, consumer: str) -> list[str]:
        """The KEYS of every consumer-side script, in the order ``consumer_keys`` in
        scripts/lib/shared.lua names them."""
        return [
            self.ready,
            self.inflight(consumer),
            self.lease(consumer),
            self.settled(consumer),
            self.consumers,
            self.attempts,
            self.retry,
            self.dead,
            self.stats,
            self.suspects,
        ]
