"""Prometheus text at ``/metrics`` for one master (``metrics.listen``), from the optional
``prometheus-client`` package (``pip install goodsd[metrics]``).

The master stays one loop: on each status tick it builds an immutable `Snapshot` and swaps it
in. A server thread answers scrapes with the current snapshot's text, rendered at most once
per snapshot; it never touches Redis or the master's state, and the master never waits for it.

The thread shares the master's file descriptors and GIL, so it is bounded on every side: one
thread and one selector for all clients (no thread per connection); at most MAX_CONNECTIONS
open at once, a newcomer above that dropping the oldest (so idle clients cannot lock out a
scrape); each connection closed DEADLINE seconds after it was accepted, answered or not; a
request of at most MAX_REQUEST bytes; never taking the last FD_RESERVE descriptors the master
needs to fork and to reach Redis; and with the descriptors all taken, accept() paused for
ACCEPT_BACKOFF instead of retried in a loop.

Queue-wide figures (``goodsd_queue_*``) come from Redis and are the same on every master;
the rest describe this master and its children.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus

from goodsd.config import Config, ConfigError, parse_listen
from goodsd.store import Overview

INSTALL_HINT = "needs `pip install goodsd[metrics]` (prometheus-client is not installed)"
DEADLINE = 5.0  # seconds from accept() to the end of the answer; then the connection is closed
MAX_CONNECTIONS = 16  # open at once; one more makes the server drop the oldest
MAX_REQUEST = 8192  # bytes of request line and headers; a longer request gets 431
FD_RESERVE = 8  # descriptors the server leaves free for the master (a fork takes a pipe)
ACCEPT_BACKOFF = 0.5  # seconds without accept() after it failed for want of descriptors
BACKLOG = 64  # connections the kernel holds for the server while it is not accepting
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")

log = logging.getLogger("goodsd.metrics")

# Held while the server thread opens or closes a connection and records it, and by every fork
# of this process: a child thus inherits exactly the connections the server knows of, and
# close_in_child closes them all. One left open in a child would keep its client from ever
# seeing the end of the answer.
_FORK_LOCK = threading.Lock()
os.register_at_fork(
    before=_FORK_LOCK.acquire,
    after_in_parent=_FORK_LOCK.release,
    after_in_child=_FORK_LOCK.release,
)


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows; built by the master, never changed afterwards."""

    queue: str
    overview: Overview | None  # None when Redis could not be read at the last tick
    children: tuple[tuple[str, str, int], ...]  # (role, state, how many)
    restarts: int  # children restarted since the master started
    producer_paused: bool  # a producer of this master waits for the backlog to drain
    reload_ok: bool  # the last reload (if any) was put in force


def require_client(config: Config) -> None:
    """A config error, at check, start and reload, when metrics are on but cannot be served."""
    if config.metrics.listen is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(config.path, None, "metrics.listen", INSTALL_HINT) from None


def collect(snapshot: Snapshot | None) -> Iterator[object]:
    """The metric families of a snapshot, in prometheus-client's types."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if snapshot is None:
        return
    labels = ["queue"]
    queue = [snapshot.queue]
    up = GaugeMetricFamily(
        "goodsd_redis_up", "1 if the master could read the queue at its last tick", labels=labels
    )
    up.add_metric(queue, 1 if snapshot.overview else 0)
    yield up
    view = snapshot.overview
    if view is not None:
        for name, value, text in (
            ("backlog", view.backlog, "items in the ready list"),
            ("in_flight", view.in_flight, "items claimed by consumers, not yet settled"),
            ("retry_waiting", view.retry_waiting, "failed items waiting for their retry"),
            ("dead", view.dead, "records in the dead list"),
        ):
            gauge = GaugeMetricFamily(f"goodsd_queue_{name}", text, labels=labels)
            gauge.add_metric(queue, value)
            yield gauge
        for field, value in view.stats.items():
            counter = CounterMetricFamily(
                f"goodsd_queue_items_{field}", f"items {field}, fleet-wide", labels=labels
            )
            counter.add_metric(queue, value)
            yield counter
    children = GaugeMetricFamily(
        "goodsd_children", "this master's children by role and state", labels=["role", "state"]
    )
    for role, state, count in snapshot.children:
        children.add_metric([role, state], count)
    yield children
    restarts = CounterMetricFamily(
        "goodsd_child_restarts", "children this master restarted after they exited"
    )
    restarts.add_metric([], snapshot.restarts)
    yield restarts
    paused = GaugeMetricFamily(
        "goodsd_producer_paused", "1 while a producer of this master waits for the backlog"
    )
    paused.add_metric([], 1 if snapshot.producer_paused else 0)
    yield paused
    reload_ok = GaugeMetricFamily(
        "goodsd_last_reload_success", "0 if the last reload was rejected, else 1"
    )
    reload_ok.add_metric([], 1 if snapshot.reload_ok else 0)
    yield reload_ok


class Exporter:
    """The HTTP side: binds at construction (a failure is a config error), serves from a
    thread of its own, shows the snapshot last published."""

    def __init__(self, config: Config) -> None:
        require_client(config)
        from prometheus_client import CollectorRegistry

        assert config.metrics.listen is not None
        self.snapshot: Snapshot | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.listen = ""  # the address served, "" when not serving
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self.rendered: tuple[Snapshot | None, bytes] | None = None  # the text of a snapshot
        self._serve(config.path, config.metrics.listen)

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot  # one reference swap: the thread sees old or new, whole

    def move(self, config: Config) -> None:
        """Serve at the reloaded config's address instead. On failure the old address is
        served again and ConfigError raised, so a rejected reload changes nothing."""
        old = self.listen
        assert config.metrics.listen is not None
        self.stop()  # first: the new address may overlap the old one (same port, other host)
        try:
            self._serve(config.path, config.metrics.listen)
        except ConfigError:
            with contextlib.suppress(ConfigError):
                self._serve(config.path, old)
            raise

    def stop(self) -> None:
        """Close the listening socket and every connection; returns once the thread ended."""
        if self.server is not None and self.thread is not None:
            self.server.wake()
            self.thread.join()
            self.server.close()
        self.server, self.thread, self.listen = None, None, ""

    def close_in_child(self) -> None:
        """In a forked child: close every descriptor the server holds (its thread did not come
        along), so the port is free the moment the master lets go of it and every client sees
        its connection end when the master closes it."""
        if self.server is not None:
            self.server.forget_in_child()

    def render(self) -> bytes:
        """The current snapshot as Prometheus text; rendered once per snapshot (called from
        the server thread only)."""
        from prometheus_client import generate_latest

        snapshot = self.snapshot
        if self.rendered is None or self.rendered[0] is not snapshot:
            self.rendered = (snapshot, generate_latest(self.registry))
        return self.rendered[1]

    def _serve(self, path: str, listen: str) -> None:
        host, port = parse_listen(listen)
        try:
            listener = _listening_socket(host, port)
        except OSError as exc:
            reason = f"cannot listen on {listen}: {exc.strerror or exc}"
            raise ConfigError(path, None, "metrics.listen", reason) from None
        server = _Server(listener, self.render)
        thread = threading.Thread(target=server.run, name="goodsd-metrics", daemon=True)
        thread.start()
        self.server, self.thread, self.listen = server, thread, listen


def reconfigure(exporter: Exporter | None, new: Config) -> Exporter | None:
    """The exporter for a reloaded config; raises ConfigError (the running exporter still
    serving as before) when the new setting cannot be served."""
    listen = new.metrics.listen
    if exporter is None:
        return Exporter(new) if listen else None
    if listen is None:
        exporter.stop()
        return None
    if listen != exporter.listen:
        exporter.move(new)
    return exporter


class _Collector:
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[object]:
        return collect(self.exporter.snapshot)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on (host, port); OSError if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _free_fds() -> int:
    """How many more descriptors this process may open: its soft RLIMIT_NOFILE less those
    open. 0 when not even /proc/self/fd can be opened; FD_RESERVE when /proc is missing."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    try:
        open_now = len(os.listdir("/proc/self/fd")) - 1  # less the one that lists them
    except OSError as exc:
        return 0 if exc.errno in OUT_OF_FDS else FD_RESERVE
    return soft - open_now


def _reply(
    status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> bytes:
    """A whole HTTP/1.1 answer after which the server closes the connection."""
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass
class _Connection:
    """One client of the server, from accept() to close."""

    sock: socket.socket
    fd: int  # its descriptor, the key in _Server.connections
    deadline: float  # monotonic time at which it is closed, answered or not
    request: bytes = b""  # what arrived so far
    answer: bytes = b""  # what is left to send once the request is complete


class _Server:
    """GET /metrics for any number of clients from one thread and one selector, within the
    limits in the module docstring. `run` is the thread; `wake`, `close` and
    `forget_in_child` are for the thread that made it."""

    def __init__(self, listener: socket.socket, render: Callable[[], bytes]) -> None:
        self.listener = listener  # non-blocking, listening
        self.render = render  # the current snapshot's text
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()  # a byte in it ends run()
        os.set_blocking(self.wake_w, False)
        self.connections: dict[int, _Connection] = {}  # by descriptor, oldest first
        self.resume_at = 0.0  # monotonic time to accept again after running out of fds; 0: now
        self.starved = False  # accept() last failed for want of descriptors (said once)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.selector.register(self.listener, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until woken; every connection is closed on the way out."""
        while True:
            for key, events in self.selector.select(self.timeout()):
                if key.fd == self.wake_r:
                    for connection in list(self.connections.values()):
                        self.drop(connection)
                    return
                if key.fileobj is self.listener:
                    self.accept()
                elif key.fd in self.connections:  # not dropped earlier in this round
                    self.serve(self.connections[key.fd], events)
            self.expire()
            if self.resume_at and time.monotonic() >= self.resume_at:
                self.resume_at = 0.0
                self.selector.register(self.listener, selectors.EVENT_READ)

    def timeout(self) -> float | None:
        """Seconds until the next deadline or the end of an accept back-off; None: none."""
        due = [self.resume_at] if self.resume_at else []
        if self.connections:
            due.append(next(iter(self.connections.values())).deadline)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def accept(self) -> None:
        """Take the waiting connections, at most MAX_CONNECTIONS a round so a flood cannot
        starve the open ones."""
        for _ in range(MAX_CONNECTIONS):
            try:
                with _FORK_LOCK:
                    sock, _ = self.listener.accept()
                    connection = _Connection(sock, sock.fileno(), time.monotonic() + DEADLINE)
                    self.connections[connection.fd] = connection
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in OUT_OF_FDS:
                    self.back_off(exc)
                    return
                continue  # that client gave up (ECONNABORTED) or was refused: the next one
            self.starved = False
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, connection)
            self.make_room()

    def back_off(self, exc: OSError) -> None:
        """Out of descriptors: the listener stays readable, so stop watching it for a while
        rather than fail accept() in a loop; clients wait in the kernel's backlog."""
        self.selector.unregister(self.listener)
        self.resume_at = time.monotonic() + ACCEPT_BACKOFF
        if not self.starved:
            log.warning("metrics: cannot accept connections (%s); retrying", exc.strerror)
        self.starved = True

    def make_room(self) -> None:
        """Drop the oldest connections while there are more than MAX_CONNECTIONS or fewer
        than FD_RESERVE descriptors are free; the newest goes last, if it must."""
        while self.connections and (
            len(self.connections) > MAX_CONNECTIONS or _free_fds() < FD_RESERVE
        ):
            self.drop(next(iter(self.connections.values())))

    def serve(self, connection: _Connection, events: int) -> None:
        """Read the request until it is complete, then send the answer and close."""
        if not connection.answer and events & selectors.EVENT_READ:
            self.read(connection)
        if connection.answer:
            self.write(connection)

    def read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client went away before it finished asking
            self.drop(connection)
            return
        connection.request += data
        end = END_OF_HEAD.search(connection.request)
        if end is not None and end.start() <= MAX_REQUEST:
            connection.answer = self.answer(connection.request[: end.start()])
        elif len(connection.request) > MAX_REQUEST:
            too_long = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            connection.answer = _reply(too_long, b"request too long\n")

    def answer(self, head: bytes) -> bytes:
        """The whole answer to a request whose line and headers are ``head``."""
        from prometheus_client import CONTENT_TYPE_LATEST

        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _reply(HTTPStatus.BAD_REQUEST, b"not an HTTP request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            return _reply(HTTPStatus.NOT_FOUND, b"goodsd serves /metrics only\n")
        if method != b"GET":
            return _reply(HTTPStatus.METHOD_NOT_ALLOWED, b"GET only\n")
        try:
            return _reply(HTTPStatus.OK, self.render(), CONTENT_TYPE_LATEST)
        except Exception:  # a rendering bug must cost one scrape, not the server thread
            log.exception("metrics: cannot render the snapshot")
            return _reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"cannot render the metrics\n")

    def write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.answer)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.drop(connection)
            return
        connection.answer = connection.answer[sent:]
        if connection.answer:
            self.selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        else:
            self.drop(connection)

    def expire(self) -> None:
        """Close the connections whose deadline passed: they are the oldest."""
        now = time.monotonic()
        while self.connections:
            oldest = next(iter(self.connections.values()))
            if oldest.deadline > now:
                return
            self.drop(oldest)

    def drop(self, connection: _Connection) -> None:
        self.selector.unregister(connection.sock)
        with _FORK_LOCK:
            del self.connections[connection.fd]
            connection.sock.close()

    def wake(self) -> None:
        """Ask run() to return (from another thread)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"x")

    def close(self) -> None:
        """After run() returned: release the listener, the selector and the wake-up pipe."""
        self.selector.close()
        self.listener.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def forget_in_child(self) -> None:
        """In a forked child: close every descriptor of the server without touching the
        selector's registrations, which the child shares with the master's thread."""
        for connection in self.connections.values():
            connection.sock.close()
        self.connections = {}
        self.selector.close()
        self.listener.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
