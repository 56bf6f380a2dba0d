"""Fixtures: one private redis-server per session (unix socket, TCP off), flushed per test;
the real daemon; a real NOTIFY_SOCKET."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support import Daemon, NotifyListener, write_config

from goodsd.localredis import LocalRedis
from goodsd.redisurl import MAX_NODES


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def r(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    if redis_server.pid is None:  # a test stopped it and failed before restarting it
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def make_config(tmp_path: Path, redis_server: LocalRedis) -> Callable[..., Path]:
    """make_config(consumers={...}, ...) -> path of a config for the session's Redis."""

    def make(**sections: object) -> Path:
        return write_config(tmp_path, redis_server.url, **sections)

    return make


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path)
    yield listener
    listener.close()


@pytest.fixture
def start_daemon(tmp_path: Path, redis_server: LocalRedis) -> Iterator[Callable[..., Daemon]]:
    """start_daemon(config, notify=None, env=None, args=()) -> a running Daemon; every daemon
    started is torn down (TERM, then KILL of its process group) after the test."""
    started: list[Daemon] = []

    def start(config: Path, **kwargs: object) -> Daemon:
        env = {"TEST_REDIS_URL": redis_server.url, **(kwargs.pop("env", None) or {})}
        daemon = Daemon(tmp_path, config, env=env, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill_group()


@pytest.fixture
def silent_ports() -> Iterator[list[int]]:
    """As many TCP ports on 127.0.0.1 as a URL may name, each taking connections (the kernel
    completes them) and never answering, as a stopped or cut-off Redis would."""
    listeners = []
    try:
        for _ in range(MAX_NODES):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            listeners.append(listener)
        yield [listener.getsockname()[1] for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()
