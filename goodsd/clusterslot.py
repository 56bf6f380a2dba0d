"""A Redis Cluster as goodsd uses it: through the one node that serves its queue's slot.

Every key of a queue shares the hash tag ``{<queue>}`` (the ready list ``<queue>`` hashes to the
same slot: a key without braces hashes by its whole name), so a queue lives in one slot, on one
node at a time. goodsd's client for a queue is therefore an ordinary single-server client whose
connections go to that node: scripts, pipelines and transactions work as on one server, in the
same round trips. The node is looked up in the cluster (CLUSTER SLOTS, queried of any node the
URL names or the cluster listed) whenever a connection opens without one known, and learnt
from a ``MOVED`` reply, which also ends every connection to the old node once it is given back.

What a slot's move or a node's failover looks like to goodsd (a ``MOVED`` reply, ``ASK`` and
``TRYAGAIN`` while a slot migrates, ``CLUSTERDOWN``, a lost connection) is raised to the caller
as it comes: goodsd.redisconn.classify calls each a passing outage, and the caller's retry
loop tries again, on the node serving the slot by then. Nothing is repeated behind the
caller's back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import redis
from redis.connection import Connection, SSLConnection
from redis.crc import key_slot

from goodsd.inturn import AskingOrder, within_budget


class SlotNotServed(redis.ConnectionError):
    """No node of the cluster answered for the slot, or none serves it right now."""


class NotACluster(redis.RedisError):
    """A node the URL names says it is no cluster node: the URL has the wrong form."""


class SlotFollowed(redis.exceptions.MovedError):
    """A MOVED reply to a connection that learnt from it where the slot went: the next
    attempt goes to the node serving the slot now. ``resp``: "<slot> <host>:<port>"."""

    def __init__(self, resp: str, status_code: str | None = "MOVED") -> None:
        super().__init__(resp, status_code=status_code)


def queue_slot(queue: str) -> int:
    """The cluster slot of every key of ``queue`` (see goodsd.store.keys)."""
    return key_slot(queue.encode())


class SlotOwner:
    """Which node serves one slot, as last learnt, and the nodes to query when that is not
    known. Shared by the connections of one pool."""

    def __init__(
        self,
        seeds: Sequence[tuple[str, int]],
        slot: int,
        lookup: dict[str, object],
        budget: float,
    ) -> None:
        self.seeds = list(seeds)  # nodes the URL names
        self.budget = budget  # seconds one lookup goes on querying further nodes
        self.known: list[tuple[str, int]] = []  # every primary the cluster listed last time
        self.slot = slot
        self.lookup = lookup  # connection keywords for querying a node (login, TLS, timeouts)
        self.address: tuple[str, int] | None = None  # the node serving the slot, if known
        self.order: AskingOrder[tuple[str, int]] = AskingOrder()
        self.lock = threading.Lock()

    def find(self) -> tuple[str, int]:
        """The node serving the slot: the one last learnt, else looked up in the cluster, querying
        the nodes named in the URL and the primaries seen before, in turn within goodsd.inturn's
        budget, those that were silent before last. Raises SlotNotServed (an outage: no node
        queried told, or the budget ran out before every node was queried), and, once every
        node was queried, the login's refusal (redis.AuthenticationError) when every one that
        answered refused it, NotACluster when every one answered, none as a cluster node."""
        with self.lock:
            if self.address is not None:
                return self.address
            nodes = self.order.of(list(dict.fromkeys([*self.seeds, *self.known])))
            failures: list[str] = []
            logins: list[redis.AuthenticationError] = []  # the login refused
            strangers: list[NotACluster] = []  # no cluster node
            unreachable = 0
            for node in within_budget(nodes, self.budget):
                where = f"{node[0]}:{node[1]}"
                try:
                    self.address = self._query(node)
                    self.order.note_answer(node)
                    return self.address
                except NotACluster as exc:
                    strangers.append(exc)
                    failures.append(f"{where}: {exc}")
                    self.order.note_answer(node)
                except redis.AuthenticationError as exc:
                    logins.append(exc)
                    failures.append(f"{where}: {exc}")
                    self.order.note_answer(node)
                except SlotNotServed as exc:
                    failures.append(f"{where}: {exc}")
                    self.order.note_answer(node)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    unreachable += 1
                    failures.append(f"{where}: {exc}")
                    self.order.note_failure(node)
            asked = len(failures)
            if asked < len(nodes):
                failures.append(f"{len(nodes) - asked} more not queried this time")
            if asked == len(nodes):  # as for sentinels: the URL is to blame only when
                if logins and len(logins) + len(strangers) == asked - unreachable:
                    raise logins[0]  # every node that answered refused the login
                if strangers and len(strangers) == asked:  # and none was merely away
                    raise strangers[0]
            raise SlotNotServed(
                f"no cluster node told who serves slot {self.slot} ({'; '.join(failures)})"
            )

    def _query(self, node: tuple[str, int]) -> tuple[str, int]:
        connection = (SSLConnection if self.lookup.get("ssl") else Connection)(
            host=node[0], port=node[1], **{k: v for k, v in self.lookup.items() if k != "ssl"}
        )
        try:
            connection.send_command("CLUSTER", "SLOTS")
            try:
                ranges = connection.read_response()
            except redis.ResponseError as exc:
                if "cluster support disabled" in str(exc):
                    raise NotACluster(
                        f"{node[0]}:{node[1]} is not a cluster node: use a redis:// URL"
                    ) from None
                raise
        finally:
            connection.disconnect()
        primaries = []
        owner = None
        for first, last, primary, *_ in ranges:
            host = primary[0].decode() if primary[0] not in (b"", b"?") else node[0]
            address = (host, int(primary[1]))
            primaries.append(address)
            if first <= self.slot <= last:
                owner = address
        self.known = list(dict.fromkeys(primaries))
        if owner is None:
            raise SlotNotServed(f"no node serves slot {self.slot}")
        return owner

    def moved(self, host: str, port: int) -> None:
        """A node answered MOVED: the slot is served at ``host:port`` now."""
        with self.lock:
            self.address = (host, port)

    def forget(self, address: tuple[str, int]) -> None:
        """A connection to ``address`` failed: look it up in the cluster again before the next one
        (a replica may have taken over the slot)."""
        with self.lock:
            if self.address == address:
                self.address = None


class _FollowsSlot:
    """A redis-py connection that connects to the node serving its pool's slot, whenever it
    connects, and learns from MOVED replies where the slot went."""

    def __init__(self, *, slot_owner: SlotOwner, **kwargs: object) -> None:
        self.slot_owner = slot_owner
        super().__init__(**kwargs)  # type: ignore[call-arg]

    def connect(self) -> None:
        if self._sock:  # type: ignore[attr-defined]
            return
        self.host, self.port = self.slot_owner.find()
        try:
            super().connect()  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_owner.forget((self.host, self.port))
            raise

    def send_packed_command(self, *args: object, **kwargs: object) -> None:
        if not self._sock:  # type: ignore[attr-defined]
            # redis-py's own reconnect here would go back to the address it had
            self.connect()
        super().send_packed_command(*args, **kwargs)  # type: ignore[misc]

    def read_response(self, *args: object, **kwargs: object) -> object:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.exceptions.MovedError as exc:
            self.slot_owner.moved(exc.host or self.host, int(exc.port))
            raise SlotFollowed(exc.message) from None
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_owner.forget((self.host, self.port))
            raise


class SlotConnection(_FollowsSlot, Connection):
    """A TCP connection to the node serving a slot."""


class SlotSSLConnection(_FollowsSlot, SSLConnection):
    """A TLS connection to the node serving a slot."""


class SlotPool(redis.ConnectionPool):
    """Connections to the node serving one slot. A connection given back once the slot has
    moved elsewhere is closed, so the next one opens to the new node."""

    def __init__(self, owner: SlotOwner, *, tls: bool, **connection_kwargs: object) -> None:
        self.owner = owner
        connection_class = SlotSSLConnection if tls else SlotConnection
        super().__init__(connection_class=connection_class, **connection_kwargs)
        self.connection_kwargs["slot_owner"] = owner

    def owns_connection(self, connection: Connection) -> bool:
        address = self.owner.address
        same_node = address is None or (connection.host, connection.port) == address
        return bool(super().owns_connection(connection)) and same_node


def slot_client(
    seeds: Sequence[tuple[str, int]],
    queue: str,
    *,
    tls: bool,
    lookup: dict[str, object],
    budget: float,
    **connection_kwargs: object,
) -> redis.Redis:
    """A client for the node serving ``queue``'s slot; it connects on its first call.
    ``lookup``: keywords for the short connections that query a node for the cluster's map;
    ``budget``: seconds one lookup goes on querying further nodes (goodsd.inturn)."""
    owner = SlotOwner(seeds, queue_slot(queue), {**lookup, "ssl": tls}, budget)
    return redis.Redis(connection_pool=SlotPool(owner, tls=tls, **connection_kwargs))
