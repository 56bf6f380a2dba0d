"""What the Redis server goodsd reaches says it is, and whether ``redis.url`` suits it.

A ``redis://`` URL that reaches a Cluster node or a replica is a mistake goodsd can see at
start: a queue on another node of the cluster would only ever get ``MOVED``, and a replica
refuses every write. Both are refused then (exit 78) with the URL form to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from goodsd.redisurl import FORMS, Deployment, Target

# What a server may refuse without that meaning trouble: a command its ACL denies, or one an
# older server does not know.
_NOT_TOLD = (redis.ResponseError,)


@dataclass(frozen=True)
class Facts:
    """What a server says of itself; None where it would not say (ACL, older server)."""

    version: str | None = None  # "7.0.15"
    mode: str | None = None  # "standalone", "cluster", "sentinel"
    role: str | None = None  # "master", "replica"


def facts(client: redis.Redis) -> Facts:
    """Ask the server what it is: HELLO (Redis 6.2 and later, in @connection), else INFO
    (which an ACL may refuse). Raises redis-py's errors when the server cannot be reached."""
    try:
        reply = client.execute_command("HELLO")
    except _NOT_TOLD:
        return _facts_from_info(client)
    if not isinstance(reply, dict):  # redis-py makes a dict of it, an older one a list
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    told = {_text(key): value for key, value in reply.items()}
    role = _text(told.get("role"))
    return Facts(_text(told.get("version")), _text(told.get("mode")), _role(role))


def _facts_from_info(client: redis.Redis) -> Facts:
    try:
        info = client.info()
    except _NOT_TOLD:
        return Facts()
    mode = "cluster" if info.get("cluster_enabled") else info.get("redis_mode")
    return Facts(_text(info.get("redis_version")), _text(mode), _role(_text(info.get("role"))))


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _role(role: str | None) -> str | None:
    return "replica" if role == "slave" else role


def wrong_form(target: Target, told: Facts, shown_url: str) -> str | None:
    """Why ``redis.url`` (``target``, shown as ``shown_url``) does not suit the server it
    reached, or None. Only a one-server URL can be wrong this way: a Sentinel URL reaches the
    primary the sentinels name, a Cluster URL the node serving the queue's slot."""
    if target.deployment is not Deployment.SERVER:
        return None
    if told.mode == "cluster":
        return (
            f"redis.url {shown_url} reaches a Redis Cluster node: use "
            f"{FORMS[Deployment.CLUSTER]} (any nodes of the cluster; goodsd finds the one "
            "serving the queue)"
        )
    if told.role == "replica":
        return (
            f"redis.url {shown_url} reaches a replica, which refuses writes: use the "
            f"primary's address, or {FORMS[Deployment.SENTINEL]} where Sentinel manages "
            "failover"
        )
    return None
