"""Redis clients built from config after fork (no socket is ever shared between processes),
and the one retry loop every child uses while Redis is away."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from goodsd.children import backoff_delay
from goodsd.config import RedisConfig

log = logging.getLogger("goodsd.redis")
T = TypeVar("T")

# Name of the systemd credential (LoadCredential=redis-password:...) read when present.
CREDENTIAL_NAME = "redis-password"
# redis-py errors that mean "the server is away for now": back off and try again.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


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
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise PasswordError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PasswordError(f"{what} {path} is not UTF-8 text") from None


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for a command goodsd starts: ``environ`` less SECRET_ENVIRONMENT."""
    return {key: value for key, value in environ.items() if key not in SECRET_ENVIRONMENT}


def connect(cfg: RedisConfig, name: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A client that fails fast on a dead server (timeouts) instead of hanging a worker.
    Blocking calls must wait less than ``socket_timeout``."""
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
    return redis.Redis.from_url(cfg.url, **kwargs)


# redis-py makes AuthenticationError a ConnectionError, but no retry can fix a refused password
# or a missing ACL permission: these stop the process with EX_CONFIG instead.
FATAL_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.NoPermissionError,
)
# Backoff between attempts while Redis is away.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# Longest sleep between heartbeats while backing off.
BEAT_EVERY = 0.25


class AccessDenied(Exception):
    """Redis refused goodsd's credentials or permissions: fix the config, not the network."""


class GaveUp(Exception):
    """A stop was asked for while Redis was away; what the process holds stays in Redis, and
    its master gives it back once Redis returns."""


def until_done(
    step: Callable[[], T],
    *,
    beat: Callable[[], None],
    retry: Callable[[], T] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    patience: float = 0.0,
) -> T:
    """Run one Redis step, retrying with capped exponential backoff while Redis is away
    (``retry`` instead of ``step`` after a failure, when given). ``beat`` keeps the child's
    heartbeat fresh, so the master knows this wait is not a hang.

    Once ``stop_requested()`` turns true during an outage, the step is tried again at once and
    then for up to ``patience`` more seconds (a step whose work would otherwise be redone, such
    as recording finished items, is worth the wait); then GaveUp is raised. Raises
    AccessDenied on a refused login."""
    failures = 0
    give_up_at: float | None = None  # monotonic time, once a stop was asked for
    while True:
        try:
            result = (retry if failures and retry else step)()
        except FATAL_ERRORS as exc:
            raise AccessDenied(f"redis refused access: {exc}") from exc
        except TRANSIENT_ERRORS as exc:
            failures += 1
            delay = backoff_delay(failures, BACKOFF_BASE, BACKOFF_MAX)
            if failures == 1 or delay >= BACKOFF_MAX:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
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
        if failures:
            log.info("redis reachable again after %d failed attempt(s)", failures)
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
