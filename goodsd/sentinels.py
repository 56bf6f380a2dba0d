"""A primary found through Redis Sentinel, followed across failovers.

redis-py's Sentinel client asks the sentinels for the primary's address whenever a connection
opens. goodsd's connections also leave a primary that refuses writes for a reason a failover
may have brought: a ``READONLY`` reply (the primary was demoted) or a ``NOREPLICAS`` reply (it
was cut off from its replicas, and may have been replaced meanwhile), bare or wrapped in a
script's error (Redis 6.2). Such a reply is raised to the caller as it came (an outage the
caller waits out), and the connection reconnects before its next command, asking the
sentinels again. And sentinels that refuse goodsd's login, or that are no sentinels at all,
are told apart from sentinels that are merely away: the first two are config errors, the last
an outage.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from goodsd.inturn import AskingOrder, within_budget
from goodsd.replycode import reply_code


class NotASentinel(redis.RedisError):
    """No host the URL names answers as a sentinel: the URL has the wrong form."""


class Sentinels(Sentinel):
    """The sentinels of one URL. ``budget``: seconds one lookup goes on asking further
    sentinels (goodsd.inturn; ``math.inf`` asks every one). Lookups by the connections of
    one client take turns: they share the asking order."""

    def __init__(
        self, sentinels: Sequence[tuple[str, int]], *, budget: float, **kwargs: Any
    ) -> None:
        super().__init__(list(sentinels), **kwargs)
        self.budget = budget
        self.order: AskingOrder[redis.Redis] = AskingOrder()
        self.lock = threading.Lock()  # one lookup at a time: they share the order

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """The address of the primary the first sentinel that knows it names, asking sentinels
        in turn within the budget, those that were silent before last. Raises MasterNotFoundError
        (an outage: the sentinels asked are away, or have no primary by that name yet, or the
        budget ran out before every sentinel was asked), and, once every sentinel was asked,
        redis.AuthenticationError when every one that answered refused the login, NotASentinel
        when every one answered, none as a sentinel."""
        with self.lock:
            return self._discover(service_name)

    def _discover(self, service_name: str) -> tuple[str, int]:
        failures: list[str] = []
        asked = refusals = strangers = unreachable = 0
        for sentinel in within_budget(self.order.of(self.sentinels), self.budget):
            where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            asked += 1
            try:
                masters = sentinel.sentinel_masters()
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
                refusals += 1
                failures.append(f"{where}: {exc}")
                self.order.note_answer(sentinel)
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                unreachable += 1
                failures.append(f"{where}: {exc}")
                self.order.note_failure(sentinel)
                continue
            except redis.ResponseError as exc:
                if str(exc).startswith("NOPERM"):
                    refusals += 1
                else:  # "unknown command 'SENTINEL'": a data node, not a sentinel
                    strangers += 1
                failures.append(f"{where}: {exc}")
                self.order.note_answer(sentinel)
                continue
            self.order.note_answer(sentinel)
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                return state["ip"], state["port"]
            failures.append(f"{where}: no primary named {service_name!r} that is up")
        unasked = len(self.sentinels) - asked
        if unasked:  # a sentinel not asked may yet answer: nothing to hold against the URL
            failures.append(f"{unasked} more not asked this time")
        detail = "; ".join(failures)
        answered = asked - unreachable
        if not unasked and refusals and refusals + strangers == answered:
            raise redis.AuthenticationError(f"sentinel refused goodsd's login ({detail})")
        if not unasked and strangers and strangers == asked:  # and none was merely away
            raise NotASentinel(f"no host of the URL answered as a sentinel ({detail})")
        raise MasterNotFoundError(f"no primary {service_name!r} found ({detail})")


# Replies after which a connection leaves the primary it talks to (see the module docstring).
LEAVING_CODES = frozenset({"READONLY", "NOREPLICAS"})


def leaves_primary(exc: redis.ResponseError) -> bool:
    """Whether a connection answered ``exc`` asks the sentinels for the primary again before
    its next command: a READONLY or NOREPLICAS reply, however it was wrapped."""
    return reply_code(exc) in LEAVING_CODES


class _LeavesDemotedPrimary:
    """A connection to the primary that, once it was answered READONLY or NOREPLICAS,
    reconnects before its next command, through ``connect()``, which asks the sentinels
    again. (Not at once: the rest of a pipeline's replies are still to be read.)"""

    leaving = False  # such a reply was read: reconnect before the next command

    def read_response(self, *args: object, **kwargs: object) -> object:
        # Past SentinelManagedConnection's own reading, which turns a bare READONLY into a
        # lost connection at once, cutting a pipeline short, and leaves a wrapped one alone.
        reader = super(SentinelManagedConnection, self)
        try:
            return reader.read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as exc:
            if leaves_primary(exc):
                self.leaving = True
            raise

    def send_packed_command(self, *args: object, **kwargs: object) -> None:
        if self.leaving:
            self.leaving = False
            self.disconnect()  # type: ignore[attr-defined]
        if not self._sock:  # type: ignore[attr-defined]
            # redis-py's own reconnect here would go back to the address it had
            self.connect()  # type: ignore[attr-defined]
        super().send_packed_command(*args, **kwargs)  # type: ignore[misc]


class PrimaryConnection(_LeavesDemotedPrimary, SentinelManagedConnection):
    """A TCP connection to the primary the sentinels name."""


class PrimarySSLConnection(_LeavesDemotedPrimary, SentinelManagedSSLConnection):
    """A TLS connection to the primary the sentinels name."""


def primary_client(
    sentinels: Sequence[tuple[str, int]],
    service: str,
    *,
    tls: bool,
    sentinel_kwargs: dict[str, object],
    budget: float,
    **connection_kwargs: object,
) -> redis.Redis:
    """A client for the primary named ``service``, found through ``sentinels`` (reached
    with ``sentinel_kwargs``, asked in turn within ``budget`` seconds per lookup) whenever a
    connection opens. Connects on its first call."""
    manager = Sentinels(sentinels, budget=budget, sentinel_kwargs=sentinel_kwargs)
    connection_class = PrimarySSLConnection if tls else PrimaryConnection
    return manager.master_for(service, connection_class=connection_class, **connection_kwargs)
