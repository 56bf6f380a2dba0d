"""Redis clients built from config after fork (no socket is ever shared between processes),
what a Redis error means to goodsd (``classify``: the one place that decides), the one retry
loop every child uses while Redis is away, and the start-up check of goodsd's ACL permissions.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from goodsd import redisurl
from goodsd.backoff import backoff_delay
from goodsd.clusterslot import NotACluster, SlotFollowed, slot_client
from goodsd.config import PasswordFileError, RedisConfig, read_password_file
from goodsd.inturn import LOOKUP_BUDGET, LOOKUP_TIMEOUT
from goodsd.redisurl import Deployment
from goodsd.replycode import PIPELINE_NOTE, reply_code
from goodsd.scoreboard import REDIS_WAIT_SHIFT
from goodsd.sentinels import NotASentinel, primary_client
from goodsd.store import Upkeep
from goodsd.store.scripts import ScriptsReloaded

log = logging.getLogger("goodsd.redis")
T = TypeVar("T")

# Name of the systemd credential (LoadCredential=redis-password:...) read when present.
CREDENTIAL_NAME = "redis-password"
# The same for the password of Sentinel itself.
SENTINEL_CREDENTIAL_NAME = "redis-sentinel-password"
# Everything a Redis call can raise that may be Redis trouble; ``classify`` tells which it is.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)


# Environment variables that hold or lead to the Redis password: a command that goodsd starts
# (a command handler, a producer command) does not inherit them.
SECRET_ENVIRONMENT = ("GOODSD_REDIS_PASSWORD", "CREDENTIALS_DIRECTORY")


class PasswordError(Exception):
    """The configured password file (or credential) cannot be read as text: a config error."""


def password(cfg: RedisConfig, environ: Mapping[str, str]) -> str | None:
    """The password from, in order: ``redis.password_file``, the systemd credential,
    ``$GOODSD_REDIS_PASSWORD``; None when none is set (or the URL carries one). Raises
    PasswordError when a file that should hold it cannot be read as UTF-8 text."""
    if cfg.password_file:
        return _read_secret(cfg.password_file, "redis.password_file")
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = os.path.join(credentials, CREDENTIAL_NAME)
        if os.path.exists(path):
            return _read_secret(path, f"the credential {CREDENTIAL_NAME}")
    return environ.get("GOODSD_REDIS_PASSWORD") or None


def _read_secret(path: str, what: str) -> str:
    try:
        return read_password_file(path)[0]
    except PasswordFileError as exc:
        raise PasswordError(f"{what}: {exc}") from None


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for a command goodsd starts: ``environ`` less SECRET_ENVIRONMENT."""
    return {key: value for key, value in environ.items() if key not in SECRET_ENVIRONMENT}


def sentinel_password(cfg: RedisConfig, environ: Mapping[str, str]) -> str | None:
    """The password for Sentinel itself (not for the data nodes): ``redis.sentinel_password_file``,
    else the systemd credential ``redis-sentinel-password``; None when neither is set. Raises
    PasswordError like ``password``."""
    if cfg.sentinel_password_file:
        return _read_secret(cfg.sentinel_password_file, "redis.sentinel_password_file")
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = os.path.join(credentials, SENTINEL_CREDENTIAL_NAME)
        if os.path.exists(path):
            return _read_secret(path, f"the credential {SENTINEL_CREDENTIAL_NAME}")
    return None


def connect(
    cfg: RedisConfig,
    name: str,
    *,
    queue: str = "",
    socket_timeout: float = 10.0,
    lookup_budget: float = LOOKUP_BUDGET,
) -> redis.Redis:
    """A client that fails fast on a dead server (timeouts) instead of hanging a worker.
    Blocking calls must wait less than ``socket_timeout``. Built, not connected: it connects
    on its first call. ``lookup_budget``: seconds one lookup of a Sentinel or Cluster URL goes
    on asking further hosts (goodsd.inturn): a process that lives on tries the others at its
    next attempt; a one-shot command, which has no next attempt, gives ``math.inf`` to ask
    them all.

    Whatever the URL's form, the client is a single-server redis-py client: for a Sentinel
    URL its connections go to the primary the sentinels name (looked up on every connect); for a
    Cluster URL to the node serving ``queue``'s slot (which the URL needs), see
    goodsd.clusterslot. So goodsd's scripts, pipelines and transactions work alike on all."""
    kwargs: dict[str, object] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "client_name": name,
        "health_check_interval": 30,
        # No hidden retries: a claim repeated by the client library would take items the
        # caller never sees. goodsd retries itself, knowing which steps are idempotent.
        "retry": Retry(NoBackoff(), 0),
    }
    secret = password(cfg, os.environ)
    if secret is not None:
        kwargs["password"] = secret
    target = redisurl.parse(cfg.url)
    if target.deployment is Deployment.SERVER:
        return redis.Redis.from_url(cfg.url, **kwargs)
    # as in from_url, what the URL says wins over goodsd's defaults (the password file)
    options = {**kwargs, **target.options}
    lookup = {
        key: value
        for key, value in options.items()
        if key.startswith("ssl_") or key in ("username", "password", "retry")
    }
    lookup.update(socket_timeout=min(socket_timeout, LOOKUP_TIMEOUT))
    lookup.update(socket_connect_timeout=min(socket_timeout, LOOKUP_TIMEOUT))
    if target.deployment is Deployment.SENTINEL:
        sentinel_kwargs = {
            **{k: v for k, v in lookup.items() if k not in ("username", "password")},
            "ssl": target.tls,
        }
        if cfg.sentinel_username:
            sentinel_kwargs["username"] = cfg.sentinel_username
        if (secret := sentinel_password(cfg, os.environ)) is not None:
            sentinel_kwargs["password"] = secret
        return primary_client(
            target.nodes,
            target.service,
            tls=target.tls,
            sentinel_kwargs=sentinel_kwargs,
            budget=lookup_budget,
            db=target.db,
            **options,
        )
    if not queue:
        raise ValueError("a cluster client serves one queue: give its name")
    return slot_client(
        target.nodes, queue, tls=target.tls, lookup=lookup, budget=lookup_budget, **options
    )


# -- what a Redis error means ----------------------------------------------------------------


class Kind(enum.Enum):
    """A kind of Redis trouble. ``code``: its number in a child's scoreboard flags; ``label``:
    how the log and STATUS= name it; ``fatal``: retrying cannot help (the config, the server's
    ACL or a file mode must change), so a child exits 78; ``reads_work``: only writes are
    refused, so a read that succeeds does not show that the trouble is over."""

    UNREACHABLE = (1, "unreachable", False, False)
    LOADING = (2, "loading its data", False, False)
    OUT_OF_MEMORY = (3, "out of memory", False, True)
    READ_ONLY = (4, "read-only replica", False, True)
    NO_REPLICAS = (5, "too few replicas to accept writes", False, True)
    PRIMARY_DOWN = (6, "replica cut off from its primary", False, False)
    BUSY = (7, "busy", False, False)
    RESTARTED = (8, "restarted without goodsd's scripts", False, False)
    UNBLOCKED = (9, "ended a blocking call (turned replica?)", False, False)
    LOGIN_REFUSED = (10, "login refused", True, False)
    NO_PERMISSION = (11, "ACL permission denied", True, False)
    SOCKET_DENIED = (12, "socket permission denied", True, False)
    SLOT_MOVED = (13, "cluster slot moved", False, False)
    SLOT_MIGRATING = (14, "cluster slot migrating", False, False)
    CLUSTER_DOWN = (15, "cluster down", False, False)
    WRONG_FORM = (16, "redis.url names another kind of deployment", True, False)
    TLS_REFUSED = (17, "TLS handshake failed", True, False)

    def __init__(self, code: int, label: str, fatal: bool, reads_work: bool) -> None:
        self.code = code
        self.label = label
        self.fatal = fatal
        self.reads_work = reads_work


@dataclass(frozen=True)
class Trouble:
    """One Redis error as goodsd understands it: its kind and what Redis (or the system) said;
    for SOCKET_DENIED, ``detail`` is the socket's path. ``resolved``: the reply itself ended
    the trouble (a Redis that forgot goodsd's scripts has them again; a moved slot's new node
    is known to a client that follows slots), so the next attempt need not wait a delay
    grown during the outage."""

    kind: Kind
    detail: str
    resolved: bool = False

    @property
    def summary(self) -> str:
        """One line for the log, STATUS= and an operator command's error."""
        if self.kind is Kind.SOCKET_DENIED:
            return f"permission denied on {self.detail}: add the service user to the socket's group"
        return f"{self.kind.label} ({self.detail})"


# Error replies by their code, the reply's first word. redis-py raises many of them as a plain
# ResponseError, so the code decides, wherever it stands in the message (see
# goodsd.replycode.reply_code).
REPLY_CODES: dict[str, Kind] = {
    "OOM": Kind.OUT_OF_MEMORY,
    "READONLY": Kind.READ_ONLY,
    "NOREPLICAS": Kind.NO_REPLICAS,
    "MASTERDOWN": Kind.PRIMARY_DOWN,
    "LOADING": Kind.LOADING,
    "BUSY": Kind.BUSY,
    "MOVED": Kind.SLOT_MOVED,
    "ASK": Kind.SLOT_MIGRATING,
    "TRYAGAIN": Kind.SLOT_MIGRATING,
    "CLUSTERDOWN": Kind.CLUSTER_DOWN,
    "NOPERM": Kind.NO_PERMISSION,
    "WRONGPASS": Kind.LOGIN_REFUSED,
    "NOAUTH": Kind.LOGIN_REFUSED,
    "UNBLOCKED": Kind.UNBLOCKED,
}
# Cluster replies whose code redis-py drops, leaving what alone tells nothing ("3387 h:7001").
REDIRECTS = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})
# Errors that are not an error reply, by class; the first match decides (subclasses first:
# redis-py makes a refused login and a loading server kinds of ConnectionError).
ERROR_CLASSES: tuple[tuple[type[BaseException], Kind], ...] = (
    (ScriptsReloaded, Kind.RESTARTED),
    (NotACluster, Kind.WRONG_FORM),
    (NotASentinel, Kind.WRONG_FORM),
    (redis.AuthenticationError, Kind.LOGIN_REFUSED),
    (redis.exceptions.AuthorizationError, Kind.LOGIN_REFUSED),
    (redis.exceptions.BusyLoadingError, Kind.LOADING),
    (redis.ConnectionError, Kind.UNREACHABLE),
    (redis.TimeoutError, Kind.UNREACHABLE),
    (OSError, Kind.UNREACHABLE),
)
# redis-py's text for a failed connect to a unix socket: "Error 13 connecting to /path. ..."
_SOCKET_PATH = re.compile(r"connecting to (/.*?)\.(?: |$)")


def classify(exc: BaseException) -> Trouble | None:
    """What ``exc``, raised by a Redis call, means to goodsd: a Trouble (an outage to wait
    out, or a refusal no retry can fix), or None when it is no Redis trouble at all (a reply
    such as WRONGTYPE or a failing script: a bug, not the server's state)."""
    detail = str(exc)
    if isinstance(exc, redis.ResponseError):
        code = reply_code(exc)
        kind = REPLY_CODES.get(code)
        if code in REDIRECTS:  # redis-py keeps only the rest ("3387 10.0.0.7:7001")
            note = PIPELINE_NOTE.match(detail)
            at = note.end() if note else 0
            detail = f"{detail[:at]}{code} {detail[at:]}"
        return Trouble(kind, detail, isinstance(exc, SlotFollowed)) if kind else None
    if (path := denied_socket(exc)) is not None:
        return Trouble(Kind.SOCKET_DENIED, path)
    if failed_handshake(exc):
        return Trouble(Kind.TLS_REFUSED, detail)
    for cls, kind in ERROR_CLASSES:
        if isinstance(exc, cls):
            return Trouble(kind, detail, kind is Kind.RESTARTED)
    return None


def described(exc: BaseException) -> str:
    """``exc``, raised by a Redis call, as a log line or an operator's message tells it: the
    kind of Redis trouble and what Redis said (``Trouble.summary``), or, for an error that is
    no Redis trouble, its type and message."""
    trouble = classify(exc)
    return trouble.summary if trouble is not None else f"{type(exc).__name__}: {exc}"


def denied_socket(exc: BaseException) -> str | None:
    """The path of the unix socket when ``exc`` is a connect refused by file permissions
    (EACCES, EPERM), else None."""
    if not isinstance(exc, redis.ConnectionError):
        return None
    cause = exc.__cause__ or exc.__context__
    if not isinstance(cause, OSError) or cause.errno not in (errno.EACCES, errno.EPERM):
        return None
    match = _SOCKET_PATH.search(str(exc))
    return match.group(1) if match else None


def failed_handshake(exc: BaseException) -> bool:
    """Whether ``exc`` is a connect that failed in its TLS handshake: a certificate the other
    side does not trust (or none where one is required), or no TLS at all on the other end.
    The config (the URL's ssl_* settings) or the server's certificates must change."""
    if not isinstance(exc, redis.ConnectionError):
        return False
    cause = exc.__cause__ or exc.__context__
    # a connection closed or cut mid-handshake (a server restarting) is an outage
    cut = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
    return isinstance(cause, ssl.SSLError) and not isinstance(cause, cut)


class AccessDenied(Exception):
    """Redis refused goodsd's credentials or permissions: fix the config, not the network."""


def refusal(trouble: Trouble) -> str:
    """The message of a refusal no retry can fix (a fatal kind)."""
    return f"redis refused access: {trouble.summary}"


def outage_of(exc: BaseException) -> Trouble:
    """The outage ``exc`` reports. Raises AccessDenied when it is a refusal that retrying
    cannot fix, and ``exc`` itself when it is no Redis trouble at all."""
    trouble = classify(exc)
    if trouble is None:
        raise exc
    if trouble.kind.fatal:
        raise AccessDenied(refusal(trouble)) from exc
    return trouble


def waiting_on(flags: int) -> Kind | None:
    """The kind of Redis trouble a child waits out, read from its scoreboard flags."""
    code = (flags >> REDIS_WAIT_SHIFT) & 0xFF
    return next((kind for kind in Kind if kind.code == code), None)


# -- waiting out an outage --------------------------------------------------------------------

# Backoff between attempts while Redis is away.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# Longest sleep between heartbeats while backing off.
BEAT_EVERY = 0.25
# While an outage lasts, at most one line per this many seconds says it still does.
OUTAGE_LOG_EVERY = 60.0


@dataclass
class Outage:
    """One process's Redis outage, if one is going on. It starts with the first failed call
    and ends only when a call proves Redis works again, however many retry loops it spans, so
    the delay between attempts keeps growing meanwhile. It decides what reaches the log: one
    line when it starts, at most one per OUTAGE_LOG_EVERY while it lasts, one when it ends."""

    trouble: Trouble | None = None  # the latest failure; None while there is no outage
    started: float = 0.0  # monotonic time of its first failure
    failures: int = 0  # failed calls so far
    logged_at: float = 0.0  # monotonic time of its last log line
    failed_calls: set[str] = field(default_factory=set)  # names of the calls that failed

    def failed(self, trouble: Trouble, now: float, what: str = "") -> float:
        """A call (named ``what``, see ``succeeded``) failed with ``trouble`` at ``now``.
        Returns the seconds to wait before the next attempt."""
        self.failures += 1
        self.failed_calls.add(what)
        if self.trouble is None:
            self.started = self.logged_at = now
            log.warning("redis %s: %s", _outage_word(trouble), trouble.summary)
        elif now - self.logged_at >= OUTAGE_LOG_EVERY:
            self.logged_at = now
            log.warning(
                "redis still %s after %.0fs (%d failed attempts): %s",
                _outage_word(trouble),
                now - self.started,
                self.failures,
                trouble.summary,
            )
        self.trouble = trouble
        if trouble.resolved:  # (one base delay all the same, never a tight loop)
            return BACKOFF_BASE
        return backoff_delay(self.failures, BACKOFF_BASE, BACKOFF_MAX)

    def succeeded(self, now: float, what: str = "") -> bool:
        """A call succeeded at ``now``; True when that ended an outage. An unnamed call is
        taken for a write, and ends it. A named call (``what``) may be only a read, which shows
        nothing while only writes are refused: it ends such an outage only if it failed in
        it itself (what was refused works now)."""
        trouble = self.trouble
        if trouble is None:
            return False
        if what and what not in self.failed_calls and trouble.kind.reads_work:
            return False
        log.info(
            "redis available again after %.1fs (was: %s; %d failed attempts)",
            now - self.started,
            trouble.kind.label,
            self.failures,
        )
        self.trouble, self.failures, self.failed_calls = None, 0, set()
        return True

    @property
    def flags(self) -> int:
        """The scoreboard flags that tell the master what this child waits out (0: nothing)."""
        return self.trouble.kind.code << REDIS_WAIT_SHIFT if self.trouble else 0


def _outage_word(trouble: Trouble) -> str:
    return "refuses access" if trouble.kind.fatal else "unavailable"


class GaveUp(Exception):
    """A stop was asked for while Redis was away; what the process holds stays in Redis, and
    its master requeues it once Redis returns."""


def until_done(
    step: Callable[[], T],
    *,
    beat: Callable[[], None],
    retry: Callable[[], T] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    patience: float = 0.0,
    outage: Outage | None = None,
    what: str = "",
) -> T:
    """Run one Redis step, retrying with capped exponential backoff while Redis is away
    (``retry`` instead of ``step`` after a failure, when given). ``beat`` keeps the child's
    heartbeat fresh, so the master knows this wait is not a hang.

    ``outage`` is the process's own (a fresh one when not given): an outage spans calls, and
    ends only when a ``step`` succeeds (see ``Outage.succeeded``; ``what`` names a step that
    may be only a read). An answer to ``retry`` only reads back what a lost reply did, and
    reads still work where writes are refused (a read-only replica), so the delay goes on
    growing after it.

    Once ``stop_requested()`` turns true during an outage, the step is tried again at once and
    then for up to ``patience`` more seconds (a step whose work would otherwise be redone, such
    as recording finished items, is worth the wait); then GaveUp is raised. Raises
    AccessDenied when Redis refuses goodsd (see Kind.fatal); an error that is no Redis trouble
    propagates."""
    outage = outage if outage is not None else Outage()
    failed = False
    give_up_at: float | None = None  # monotonic time, once a stop was asked for
    while True:
        try:
            result = (retry if failed and retry else step)()
        except Exception as exc:
            delay = outage.failed(outage_of(exc), time.monotonic(), what)
            failed = True
            deadline = time.monotonic() + delay
            while (left := deadline - time.monotonic()) > 0:
                if stop_requested():
                    now = time.monotonic()
                    if give_up_at is None:
                        give_up_at = now + patience
                        _say_stop_waits(patience)
                        break  # one more try at once: Redis may be back already
                    if now >= give_up_at:
                        raise GaveUp("stop requested while redis is unavailable") from exc
                    left = min(left, give_up_at - now)
                beat()
                time.sleep(min(left, BEAT_EVERY))
            continue
        if not (failed and retry) and outage.succeeded(time.monotonic(), what):
            beat()  # the master sees at once that this process no longer waits
        return result


def _say_stop_waits(patience: float) -> None:
    if patience > 0:
        log.warning(
            "stop requested while redis is unavailable: trying for up to %.0fs more to record "
            "what is done",
            patience,
        )
    else:
        log.warning("stop requested while redis is unavailable: one more try")


# -- what goodsd needs Redis to allow ---------------------------------------------------------

# Every command goodsd's master, consumers and producers send for a queue (directly, in
# pipelines and transactions, and from the Lua scripts in goodsd/store/scripts), each with the
# keys it is sent for: {name} is a key of goodsd.store.QueueKeys; per-process keys
# ({inflight}, {lease}, {settled}, {pushed}) are those of one consumer id. Other arguments only
# make the count right. The operator commands (goodsd dead, push, status) are not here: they
# report their own refusals.
NEEDED_COMMANDS: tuple[str, ...] = (
    # sent directly
    "PING",
    "SCRIPT LOAD return",
    "EVALSHA 0000000000000000000000000000000000000000 12 {ready} {inflight} {lease} {retry} "
    "{stats} {consumers} {attempts} {dead} {settled} {pushed} {producer_lock} {producer_wake}",
    "BLMOVE {ready} {inflight} RIGHT LEFT 1",
    "BLPOP {producer_wake} 1",
    "HSET {consumers} f v",
    "HSET {producers} f v",
    "HSET {masters} f v",
    "HGETALL {consumers}",
    "HGETALL {producers}",
    "HGETALL {masters}",
    "HGETALL {stats}",
    "HKEYS {consumers}",
    "HDEL {consumers} f",
    "HDEL {producers} f",
    "HDEL {masters} f",
    "DEL {lease}",
    "DEL {settled}",
    "DEL {pushed}",
    "LLEN {ready}",
    "LLEN {inflight}",
    "LLEN {dead}",
    "ZCARD {retry}",
    "SET {lease} v PX 1",
    # called from the Lua scripts
    "TIME",
    "GET {settled}",
    "GET {producer_lock}",
    "GET {pushed}",
    "SET {settled} v PX 1",
    "SET {pushed} v PX 1",
    "SET {producer_lock} v NX PX 1",
    "DEL {inflight}",
    "DEL {producer_lock}",
    "DEL {producer_wake}",
    "EXISTS {lease}",
    "PEXPIRE {settled} 1",
    "PEXPIRE {pushed} 1",
    "PEXPIRE {producer_lock} 1",
    "PEXPIRE {producer_wake} 1",
    "PTTL {producer_lock}",
    "HEXISTS {attempts} f",
    "HINCRBY {attempts} f 1",
    "HINCRBY {stats} f 1",
    "HSETNX {attempts} f v",
    "HSETNX {consumers} f v",
    "HDEL {attempts} f",
    "LRANGE {inflight} 0 1",
    "LPOS {inflight} v",
    "LREM {inflight} -1 v",
    "LPUSH {inflight} v",
    "LPUSH {dead} v",
    "LPUSH {ready} v",
    "RPUSH {ready} v",
    "RPUSH {producer_wake} v",
    "RPOP {ready} 1",
    "ZADD {retry} 1 v",
    "ZRANGEBYSCORE {retry} 0 1 LIMIT 0 1",
    "ZREM {retry} v",
)
# Commands goodsd sends only with ``redis.wait_replicas`` set.
NEEDED_FOR_WAITING: tuple[str, ...] = ("WAIT 0 0",)
# The consumer id in the per-process keys of the check (any id will do: nothing runs).
CHECK_ID = "access-check"


class Probe(NamedTuple):
    """One command of NEEDED_COMMANDS for one queue: its name, the arguments to send (name
    included) and which of them are keys."""

    name: str
    args: tuple[str, ...]
    keys: tuple[str, ...]


def needed_commands(queue: Upkeep, *, waits: bool = False) -> list[Probe]:
    """NEEDED_COMMANDS with the keys of ``queue`` (and NEEDED_FOR_WAITING with ``waits``:
    ``redis.wait_replicas`` is set)."""
    k = queue.keys
    keys = {
        "ready": k.ready,
        "consumers": k.consumers,
        "masters": k.masters,
        "producers": k.producers,
        "attempts": k.attempts,
        "retry": k.retry,
        "dead": k.dead,
        "stats": k.stats,
        "producer_lock": k.producer_lock,
        "producer_wake": k.producer_wake,
        "inflight": k.inflight(CHECK_ID),
        "lease": k.lease(CHECK_ID),
        "settled": k.settled(CHECK_ID),
        "pushed": k.pushed(CHECK_ID),
    }
    probes = []
    for command in (*NEEDED_COMMANDS, *(NEEDED_FOR_WAITING if waits else ())):
        words = command.split()
        args = tuple(keys[w[1:-1]] if w.startswith("{") else w for w in words)
        named = tuple(keys[w[1:-1]] for w in words if w.startswith("{"))
        subcommand = words[0] in ("SCRIPT", "CLIENT")
        probes.append(Probe(" ".join(words[: 2 if subcommand else 1]), args, named))
    return probes


def refused_commands(queue: Upkeep, *, waits: bool = False) -> list[str]:
    """The commands goodsd needs that Redis's ACL refuses to this client's user, as "BLMOVE"
    (the command) or "HINCRBY on <key>" (its keys); [] when all are allowed.

    Nothing runs: each command is queued in a transaction (MULTI) that is then thrown away.
    Redis checks the ACL (commands and keys) when it queues a command, before anything else
    (memory, a read-only replica), so any other error means "allowed". This works on Redis 6.2
    and 7 and needs no admin permission, unlike ACL DRYRUN (7.0 and later, @admin). EXEC
    cannot be queued: it is sent alone first, outside a transaction, where Redis answers "EXEC
    without MULTI" once the ACL allows it. Raises redis-py's errors when the check cannot be
    made (e.g. Redis is unreachable, or refuses a command redis-py sends as it connects)."""
    pool = queue.client.connection_pool
    connection = pool.get_connection()
    refused = set()
    try:
        connection.send_command("EXEC")
        try:
            connection.read_response()
        except redis.ResponseError as exc:
            if _acl_refused(exc):
                refused.add("EXEC")
        connection.send_command("MULTI")
        try:
            connection.read_response()
        except redis.ResponseError as exc:
            if _acl_refused(exc):
                return sorted({*refused, "MULTI"})
            raise  # no transaction: the commands would run, so none is sent
        probes = needed_commands(queue, waits=waits)
        connection.send_packed_command(connection.pack_commands([p.args for p in probes]))
        for probe in probes:
            try:
                connection.read_response()
            except redis.ResponseError as exc:
                if _acl_refused(exc):
                    keys = " ".join(probe.keys)
                    on_keys = "to access" in str(exc)  # else "... to run the 'x' command"
                    refused.add(f"{probe.name} on {keys}" if on_keys else probe.name)
        return sorted(refused)
    finally:
        connection.disconnect()  # the transaction goes with the connection, whatever its state
        pool.release(connection)


def _acl_refused(exc: redis.ResponseError) -> bool:
    trouble = classify(exc)
    return trouble is not None and trouble.kind is Kind.NO_PERMISSION
