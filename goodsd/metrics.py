"""Prometheus text at ``/metrics`` for one master (``metrics.listen``), from the optional
``prometheus-client`` package (``pip install goodsd[metrics]``).

The master stays one loop: on each status tick it builds an immutable `Snapshot` and swaps it
in; a small HTTP server in a daemon thread renders whatever snapshot is current. A scrape never
touches Redis or the master's state, so a slow scraper cannot stall supervision.

Queue-wide figures (``goodsd_queue_*``) come from Redis and are the same on every master;
the rest describe this master and its children.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from goodsd.config import Config, ConfigError, parse_listen
from goodsd.queue import Overview

INSTALL_HINT = "needs `pip install goodsd[metrics]` (prometheus-client is not installed)"


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
    daemon thread, shows the snapshot last published."""

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
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
        self.server, self.thread, self.listen = None, None, ""

    def close_in_child(self) -> None:
        """In a forked child: drop the inherited listening socket (the thread did not come
        along), so the port is free the moment the master lets go of it."""
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.socket.close()

    def _serve(self, path: str, listen: str) -> None:
        host, port = parse_listen(listen)
        try:
            server = _Server((host, port), _handler(self.registry))
        except OSError as exc:
            reason = f"cannot listen on {listen}: {exc.strerror or exc}"
            raise ConfigError(path, None, "metrics.listen", reason) from None
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="goodsd-metrics",
            daemon=True,
        )
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


def _handler(registry: object) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "goodsd serves /metrics only")
                return
            body = generate_latest(registry)  # type: ignore[arg-type]
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes are not worth a log line each."""

    return Handler
