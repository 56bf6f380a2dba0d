"""What the Redis server goodsd reaches says it is, and whether ``redis.url`` suits it.

A ``redis://`` URL that reaches a Cluster node or a replica is a mistake goodsd can see at
start: a queue on another node of the cluster would only ever get ``MOVED``, and a replica
refuses every write. Both are refused then (exit 78) with the URL form to use instead.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
from redis.connection import SSLConnection

from goodsd import redisurl
from goodsd.config import Config, RedisConfig
from goodsd.ops.common import display_url
from goodsd.redisconn import REDIS_ERRORS, classify, described, refused_commands
from goodsd.redisurl import FORMS, Deployment, Target
from goodsd.store import Upkeep

# The oldest Redis goodsd runs on (BLMOVE).
OLDEST = (6, 2)
# What a server may refuse without that meaning trouble: a command its ACL denies, or one an
# older server does not know.
_NOT_TOLD = (redis.ResponseError,)


@dataclass(frozen=True)
class Facts:
    """What a server says of itself; None where it would not say (ACL, older server)."""

    version: str | None = None  # "7.0.15"
    mode: str | None = None  # "standalone", "cluster", "sentinel"
    role: str | None = None  # "primary", "replica"


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
    """Redis's role by its present name, "primary" or "replica" (not "master": that is
    goodsd's supervising process)."""
    return {"master": "primary", "slave": "replica"}.get(role or "", role)


def wrong_form(target: Target, told: Facts, shown_url: str) -> str | None:
    """Why ``redis.url`` (``target``, shown as ``shown_url``) does not suit the server it
    reached, or None. Only a one-server URL can be wrong this way: a Sentinel URL reaches the
    primary the sentinels name, a Cluster URL the node serving the queue's slot."""
    if target.deployment is not Deployment.SERVER:
        return None
    if told.mode == "sentinel":
        return (
            f"redis.url {shown_url} reaches a Redis Sentinel: use {FORMS[Deployment.SENTINEL]} "
            "(the sentinels, and the name they know the primary by)"
        )
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


def too_old(told: Facts) -> str | None:
    """Why the server's version rules goodsd out (older than OLDEST: no BLMOVE, so every
    consumer would fail), or None, also when the server would not say."""
    if told.version is None:
        return None
    numbers = tuple(int(p) for p in told.version.split(".")[:2] if p.isdigit())
    if numbers >= OLDEST:
        return None
    oldest = ".".join(map(str, OLDEST))
    return f"redis {told.version} is too old: goodsd needs {oldest} or later (BLMOVE)"


def server_problem(target: Target, told: Facts, shown_url: str) -> str | None:
    """Why goodsd may not run on the server it reached, by what the server says it is
    (``told``): ``redis.url`` (``target``, shown as ``shown_url``) has the wrong form for it,
    or it is too old; None when neither, also when the server would not say."""
    return wrong_form(target, told, shown_url) or too_old(told)


def replication_warnings(replication: Mapping[str, object], cfg: RedisConfig) -> list[str]:
    """What a primary's INFO replication says that can lose items in a failover: it takes
    writes that no replica has (``min-replicas-to-write`` 0; INFO shows
    ``min_slaves_good_slaves`` only when it is set) while it has replicas or Sentinel may fail
    it over; or it has fewer replicas than ``redis.wait_replicas``."""
    if replication.get("role") != "master":
        return []
    replicas = int(str(replication.get("connected_slaves", 0)))
    sentinel = redisurl.parse(cfg.url).deployment is Deployment.SENTINEL
    warnings = []
    if (sentinel or replicas) and "min_slaves_good_slaves" not in replication:
        warnings.append(
            f"the redis primary (with {replicas} replica(s)) takes writes that no replica has "
            "acknowledged: a failover can lose them (pushed items, acks); set "
            "min-replicas-to-write 1 with at least two replicas, and redis.wait_replicas: 1 "
            "(see 'Redis deployments' in the README)"
        )
    if cfg.wait_replicas > replicas:
        warnings.append(
            f"redis.wait_replicas is {cfg.wait_replicas} but the redis primary has {replicas} "
            "replica(s): pushes and settles wait until enough replicas acknowledge them"
        )
    return warnings


# -- goodsd check --redis ----------------------------------------------------------------------


@dataclass
class Report:
    """What `goodsd check --redis` found: one line per subject (``lines``, "subject: what"),
    ``problems`` that stop goodsd (exit 78) and ``warnings`` that do not."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, subject: str, text: str) -> None:
        self.lines.append(f"{subject}: {text}")


def report(cfg: Config, client: redis.Redis) -> Report:
    """Check the Redis ``cfg`` names through ``client`` (goodsd's own, built from ``cfg``)
    as the service would use it: server version, deployment, maxmemory-policy, persistence,
    TLS, the ACL user and every command goodsd needs that it may not run. Reaching it, or a
    refusal (a login, TLS), is a problem; so is what ``goodsd run`` refuses at start."""
    found = Report()
    target = redisurl.parse(cfg.redis.url)
    shown = display_url(cfg.redis.url)
    queue = Upkeep(client, cfg.queue)
    unexpected: Exception | None = None  # an answer the permission check did not expect
    try:
        try:
            refused = refused_commands(queue, waits=cfg.redis.wait_replicas > 0)
        except REDIS_ERRORS as exc:
            if classify(exc) is not None:
                raise
            refused, unexpected = [], exc  # (a sentinel knows no MULTI): what is it?
        told = facts(client)
    except REDIS_ERRORS as exc:
        reason = described(exc)
        cause = exc.__cause__ or exc.__context__
        certificate = client.connection_pool.connection_kwargs.get("ssl_certfile")
        if isinstance(cause, ssl.SSLError) and not certificate:
            # a TLS 1.3 server that wants a client certificate says so, or just hangs up
            reason += "; does the server want a client certificate (ssl_certfile, ssl_keyfile)?"
        found.problems.append(f"cannot use redis at {shown}: {reason}")
        return found
    if problem := server_problem(target, told, shown):
        found.problems.append(problem)
    elif unexpected is not None:  # as at start: said, not held against the server
        found.warnings.append(f"cannot check redis permissions: {described(unexpected)}")
    found.add("server", _version_line(told))
    found.add("deployment", _deployment_line(cfg, target, client, told, found))
    found.add("maxmemory-policy", _policy_line(client, found))
    found.add("persistence", _persistence_line(client, found))
    found.add("tls", _tls_line(target, client, found))
    user = _acl_user(client)
    if unexpected is not None:
        found.add("acl user", f"{user}; permissions not checked")
    elif refused:
        found.add("acl user", f"{user}; may not run: {', '.join(refused)}")
        found.problems.append(
            f"redis ACL user {user} may not run commands goodsd needs: {', '.join(refused)}"
        )
    else:
        found.add("acl user", f"{user}; every command goodsd needs is allowed")
    return found


def _version_line(told: Facts) -> str:
    if told.version is None:
        return "version unknown (HELLO and INFO not allowed)"
    return f"redis {told.version}"


def _deployment_line(
    cfg: Config, target: Target, client: redis.Redis, told: Facts, found: Report
) -> str:
    replicas = _replicas(client)
    with_replicas = f"{replicas} replica(s)" if replicas is not None else "replicas unknown"
    if target.deployment is Deployment.CLUSTER:
        owner = client.connection_pool.owner  # see goodsd.clusterslot
        host, port = owner.address or ("?", 0)
        line = (
            f"cluster node {host}:{port} serves slot {owner.slot} of queue {cfg.queue!r} "
            f"({len(owner.known)} primaries; {with_replicas} of this one)"
        )
    elif target.deployment is Deployment.SENTINEL:
        pool = client.connection_pool
        host, port = pool.master_address or ("?", 0)
        sentinels = len(pool.sentinel_manager.sentinels)
        line = (
            f"primary {host}:{port}, named {target.service!r} by the sentinels ({sentinels} in "
            f"the url), with {with_replicas}"
        )
    else:
        line = f"one server ({told.mode or 'mode unknown'}, {told.role or 'role unknown'})"
        if told.role != "replica":
            line += f" with {with_replicas}"
    try:
        replication = client.info("replication")
    except REDIS_ERRORS:
        return line
    found.warnings += replication_warnings(replication, cfg.redis)
    return line


def _replicas(client: redis.Redis) -> int | None:
    try:
        return int(client.info("replication").get("connected_slaves", 0))
    except REDIS_ERRORS:
        return None


def _config(client: redis.Redis, *names: str) -> dict[str, str] | None:
    """CONFIG GET of ``names``; None where the ACL (or a managed service) forbids it."""
    try:
        got = client.config_get(*names)
    except REDIS_ERRORS:
        return None
    return {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in got.items()}


def _policy_line(client: redis.Redis, found: Report) -> str:
    try:
        policy = str(client.info("memory").get("maxmemory_policy"))
    except REDIS_ERRORS:
        return "unknown (INFO not allowed)"
    if policy != "noeviction":
        found.warnings.append(
            f"redis maxmemory-policy is {policy}: items may be evicted; use noeviction"
        )
    return policy


def _persistence_line(client: redis.Redis, found: Report) -> str:
    settings = _config(client, "appendonly", "appendfsync", "save")
    if settings is not None:
        aof = settings.get("appendonly") == "yes"
        save = settings.get("save", "")
        parts = [f"AOF (appendfsync {settings.get('appendfsync')})" if aof else "no AOF"]
        parts.append(f"RDB (save {save})" if save else "no RDB snapshots")
    else:
        try:
            aof = bool(client.info("persistence").get("aof_enabled"))
        except REDIS_ERRORS:
            return "unknown (INFO and CONFIG not allowed)"
        save = "?"
        parts = ["AOF" if aof else "no AOF", "RDB unknown (CONFIG not allowed)"]
    if not aof and not save:
        found.warnings.append(
            "redis keeps nothing on disk (no AOF, no RDB snapshots): a restart of redis "
            "loses every item"
        )
    return ", ".join(parts)


def _tls_line(target: Target, client: redis.Redis, found: Report) -> str:
    kwargs = client.connection_pool.connection_kwargs
    connection_class = client.connection_pool.connection_class
    if not (target.tls or issubclass(connection_class, SSLConnection)):
        return "no"
    verify = str(kwargs.get("ssl_cert_reqs", "required"))
    if verify == "none":
        found.warnings.append(
            "redis.url has ssl_cert_reqs=none: the server's certificate is not verified"
        )
        line = "yes; the server's certificate is NOT verified (ssl_cert_reqs=none)"
    else:
        ca = kwargs.get("ssl_ca_certs") or kwargs.get("ssl_ca_path") or "the system's CAs"
        line = f"yes; server certificate verified ({verify}) against {ca}"
    if certificate := kwargs.get("ssl_certfile"):
        line += f"; client certificate {certificate}"
    return line


def _acl_user(client: redis.Redis) -> str:
    """The ACL user goodsd logs in as: the URL's, else Redis's ``default``."""
    return str(client.connection_pool.connection_kwargs.get("username") or "default")
