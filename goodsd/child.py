"""What a child does after the fork, before its role's loop: the code that runs in the
consumer and producer processes, kept out of the master (which never runs it).

In order: die with the master, take a title and the logging of a child, send what print()
says to the log, make the Redis client (reading the password) and drop the password from the
environment before any user code runs, then run the role's loop; the exit code says how it
ended (goodsd.exits)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import redis

from goodsd import codestamp, hostinfo, logs, output, proctitle
from goodsd import consumer as consumer_mod
from goodsd import producer as producer_mod
from goodsd.children import Child, Role
from goodsd.concurrency import ConcurrentConsumer
from goodsd.config import Config
from goodsd.consumer import Consumer
from goodsd.exits import EXIT_CONFIG, EXIT_FAILURE
from goodsd.redisconn import AccessDenied, PasswordError, connect
from goodsd.runner import HandlerLoadError, SetupFailed
from goodsd.scoreboard import Scoreboard
from goodsd.store import ProducerStore, RedisConsumerStore


def consumer_identity(pid: int, token: str) -> str:
    """The id a child registers under in Redis: host, pid and a random token."""
    return f"{hostinfo.hostname()}-{pid}-{token}"


def die_with_parent(master_pid: int) -> None:
    """SIGKILL this child when the master dies, however it dies; the master's successor (or
    any master, once the lease runs out) requeues what it held."""
    hostinfo.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != master_pid:
        os._exit(EXIT_FAILURE)


def consumer_main(
    config: Config,
    identity: str,
    board: Scoreboard,
    ready: Callable[[], None],
    client: redis.Redis,
) -> int:
    store = RedisConsumerStore(client, config.queue, config.redis.wait_replicas)
    # One item at a time: the plain loop, with no thread and no event loop running.
    kind = Consumer if config.consumers.concurrency == 1 else ConcurrentConsumer
    worker = kind(config, identity, board, ready, store, time.monotonic)
    return consumer_mod.run(worker)


def producer_main(
    config: Config,
    identity: str,
    board: Scoreboard,
    ready: Callable[[], None],
    client: redis.Redis,
) -> int:
    store = ProducerStore(client, config.queue, config.redis.wait_replicas)
    worker = producer_mod.Producer(config, identity, board, ready, store, time.monotonic)
    return producer_mod.run(worker)


# role -> the function a child of that role runs after fork; returns its exit code
ROLE_MAIN: dict[Role, Callable[[Config, str, Scoreboard, Callable[[], None], redis.Redis], int]] = {
    Role.CONSUMER: consumer_main,
    Role.PRODUCER: producer_main,
}


def child_main(
    config: Config, child: Child, events_w: int, token: str, master_pid: int, log_target: str
) -> int:
    """Everything a child does after fork; returns its exit code."""
    die_with_parent(master_pid)
    proctitle.set_title(proctitle.child_title(child.role, child.index, config.queue))
    logs.setup(
        config.logging.level,
        config.logging.format,
        f"{child.role} {child.index} pid {os.getpid()}",
        target=log_target,
    )
    output.capture_stdout()
    child_log = logging.getLogger(f"goodsd.{child.role}")
    before = set(sys.modules)  # what the master had loaded: everything else is this child's

    def send_event(event: str) -> None:
        os.write(events_w, event.encode() + b"\n")

    def ready() -> None:
        send_event("code " + codestamp.encode(codestamp.loaded_since(before)))
        send_event("ready")

    assert child.board is not None
    try:
        # The client first: it reads the password; then the password leaves the environment,
        # before any user code runs, so nothing a handler starts inherits it.
        client = connect(config.redis, f"goodsd-{child.role}-{os.getpid()}", queue=config.queue)
        os.environ.pop("GOODSD_REDIS_PASSWORD", None)
        return ROLE_MAIN[child.role](
            config, consumer_identity(os.getpid(), token), child.board, ready, client
        )
    except (HandlerLoadError, AccessDenied, PasswordError) as exc:
        child_log.error("%s", exc)
        what = "handler cannot be loaded" if isinstance(exc, HandlerLoadError) else "cannot start"
        with contextlib.suppress(OSError):
            send_event(f"error {what}: " + " ".join(str(exc).split()))
        return EXIT_CONFIG
    except SetupFailed:
        return EXIT_FAILURE  # logged already, with the user's traceback
    except Exception:
        child_log.exception("%s crashed", child.role)
        return EXIT_FAILURE
