"""The Redis URLs goodsd reads, split into what it connects to.

Three deployments, by scheme:

- one server: ``redis://``, ``rediss://`` (TLS), ``unix://``; redis-py reads these itself;
- a primary found through Sentinel: ``redis+sentinel://[user:pass@]host[:port],.../service[/db]``
  (``rediss+sentinel://`` for TLS to the sentinels and the data nodes; port 26379 by default);
- a Redis Cluster: ``redis+cluster://[user:pass@]host[:port],...`` (``rediss+cluster://``; port
  6379 by default), any of its nodes, to learn from which node serves a queue's slot.

The user-info part and the query parameters mean what they mean in a ``redis://`` URL (the data
nodes' user and password, ``ssl_ca_certs``, ``ssl_certfile``...), read by redis-py's own URL
reader so both forms agree. Used by goodsd.config to check a URL and by goodsd.redisconn to
connect; messages never repeat the URL, since it may hold a password.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from redis.connection import parse_url


class Deployment(enum.Enum):
    """What a URL points at: one server, a Sentinel-managed primary, or a Cluster."""

    SERVER = "server"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


# scheme -> (deployment, TLS)
SCHEMES: dict[str, tuple[Deployment, bool]] = {
    "redis": (Deployment.SERVER, False),
    "rediss": (Deployment.SERVER, True),
    "unix": (Deployment.SERVER, False),
    "redis+sentinel": (Deployment.SENTINEL, False),
    "rediss+sentinel": (Deployment.SENTINEL, True),
    "redis+cluster": (Deployment.CLUSTER, False),
    "rediss+cluster": (Deployment.CLUSTER, True),
}
# The port of a node written without one.
DEFAULT_PORTS = {Deployment.SENTINEL: 26379, Deployment.CLUSTER: 6379}
# How a URL of each deployment looks, for messages.
FORMS = {
    Deployment.SERVER: "redis://host:6379/0",
    Deployment.SENTINEL: "redis+sentinel://host1:26379,host2:26379/service_name",
    Deployment.CLUSTER: "redis+cluster://host1:6379,host2:6379",
}
# The most nodes one URL may name: a few seeds are enough to find the rest.
MAX_NODES = 64

_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def host_or_address(host: str) -> bool:
    """Whether ``host`` is a host name or an IP address (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None
    return True


@dataclass(frozen=True)
class Target:
    """What one URL points at. For a single server only ``deployment``, ``tls`` and ``db``
    are filled: redis-py reads the rest from the URL itself."""

    deployment: Deployment
    tls: bool
    nodes: tuple[tuple[str, int], ...] = ()  # the sentinels, or the cluster nodes to ask
    service: str = ""  # Sentinel's name of the primary
    db: int = 0
    # redis-py connection keywords the URL sets (username, password, ssl_*...), as redis-py
    # reads them from a redis:// URL; the password stays out of repr()
    options: dict[str, object] = field(default_factory=dict, repr=False)


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case ("" when it has none)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def parse(url: str) -> Target:
    """Split a Redis URL of any form goodsd takes. Raises ValueError, saying what is wrong
    without repeating the URL."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    deployment, tls = SCHEMES[scheme]
    if deployment is Deployment.SERVER:
        return Target(deployment, tls)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        raise ValueError("not a valid URL") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = _nodes(hosts, DEFAULT_PORTS[deployment], FORMS[deployment])
    service, db = _path(parts.path, deployment)
    # redis-py reads the user-info part and the query as it would for one server
    plain = f"{'rediss' if tls else 'redis'}://{userinfo}{at}localhost"
    try:
        options = parse_url(f"{plain}?{parts.query}" if parts.query else plain)
    except ValueError as exc:  # names the parameter, never its value
        raise ValueError(f"redis-py cannot use it: {exc}") from None
    for name in ("host", "port", "connection_class", "path"):
        options.pop(name, None)
    db = int(str(options.pop("db", db)))
    if deployment is Deployment.CLUSTER and db != 0:
        raise ValueError("a cluster has only database 0")
    return Target(deployment, tls, nodes, service, db, options)


def _nodes(text: str, default_port: int, form: str) -> tuple[tuple[str, int], ...]:
    """The comma-separated ``host[:port]`` list of a Sentinel or Cluster URL."""
    if not text:
        raise ValueError(f"needs at least one host, e.g. {form}")
    entries = text.split(",")
    if len(entries) > MAX_NODES:
        raise ValueError(f"names more than {MAX_NODES} hosts; a few are enough to find the rest")
    nodes = []
    for entry in entries:
        if entry.startswith("["):  # [IPv6] or [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
            if rest and port is None:
                raise ValueError("an IPv6 host in brackets may be followed only by :port")
        else:
            host, colon, port_text = entry.partition(":")
            port = port_text if colon else None
        host = unquote(host)
        if not host:
            raise ValueError(f"every host needs a name, e.g. {form}")
        if not host_or_address(host):
            raise ValueError("each host must be a host name or an IP address")
        if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("each port must be a number between 1 and 65535")
        nodes.append((host, int(port) if port else default_port))
    return tuple(nodes)


def _path(path: str, deployment: Deployment) -> tuple[str, int]:
    """The service name and database number a Sentinel URL's path names; a Cluster URL may
    only name database 0."""
    words = [unquote(word) for word in path.split("/")[1:]] if path else []
    if words and words[-1] == "":
        words.pop()  # a trailing slash
    if deployment is Deployment.CLUSTER:
        if words not in ([], ["0"]):
            raise ValueError("a cluster URL has no path but /0 (a cluster has only database 0)")
        return "", 0
    if not words or not words[0]:
        raise ValueError(f"needs the primary's service name, e.g. {FORMS[deployment]}")
    if len(words) > 2:
        raise ValueError("the path is /service_name or /service_name/db")
    if len(words) == 2 and not (words[1].isascii() and words[1].isdigit()):
        raise ValueError("the database after the service name must be a number, e.g. /mymaster/0")
    return words[0], int(words[1]) if len(words) == 2 else 0
