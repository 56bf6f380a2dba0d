"""Builds Redis clients from config, after fork, so no socket is ever shared between processes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import redis

from goodsd.config import RedisConfig

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


def password(cfg: RedisConfig, environ: Mapping[str, str]) -> str | None:
    """The password from, in order: ``redis.password_file``, the systemd credential,
    ``$GOODSD_REDIS_PASSWORD``; None when none is set (or the URL carries one)."""
    if cfg.password_file:
        with open(cfg.password_file, encoding="utf-8") as handle:
            return handle.read().strip()
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = os.path.join(credentials, CREDENTIAL_NAME)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
    return environ.get("GOODSD_REDIS_PASSWORD") or None


def connect(cfg: RedisConfig, name: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A client that fails fast on a dead server (timeouts) instead of hanging a worker.
    Blocking calls must wait less than ``socket_timeout``."""
    kwargs: dict[str, object] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "client_name": name,
        "health_check_interval": 30,
    }
    secret = password(cfg, os.environ)
    if secret is not None:
        kwargs["password"] = secret
    return redis.Redis.from_url(cfg.url, **kwargs)
