"""What a Redis error means to goodsd: one table, checked against the exceptions redis-py
really raises for every reply code it may meet, however redis-py or Lua wrapped the reply."""

from __future__ import annotations

import errno
import ssl

import pytest
import redis
from redis._parsers.base import BaseParser
from redis.sentinel import MasterNotFoundError

from goodsd.clusterslot import NotACluster, SlotNotServed
from goodsd.redisconn import REPLY_CODES, Kind, Outage, Trouble, classify, waiting_on
from goodsd.scoreboard import FLAG_PAUSED, FLAG_STANDBY
from goodsd.sentinels import NotASentinel, leaves_primary
from goodsd.store.scripts import ScriptsReloaded

# Each reply code with a reply Redis really sends for it.
REPLIES = {
    "OOM": "OOM command not allowed when used memory > 'maxmemory'.",
    "READONLY": "READONLY You can't write against a read only replica.",
    "NOREPLICAS": "NOREPLICAS Not enough good replicas to write.",
    "MASTERDOWN": "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'",
    "LOADING": "LOADING Redis is loading the dataset in memory",
    "BUSY": "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN",
    "TRYAGAIN": "TRYAGAIN Multiple keys request during rehashing of slot",
    "NOPERM": "NOPERM this user has no permissions to run the 'blmove' command",
    "WRONGPASS": "WRONGPASS invalid username-password pair or user is disabled.",
    "NOAUTH": "NOAUTH Authentication required.",
    "UNBLOCKED": "UNBLOCKED force unblock from blocking operation, instance state changed",
    "MOVED": "MOVED 5798 127.0.0.1:7002",
    "ASK": "ASK 5798 127.0.0.1:7002",
    "CLUSTERDOWN": "CLUSTERDOWN The cluster is down",
}
# Codes Redis sends instead of running a command, never from inside a script.
REDIRECTS = {"MOVED", "ASK"}


def parsed(reply: str) -> redis.RedisError:
    """The exception redis-py raises for an error reply."""
    return BaseParser.parse_error(reply)


def in_pipeline(exc: redis.RedisError) -> redis.RedisError:
    """The same error as redis-py reports it for a command of a pipeline."""
    exc.args = (f"Command # 2 (HSET h a 1) of pipeline caused error: {exc.args[0]}",)
    return exc


def in_script_redis7(reply: str) -> redis.RedisError:
    """Redis 7: an error raised by a command inside a script keeps its code."""
    return parsed(f"{reply} script: ad9e921dc2065bd7cd2aa87fd51898f0c7ad4381, on @user_script:1.")


def in_script_redis62(reply: str) -> redis.RedisError:
    """Redis 6.2: an error inside a script comes wrapped in an ERR reply."""
    return parsed(
        "ERR Error running script (call to f_ad9e921dc2065bd7cd2aa87fd51898f0c7ad4381): "
        f"@user_script:12: @user_script: 12: -{reply} "
    )


def aborting_exec(reply: str) -> redis.RedisError:
    """Redis 7: a refusal of EXEC itself comes wrapped in an EXECABORT reply."""
    return parsed(f"EXECABORT Transaction discarded because of: {reply}")


WRAPPINGS = {
    "as sent": parsed,
    "in a pipeline": lambda reply: in_pipeline(parsed(reply)),
    "in a script (redis 7)": in_script_redis7,
    "in a script (redis 6.2)": in_script_redis62,
    "aborting EXEC": aborting_exec,
}


def test_every_reply_code_has_a_real_reply_here():
    assert set(REPLIES) == set(REPLY_CODES)


@pytest.mark.parametrize(
    ("code", "wrapping"),
    [
        (code, wrapping)
        for code in sorted(REPLY_CODES)
        for wrapping in WRAPPINGS
        if not (code in REDIRECTS and wrapping.startswith(("in a script", "aborting")))
    ],
)
def test_a_reply_code_decides_however_it_is_wrapped(code: str, wrapping: str):
    # Given the error redis-py raises for a reply with this code, wrapped as it may come
    exc = WRAPPINGS[wrapping](REPLIES[code])
    # Then its kind is the code's
    trouble = classify(exc)
    assert trouble is not None, (type(exc), str(exc))
    assert trouble.kind is REPLY_CODES[code]


@pytest.mark.parametrize(
    "reply",
    [
        # Redis 7: a script calling a command its user may not run
        "ERR The user executing the script can't run this command or subcommand script: "
        "ad9e921dc2065bd7cd2aa87fd51898f0c7ad4381, on @user_script:1.",
        # Redis 6.2: the same
        "ERR Error running script (call to f_ad9e921dc2065bd7cd2aa87fd51898f0c7ad4381): "
        "@user_script:1: @user_script: 1: The user executing the script can't run this command "
        "or subcommand ",
    ],
)
def test_an_acl_refusal_inside_a_script_is_a_refusal(reply: str):
    trouble = classify(parsed(reply))
    assert trouble is not None and trouble.kind is Kind.NO_PERMISSION
    assert trouble.kind.fatal


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR unknown command 'BLMOVE', with args beginning with: ",
        "NOSCRIPT No matching script. Please use EVAL.",
        "ERR Error running script (call to f_ad9e): @user_script:3: user_script:3: attempt to "
        "compare nil with number",
        "ERR value is not an integer or out of range",
    ],
)
def test_other_replies_are_no_redis_trouble(reply: str):
    # Given a reply that says something is wrong with the request, not with the server
    # Then it is left to propagate (a bug shows as one)
    assert classify(parsed(reply)) is None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (redis.ConnectionError("Error 111 connecting to localhost:6379. Connection refused."),
         Kind.UNREACHABLE),
        (redis.TimeoutError("Timeout reading from socket"), Kind.UNREACHABLE),
        (ConnectionResetError(104, "Connection reset by peer"), Kind.UNREACHABLE),
        (redis.ConnectionError("max number of clients reached"), Kind.UNREACHABLE),
        (redis.AuthenticationError("invalid password"), Kind.LOGIN_REFUSED),
        (redis.exceptions.AuthorizationError("denied"), Kind.LOGIN_REFUSED),
        (redis.exceptions.BusyLoadingError("Redis is loading"), Kind.LOADING),
        (ScriptsReloaded("redis had forgotten goodsd's scripts; loaded again"), Kind.RESTARTED),
        (NotACluster("127.0.0.1:6379 is not a cluster node: use a redis:// URL"),
         Kind.WRONG_FORM),
        (NotASentinel("no host of the URL answered as a sentinel"), Kind.WRONG_FORM),
        (SlotNotServed("no node serves slot 5798"), Kind.UNREACHABLE),
        (MasterNotFoundError("no primary 'goods' found"), Kind.UNREACHABLE),
    ],
)  # fmt: skip
def test_errors_that_are_not_replies_by_class(exc: BaseException, kind: Kind):
    trouble = classify(exc)
    assert trouble is not None and trouble.kind is kind


def refused_connect(number: int, target: str) -> redis.ConnectionError:
    """What redis-py raises when connect() fails with ``number`` (errno) on ``target``."""
    try:
        try:
            raise OSError(number, errno.errorcode[number])
        except OSError as exc:  # redis-py leaves the OSError as the context only, like this:
            raise redis.ConnectionError(  # noqa: B904
                f"Error {number} connecting to {target}. {exc.strerror}."
            )
    except redis.ConnectionError as exc:
        return exc


@pytest.mark.parametrize("number", [errno.EACCES, errno.EPERM])
def test_a_unix_socket_goodsd_may_not_open_is_a_refusal_naming_it(number: int):
    trouble = classify(refused_connect(number, "/run/redis/redis-server.sock"))
    assert trouble == Trouble(Kind.SOCKET_DENIED, "/run/redis/redis-server.sock")
    assert trouble.kind.fatal
    assert trouble.summary == (
        "permission denied on /run/redis/redis-server.sock: add the service user to the "
        "socket's group"
    )


@pytest.mark.parametrize(
    ("number", "target"),
    [
        (errno.ENOENT, "/run/redis/redis-server.sock"),  # not there yet: Redis not started
        (errno.ECONNREFUSED, "/run/redis/redis-server.sock"),
        (errno.EACCES, "10.0.0.5:6379"),  # TCP: a firewall's doing, not a file mode
    ],
)
def test_other_failed_connects_are_outages(number: int, target: str):
    trouble = classify(refused_connect(number, target))
    assert trouble is not None and trouble.kind is Kind.UNREACHABLE


def test_only_refusals_are_fatal_and_only_write_refusals_leave_reads_working():
    fatal = {kind for kind in Kind if kind.fatal}
    assert fatal == {
        Kind.LOGIN_REFUSED,
        Kind.NO_PERMISSION,
        Kind.SOCKET_DENIED,
        Kind.WRONG_FORM,
        Kind.TLS_REFUSED,
    }
    reads_work = {kind for kind in Kind if kind.reads_work}
    assert reads_work == {Kind.OUT_OF_MEMORY, Kind.READ_ONLY, Kind.NO_REPLICAS}


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("state", [0, FLAG_PAUSED, FLAG_STANDBY])
def test_the_kind_a_child_waits_out_survives_its_scoreboard_flags(kind: Kind, state: int):
    outage = Outage(trouble=Trouble(kind, "detail"))
    flags = state | outage.flags
    assert waiting_on(flags) is kind
    assert flags & 0xFF == state
    assert waiting_on(state) is None


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        (parsed("MOVED 5798 127.0.0.1:7002"), "MOVED 5798 127.0.0.1:7002"),
        (
            in_pipeline(parsed("ASK 5798 127.0.0.1:7002")),
            "Command # 2 (HSET h a 1) of pipeline caused error: ASK 5798 127.0.0.1:7002",
        ),
    ],
)
def test_a_redirect_is_told_with_its_code(exc: redis.RedisError, detail: str):
    # Given a redirect, of which redis-py keeps only the slot and the address
    # Then what goodsd says of it names the redirect too
    trouble = classify(exc)
    assert trouble is not None and trouble.detail == detail


def failed_connect(cause: BaseException) -> redis.ConnectionError:
    """What redis-py raises when a connect (or its first read) fails with ``cause``."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to 10.0.0.5:6380. {exc}") from None
    except redis.ConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    "cause",
    [
        ssl.SSLCertVerificationError(1, "certificate verify failed: unable to get local issuer"),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate"),
    ],
)
def test_a_tls_handshake_refused_is_a_refusal(cause: BaseException):
    # Given a connect whose TLS handshake failed: a certificate not trusted, none given, or no
    # TLS on the other end
    trouble = classify(failed_connect(cause))
    # Then it is a refusal no retry can fix
    assert trouble is not None and trouble.kind is Kind.TLS_REFUSED and trouble.kind.fatal


@pytest.mark.parametrize(
    "cause",
    [
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_a_tls_connection_cut_is_an_outage(cause: BaseException):
    trouble = classify(failed_connect(cause))
    assert trouble is not None and trouble.kind is Kind.UNREACHABLE


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
@pytest.mark.parametrize("code", sorted(REPLY_CODES.keys() - REDIRECTS))
def test_a_sentinel_connection_leaves_on_what_classifies_as_a_demoted_primary(
    code: str, wrapping: str
):
    # Given a reply as it may come (Redis 6.2 wraps a READONLY raised inside a script in a
    # plain ERR reply: "ERR Error running script (call to f_...): ... -READONLY ...")
    exc = WRAPPINGS[wrapping](REPLIES[code])
    trouble = classify(exc)
    assert trouble is not None
    # Then the connection asks the sentinels again exactly when goodsd calls it a read-only
    # replica or too few replicas, however the reply was wrapped
    demoted = trouble.kind in (Kind.READ_ONLY, Kind.NO_REPLICAS)
    assert leaves_primary(exc) is demoted, (code, wrapping)
