"""The master's Redis housekeeping: whose leases to renew, which children are overdue (and so to be
killed), what to requeue for a consumer that is gone and which of its items to blame, and the
Redis calls that carry those out without ever stalling the master's loop.

The decisions are pure functions of the children and their scoreboards (``lease_holders``,
``overdue_children``, ``requeue_of``, ``leftovers``); ``Housekeeping`` makes the calls. Every
call goes through ``Housekeeping.do``: after a failure the master's other Redis calls pause for
REDIS_PAUSE, for against a silent server each would wait out its socket timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import redis

from goodsd import deployment, redisurl
from goodsd.children import (
    TIMEOUT_GRACE,
    Child,
    Role,
    State,
    heartbeat_timeout,
    keeps_lease,
    overdue,
)
from goodsd.config import Config, RedisConfig
from goodsd.ops.common import display_url
from goodsd.redisconn import Outage, classify, connect, refusal, refused_commands, waiting_on
from goodsd.scoreboard import Reading
from goodsd.store import Registration, RetryPolicy, Upkeep

log = logging.getLogger("goodsd.master")
T = TypeVar("T")

# How often the master tries again what Redis did not answer: requeues, the access check.
RETRY_EVERY = 1.0
# The first search for leftovers of a crashed run is repeated this soon after start, to catch
# its children that were still dying at the first look.
LEFTOVER_RECHECK = 1.0
# The master's Redis calls are all short; a frozen server must not stall its loop for long.
MASTER_SOCKET_TIMEOUT = 2.0
# Any trouble with Redis, as seen by the master: log it, carry on, try again later.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)
# After a failed Redis call the master skips its other Redis housekeeping this long.
REDIS_PAUSE = 1.0


@dataclass
class Requeue:
    """In-flight items of a gone consumer still to be requeued (Redis may be away)."""

    identity: str  # the consumer id whose in-flight list is to be emptied
    running: tuple[int, ...]  # the items to blame (see Upkeep.requeue): it died running them
    error: str  # recorded as those items' failure
    config: Config  # the config it ran with: which Redis, which queue, how many retries
    attempts: int = 0  # failed tries so far, to log the first one only


def requeue_of(child: Child, reading: Reading, how: str, config: Config) -> Requeue:
    """What to requeue for a consumer that exited ``how`` (e.g. "killed by SIGKILL"), with the
    last ``reading`` of its scoreboard: everything it held. The items it was running count a
    failed attempt when it died on its own; when the master killed it, only the items it was
    killed for do (``Child.blamed``: the others running beside them are no more to blame than
    the stop of a process is); when it was stopping, none does. ``config`` is the one to use
    if the child has none of its own."""
    if child.kill_reason:
        return Requeue(
            child.identity,
            child.blamed,
            f"worker killed: {child.kill_reason}",
            child.config or config,
        )
    running = () if child.state is State.STOPPING else reading.running
    error = f"worker {how} while running this item"
    return Requeue(child.identity, running, error, child.config or config)


def overdue_children(
    children: Iterable[Child], now: float
) -> list[tuple[Child, str, tuple[int, ...]]]:
    """The children to kill now (hung, past an item's timeout, or never ready), each with why
    and the items to blame: those past their timeout (see ``goodsd.children.overdue``)."""
    kills = []
    for child in children:
        if child.board is None or not child.pid or child.config is None:
            continue
        reading = child.board.read()
        timeout = child.config.consumers.timeout if child.role == Role.CONSUMER else None
        heartbeat, beats_while_busy = heartbeat_of(child, reading)
        reason = overdue(
            child,
            heartbeat,
            reading.busy_since,
            now,
            timeout,
            heartbeat_timeout(child.config.supervisor.lease),
            waiting_on_redis=waiting_on(reading.flags) is not None,
            beats_while_busy=beats_while_busy,
        )
        if reason:
            kills.append((child, reason, overdue_items(reading, now, timeout)))
    return kills


def heartbeat_of(child: Child, reading: Reading) -> tuple[float, bool]:
    """The heartbeat to judge ``child`` by, and whether it beats while busy: a consumer with
    several items in flight (``consumers.concurrency`` above 1) heartbeats from its main loop
    whatever its slots do, so its header's heartbeat alone counts, at all times; one running
    one item at a time beats between items, and an item's start counts as a sign of life."""
    config = child.config
    if child.role == Role.CONSUMER and config is not None and config.consumers.concurrency > 1:
        return reading.beat, True
    return reading.heartbeat, False


def overdue_items(reading: Reading, now: float, timeout: float | None) -> tuple[int, ...]:
    """The running items (as ``Reading.running`` names them) that started more than
    ``timeout`` plus TIMEOUT_GRACE seconds before ``now``."""
    if timeout is None:
        return ()
    limit = timeout + TIMEOUT_GRACE
    return tuple(item for since, item in reading.busy if now - since > limit)


def lease_holders(children: Iterable[Child], now: float) -> list[tuple[Config, list[str]]]:
    """The consumers whose leases to renew, grouped by the queue they serve (each group with
    a config naming that queue): only those alive and not hung (``keeps_lease``)."""
    live: dict[tuple[RedisConfig, str], tuple[Config, list[str]]] = {}
    for child in children:
        cfg = child.config
        if child.role != Role.CONSUMER or child.board is None or cfg is None:
            continue
        reading = child.board.read()
        limit = heartbeat_timeout(cfg.supervisor.lease)
        heartbeat, beats_while_busy = heartbeat_of(child, reading)
        if keeps_lease(
            child,
            heartbeat,
            reading.busy_since,
            now,
            cfg.consumers.timeout,
            limit,
            beats_while_busy=beats_while_busy,
        ):
            live.setdefault((cfg.redis, cfg.queue), (cfg, []))[1].append(child.identity)
    return list(live.values())


def leftovers(
    registered: Mapping[str, Registration],
    known: Collection[str],
    *,
    host: str,
    pidns: str,
    alive: Callable[[int | None, int | None], bool],
) -> list[str]:
    """The registered consumers of this host that are gone for good, found without waiting
    for their leases: not ``known`` to this master, registered from this host and pid
    namespace (pids of another namespace or boot cannot be judged: the lease decides), and
    neither they nor their master alive (a live master answers for its children and blames
    what they were running). ``alive(pid, start_time)`` judges a process."""
    gone = []
    for identity, info in registered.items():
        if info.host != host or identity in known or info.pidns != pidns:
            continue
        if alive(info.master_pid, info.master_start) or alive(info.pid, info.proc_start):
            continue
        gone.append(identity)
    return gone


class Housekeeping:
    """The master's Redis calls: one client per queue it has children on, the requeues Redis
    has not taken yet, and the pause after a failure. ``clock`` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.queues: dict[tuple[RedisConfig, str], Upkeep] = {}
        self.quiet_until = 0.0  # monotonic time until which Redis housekeeping waits
        self.outage = Outage()  # the master's own trouble with Redis, if any
        self.requeues: list[Requeue] = []  # waiting for Redis, oldest first
        self.access_checked = False  # Redis was found to allow every command goodsd needs
        self.access_check_at = 0.0  # monotonic time of the next check while Redis is away

    def queue_for(self, config: Config) -> Upkeep:
        """The master's client for the queue a config names (children of an older config may
        still hold items of another queue or server). Built, not connected: redis-py connects
        on the first call."""
        key = (config.redis, config.queue)
        if key not in self.queues:
            client = connect(
                config.redis,
                "goodsd-master",
                queue=config.queue,
                socket_timeout=MASTER_SOCKET_TIMEOUT,
            )
            self.queues[key] = Upkeep(client, config.queue)
        return self.queues[key]

    def do(self, what: str, action: Callable[[], T]) -> T | None:
        """One Redis call of the master's housekeeping; None when it failed or was skipped.
        After a failure the next calls are skipped for REDIS_PAUSE: against a silent server
        each would wait out its timeout, and the loop (signals, watchdog) must not stall."""
        now = self.clock()
        if now < self.quiet_until:
            return None
        try:
            result = action()
        except REDIS_ERRORS as exc:
            self.quiet_until = now + REDIS_PAUSE
            log.debug("%s skipped: %s", what, exc)
            if (trouble := classify(exc)) is not None:
                self.outage.failed(trouble, now, what)  # said once, and in STATUS=
            return None
        self.outage.succeeded(now, what)
        return result

    def renew_leases(self, holders: list[tuple[Config, list[str]]]) -> bool:
        """Renew the leases of ``lease_holders``; False when a renewal failed or was skipped
        (to be tried again soon, not a third of a lease later)."""
        ok = True
        for cfg, identities in holders:
            queue, lease = self.queue_for(cfg), cfg.supervisor.lease
            renewed = self.do(
                "lease renewal", lambda q=queue, i=identities, t=lease: q.renew_leases(i, t)
            )
            ok = ok and renewed is not None
        return ok

    def requeue(self, requeue: Requeue) -> list[tuple[str, int]]:
        """Requeue a gone consumer's items now, or as soon as Redis takes it; returns what
        ``retry_requeues`` did."""
        self.requeues.append(requeue)
        return self.retry_requeues()

    def retry_requeues(self) -> list[tuple[str, int]]:
        """Try every requeue still waiting for Redis; returns (consumer id, items requeued) of
        those done that held items. The first failure of each is logged, once."""
        done: list[tuple[str, int]] = []
        remaining: list[Requeue] = []
        for rec in self.requeues:
            if self.clock() < self.quiet_until:
                remaining.append(rec)
                continue
            consumers = rec.config.consumers
            try:
                count = self.queue_for(rec.config).requeue(
                    rec.identity,
                    running=rec.running,
                    error=rec.error,
                    policy=RetryPolicy(consumers.retries, consumers.retry_delay),
                )
            except REDIS_ERRORS as exc:
                self.quiet_until = self.clock() + REDIS_PAUSE
                rec.attempts += 1
                if rec.attempts == 1:
                    log.warning("cannot requeue items of %s yet: %s", rec.identity, exc)
                remaining.append(rec)
                continue
            if count:
                done.append((rec.identity, count))
        self.requeues = remaining
        return done

    def check_access(self, queue: Upkeep, config: Config) -> bool:
        """Check that Redis lets goodsd run every command it needs (``refused_commands``) and
        that ``config``'s URL form suits the server (``wrong_form``), and warn about settings
        that can lose items. A Redis that does not answer yet is no refusal:
        ``access_check_due`` says when to check again. Returns False when Redis refuses
        goodsd (its login, an ACL permission, its socket) or the URL form is wrong, logged
        here."""
        now = self.clock()
        self.access_check_at = now + RETRY_EVERY
        try:
            refused = refused_commands(queue, waits=config.redis.wait_replicas > 0)
        except REDIS_ERRORS as exc:
            trouble = classify(exc)
            if trouble is None:  # an answer the check did not expect: do not hold up the start
                log.warning("cannot check redis permissions: %s", exc)
                self.access_checked = True
                return True
            if trouble.kind.fatal:
                log.critical("%s; exiting", refusal(trouble))
                return False
            self.outage.failed(trouble, now, "access check")
            self.quiet_until = now + REDIS_PAUSE  # (a silent server: see ``do``)
            return True
        if refused:
            user = queue.client.connection_pool.connection_kwargs.get("username")
            log.critical(
                "redis refuses commands goodsd needs (add them to the ACL of redis user %r): "
                "%s; exiting",
                user or "default",
                ", ".join(refused),
            )
            return False
        if problem := self.wrong_form(config):
            log.critical("%s; exiting", problem)
            return False
        self.outage.succeeded(now, "access check")
        self.access_checked = True
        warn_about_settings(queue.client, config.redis)
        return True

    def access_check_due(self) -> bool:
        """Whether an access check that Redis did not answer is due again."""
        return self.clock() >= max(self.access_check_at, self.quiet_until)

    def waiting(self) -> set[str]:
        """Consumer ids whose requeue waits for Redis."""
        return {rec.identity for rec in self.requeues}

    def wrong_form(self, config: Config) -> str | None:
        """Why ``redis.url`` does not suit the server it reaches (a redis:// URL at a Cluster
        node or a replica; see goodsd.deployment), or None, also when the server cannot say."""
        queue = self.queue_for(config)
        try:
            told = deployment.facts(queue.client)
        except REDIS_ERRORS as exc:
            log.debug("cannot ask redis what it is: %s", exc)
            return None
        target = redisurl.parse(config.redis.url)
        return deployment.wrong_form(target, told, display_url(config.redis.url))


def warn_about_settings(client: redis.Redis, cfg: RedisConfig | None = None) -> None:
    """Warn about a Redis too old for goodsd, one that may evict items, and (given ``cfg``,
    the redis settings it was reached with) a primary whose failover can lose acknowledged
    writes, or that has fewer replicas than ``redis.wait_replicas`` waits for."""
    try:
        info = client.info()  # the default sections: server, memory, replication...
    except REDIS_ERRORS as exc:  # INFO may be refused to goodsd's user
        log.debug("cannot read the redis version: %s", exc)
        return
    policy = info.get("maxmemory_policy")  # (CONFIG GET would need @admin)
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
    if version < (6, 2):
        log.error(
            "redis %s is too old: goodsd needs 6.2 or later (BLMOVE)", info.get("redis_version")
        )
    if policy and policy != "noeviction":
        log.warning("redis maxmemory-policy is %s: items may be evicted; use noeviction", policy)
    if cfg is not None:
        for warning in deployment.replication_warnings(info, cfg):
            log.warning("%s", warning)
