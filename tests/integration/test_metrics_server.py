"""The metrics server's limits, driven in this process over real sockets (no daemon, no Redis)
with a short deadline, for every kind of client: stalled at each point of a request, trickling
it, finished in any shape, too many at once; and what a forked child keeps of it."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator

import prometheus_client
import pytest
from support import wait_for

from goodsd import metrics
from goodsd.config import Config, MetricsConfig

DEADLINE = 0.4  # seconds, instead of metrics.DEADLINE, to keep these tests fast
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: goodsd\r\nAccept: text/plain\r\n\r\n"
SNAPSHOT = metrics.Snapshot("q", None, (("consumer", "running", 2),), 0, False, True)


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics.Exporter]:
    """An exporter serving SNAPSHOT on a free loopback port, with connections closed after
    DEADLINE."""
    monkeypatch.setattr(metrics, "DEADLINE", DEADLINE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = metrics.Exporter(Config(metrics=MetricsConfig(f"127.0.0.1:{port}"), path="t"))
    exporter.publish(SNAPSHOT)
    yield exporter
    exporter.stop()


def connect(exporter: metrics.Exporter, sent: bytes = b"") -> socket.socket:
    host, port = metrics.parse_listen(exporter.listen)
    client = socket.create_connection((host, port), timeout=2)
    client.sendall(sent)
    return client


def closed(client: socket.socket) -> bool:
    """Whether the server ended this connection; what it sent before is read and ignored."""
    client.setblocking(False)
    try:
        while client.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        pass
    return True


def reply(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (within 2 s)."""
    client.settimeout(2)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def stalled_prefixes() -> list[bytes]:
    """Every way to stop short of a complete request: each proper prefix of one."""
    return [REQUEST[:n] for n in range(len(REQUEST))]


def test_every_stalled_request_is_closed_at_the_deadline(exporter):
    # Given clients that each stop at another point of a request (at most the cap at once,
    # so none is dropped to make room)
    prefixes = stalled_prefixes()
    for start in range(0, len(prefixes), metrics.MAX_CONNECTIONS):
        began = time.monotonic()
        clients = [connect(exporter, p) for p in prefixes[start : start + metrics.MAX_CONNECTIONS]]
        # When they wait, then the server closes them all, unanswered, once the deadline passed
        wait_for(lambda c=clients: all(map(closed, c)), DEADLINE + 2, "stalled clients closed")
        assert time.monotonic() - began >= DEADLINE * 0.9
        for client in clients:
            client.close()


def test_a_request_trickled_slower_than_the_deadline_is_closed(exporter):
    # Given a client that sends a valid request one byte at a time, never finishing in time
    client = connect(exporter)
    began = time.monotonic()
    rest = iter(REQUEST[:-1])

    def trickled_until_closed() -> bool:
        if closed(client):
            return True
        client.send(bytes([next(rest)]))
        return False

    # Then the deadline counts from the connection, not from the last byte
    wait_for(trickled_until_closed, DEADLINE + 2, "the trickling client closed")
    assert time.monotonic() - began < DEADLINE + 1
    client.close()


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        (REQUEST, 200),
        (b"GET /metrics?name[]=goodsd_children HTTP/1.1\r\n\r\n", 200),
        (b"GET /metrics HTTP/1.0\n\n", 200),  # bare line feeds
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metricsz HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"HELLO\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"y" * metrics.MAX_REQUEST + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"y" * (metrics.MAX_REQUEST + 1), 431),  # unended
    ],
)
def test_every_finished_request_gets_one_answer_and_the_end(exporter, sent, code):
    # When a client sends a whole request (or too much of one)
    client = connect(exporter, sent)
    # Then it gets one answer with that status, and the connection ends after it
    data = reply(client)
    assert status(data) == code, data[:200]
    head, _, body = data.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    if code == 200:
        assert b'goodsd_children{role="consumer",state="running"} 2.0' in body
    client.close()


def test_a_request_in_single_bytes_is_answered(exporter):
    client = connect(exporter)
    for byte in REQUEST:
        client.send(bytes([byte]))
    assert status(reply(client)) == 200
    client.close()


def test_above_the_cap_the_oldest_connection_makes_room(exporter):
    # Given as many idle clients as the server keeps open
    idle = [connect(exporter) for _ in range(metrics.MAX_CONNECTIONS)]
    wait_for(lambda: len(exporter.server.connections) == len(idle), 2, "all idle ones admitted")
    # When one more connects, then the oldest is dropped and the rest stay open
    newcomer = connect(exporter)
    wait_for(lambda: closed(idle[0]), 2, "the oldest dropped")
    assert not any(closed(c) for c in idle[1:])
    # And a scrape is answered at once while the server is full
    assert status(reply(connect(exporter, REQUEST))) == 200
    for client in [*idle, newcomer]:
        client.close()


def test_a_snapshot_is_rendered_once_however_often_it_is_scraped(exporter, monkeypatch):
    # Given a count of renders
    renders = []

    def counting(registry: object) -> bytes:
        renders.append(exporter.snapshot)
        return b"# rendered\n"

    monkeypatch.setattr(prometheus_client, "generate_latest", counting)
    # When one snapshot is scraped five times, and the next once
    for _ in range(5):
        assert reply(connect(exporter, REQUEST)).endswith(b"# rendered\n")
    exporter.publish(dataclasses.replace(SNAPSHOT, restarts=1))
    assert status(reply(connect(exporter, REQUEST))) == 200
    # Then each was rendered once
    assert [s.restarts for s in renders] == [0, 1]


def test_a_forked_child_keeps_no_connection_and_no_port(exporter):
    # Given clients the server holds open
    clients = [connect(exporter, REQUEST[:5]) for _ in range(4)]
    wait_for(lambda: len(exporter.server.connections) == 4, 2, "clients admitted")
    # When the master forks a child that drops what it inherited and lives on
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            exporter.close_in_child()
            os.read(release_r, 1)
        finally:
            os._exit(0)
    try:
        # Then the clients still see their connections end at the deadline
        wait_for(lambda: all(map(closed, clients)), DEADLINE + 2, "clients closed")
        # And once the exporter stops, the port can be bound again at once
        host, port = metrics.parse_listen(exporter.listen)
        exporter.stop()
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter does
            again.bind((host, port))
            again.listen()
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        os.close(release_r)
        os.close(release_w)
        for client in clients:
            client.close()
