"""metrics.listen: the master serves Prometheus text, scraped here over real HTTP and checked
against Redis; bind failures and a missing extra are config errors at start and at reload; and
no client, however many or slow, can starve the master (fds, CPU, forks)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import Daemon, wait_for

from goodsd.metrics import DEADLINE, FD_RESERVE, MAX_CONNECTIONS
from goodsd.store import Failure, RedisConsumerStore, Registration, RetryPolicy, Settlement

# What stalled clients send before they stop: nothing, or part of a request
STALLS = (
    b"",
    b"G",
    b"GET /metr",
    b"GET /metrics HTTP/1.1\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: goodsd\r\nAccept: text/plain",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def scrape(port: int, timeout: float = 5) -> dict[str, float]:
    """``name{label="v",...}`` -> value, for every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def answered(port: int) -> bool:
    """Whether a scrape gets an answer within 2 s."""
    try:
        return bool(scrape(port, timeout=2))
    except OSError:
        return False


def redis_figures(r) -> dict[str, float]:
    """What the queue gauges and counters must say, read straight from Redis."""
    held = sum(r.llen(k) for k in r.keys("goodsd:{q}:inflight:*"))
    stats = {k.decode(): int(v) for k, v in r.hgetall("goodsd:{q}:stats").items()}
    return {
        'goodsd_queue_backlog{queue="q"}': r.llen("q"),
        'goodsd_queue_in_flight{queue="q"}': held,
        'goodsd_queue_retry_waiting{queue="q"}': r.zcard("goodsd:{q}:retry"),
        'goodsd_queue_dead{queue="q"}': r.llen("goodsd:{q}:dead"),
        **{f'goodsd_queue_items_{k}_total{{queue="q"}}': v for k, v in stats.items()},
    }


def test_metrics_match_redis(r, make_config, start_daemon, notify):
    # Given a queue with items ready, one waiting for a retry and two dead (written through
    # the real scripts by a consumer on another host), and a master with one consumer that
    # takes one item and hangs on it
    queue = RedisConsumerStore(r, "q")
    r.lpush("q", *[f"good{i}" for i in range(3)])
    queue.register("elsewhere-1-aa", Registration(host="elsewhere", pid=1), 60)
    claimed = queue.claim("elsewhere-1-aa", 3, 60, 0)
    failures = [Failure(claimed[0], "boom"), Failure(claimed[1], "bad", final=True)]
    failures.append(Failure(claimed[2], "bad", final=True))
    queue.settle("elsewhere-1-aa", Settlement("s1", failed=tuple(failures)), RetryPolicy(3, 600))
    r.lpush("q", *[f"item{i}" for i in range(30)])
    port = free_port()
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:hang", "batch": 1},
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    wait_for(lambda: r.llen("test:started") == 1, 10, "the consumer to take an item")

    # When Prometheus scrapes
    def agrees() -> dict[str, float] | None:
        # one snapshot that shows both the claim and the consumer running (a snapshot taken
        # between the claim and the master's reading of READY shows only the first)
        got = scrape(port)
        want = {**redis_figures(r), 'goodsd_children{role="consumer",state="running"}': 1}
        return got if all(got.get(k) == v for k, v in want.items()) else None

    got = wait_for(agrees, 10, "metrics to agree with redis")
    # Then the queue figures are those in Redis, and the master's own are right too
    assert got['goodsd_queue_backlog{queue="q"}'] == 29
    assert got['goodsd_queue_in_flight{queue="q"}'] == 1
    assert got['goodsd_queue_retry_waiting{queue="q"}'] == 1
    assert got['goodsd_queue_dead{queue="q"}'] == 2
    assert got['goodsd_redis_up{queue="q"}'] == 1
    assert got['goodsd_children{role="consumer",state="running"}'] == 1
    assert got['goodsd_children{role="consumer",state="backoff"}'] == 0
    assert got["goodsd_child_restarts_total"] == 0
    assert got["goodsd_producer_paused"] == 0
    assert got["goodsd_last_reload_success"] == 1


def test_only_metrics_is_served(r, make_config, start_daemon, notify):
    port = free_port()
    start_daemon(make_config(metrics={"listen": f"127.0.0.1:{port}"}), notify=notify)
    notify.wait("READY", "1")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    assert exc.value.code == 404


def test_a_port_in_use_stops_the_start(r, make_config, start_daemon, taken_port):
    # Given metrics.listen on a port something else holds
    config = make_config(metrics={"listen": f"127.0.0.1:{taken_port}"})
    # When goodsd starts, then it exits 78 with one line naming the key
    daemon = start_daemon(config)
    assert daemon.wait_exit() == 78
    out = daemon.log()
    assert f"metrics.listen: cannot listen on 127.0.0.1:{taken_port}" in out
    assert "Traceback" not in out


def test_a_missing_extra_is_a_config_error(r, make_config, start_daemon, tmp_path):
    # Given a Python where prometheus_client cannot be imported
    blocker = tmp_path / "block" / "prometheus_client"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    config = make_config(metrics={"listen": f"127.0.0.1:{free_port()}"})
    env = {"PYTHONPATH": str(blocker.parent)}
    # When goodsd starts, or checks the config, then both say how to get it, exit 78
    daemon = start_daemon(config, env=env)
    assert daemon.wait_exit() == 78
    assert "metrics.listen: needs `pip install goodsd[metrics]`" in daemon.log()
    check = subprocess.run(
        [sys.executable, "-m", "goodsd", "check", "-c", str(config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 78
    assert "pip install goodsd[metrics]" in check.stderr


def test_reload_to_a_taken_port_is_rejected_and_a_free_one_moves(
    r, make_config, start_daemon, notify, taken_port, tmp_path
):
    # Given a master serving metrics
    old_port, new_port = free_port(), free_port()
    config = make_config(metrics={"listen": f"127.0.0.1:{old_port}"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    assert scrape(old_port)["goodsd_last_reload_success"] == 1
    # When the config moves metrics to a port in use and goodsd reloads
    make_config(metrics={"listen": f"127.0.0.1:{taken_port}"})
    mark = len(notify.poll())
    daemon.send(signal.SIGHUP)
    # Then the reload is rejected: READY again, the reason in STATUS, the old port still served
    _, fields = notify.wait("READY", "1", after=mark)
    assert f"cannot listen on 127.0.0.1:{taken_port}" in fields["STATUS"]
    wait_for(
        lambda: scrape(old_port)["goodsd_last_reload_success"] == 0, 10, "reload failure metric"
    )
    # When it is moved to a free port instead
    make_config(metrics={"listen": f"127.0.0.1:{new_port}"})
    mark = len(notify.poll())
    daemon.send(signal.SIGHUP)
    notify.wait("READY", "1", after=mark)
    # Then the new port serves (the children forked earlier do not hold the old one open)
    wait_for(lambda: scrape(new_port).get("goodsd_last_reload_success") == 1, 10, "the new port")
    with pytest.raises(urllib.error.URLError):
        scrape(old_port)
    assert daemon.stop() == 0


def open_fds(pid: int) -> set[int]:
    """The file descriptors process ``pid`` holds."""
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``, all its threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def set_fd_limit(pid: int, soft: int) -> int:
    """Set the soft RLIMIT_NOFILE of process ``pid``; returns the one it had."""
    old, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    return old


def stall(port: int, count: int) -> list[socket.socket]:
    """``count`` clients that connect and stop, each after one of STALLS in turn."""
    clients = []
    for i in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.suppress(ConnectionError):  # dropped at once: dropped() will tell
            client.sendall(STALLS[i % len(STALLS)])
        client.setblocking(False)
        clients.append(client)
    return clients


def dropped(client: socket.socket) -> bool:
    """Whether the server closed this client's connection (EOF or reset); whatever it sent
    before is read and ignored."""
    try:
        while client.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        pass
    return True


def serving_master(make_config, start_daemon, notify) -> tuple[Daemon, int]:
    """A master with one consumer and metrics on, ready and scraped once; and its port."""
    port = free_port()
    config = make_config(consumers={"processes": 1}, metrics={"listen": f"127.0.0.1:{port}"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    scrape(port)
    return daemon, port


def test_stalled_clients_neither_block_a_scrape_nor_pile_up(r, make_config, start_daemon, notify):
    # Given a master serving metrics
    daemon, port = serving_master(make_config, start_daemon, notify)
    baseline = len(open_fds(daemon.pid))
    # When 130 clients connect and stall, idle or in the middle of a request
    clients = stall(port, 130)
    # Then a scrape is answered at once all the same
    assert scrape(port, timeout=2)["goodsd_last_reload_success"] == 1
    # And the master holds at most the cap of connections (and the one being admitted)
    assert len(open_fds(daemon.pid)) <= baseline + MAX_CONNECTIONS + 1
    # And the server closes every stalled client within the deadline
    wait_for(lambda: all(dropped(c) for c in clients), DEADLINE + 2, "every stalled client dropped")
    wait_for(lambda: len(open_fds(daemon.pid)) <= baseline, 2, "the master's fds back to before")
    for client in clients:
        client.close()


def test_a_flood_at_a_low_fd_limit_leaves_the_master_room_to_fork(
    r, make_config, start_daemon, notify
):
    # Given a master that may open only a few files more than the server leaves it
    daemon, port = serving_master(make_config, start_daemon, notify)
    set_fd_limit(daemon.pid, max(open_fds(daemon.pid)) + FD_RESERVE + 4)
    clients: list[socket.socket] = []

    def flooded_until_ready() -> bool:
        """Keep 40 stalled clients connected (replacing those dropped); True once the new
        consumer is ready."""
        for client in [c for c in clients if dropped(c)]:
            client.close()
            clients.remove(client)
        clients.extend(stall(port, 40 - len(clients)))
        return re.search(r"consumer 1 \(pid \d+\) ready", daemon.log()) is not None

    # When clients flood the endpoint and one consumer more is asked for
    daemon.send(signal.SIGTTIN)
    # Then the master still forks it, and it gets ready while the flood goes on
    wait_for(flooded_until_ready, 10, "the new consumer ready during the flood")
    assert "Too many open files" not in daemon.log()
    # When the clients are gone, then a scrape is answered
    for client in clients:
        client.close()
    wait_for(lambda: answered(port), 5, "a scrape after the flood")


def test_a_full_fd_table_makes_the_server_wait_not_spin(r, make_config, start_daemon, notify):
    # Given a master that cannot open a single file more
    daemon, port = serving_master(make_config, start_daemon, notify)
    held = open_fds(daemon.pid)
    lowest_free = min(set(range(len(held) + 1)) - held)
    old_limit = set_fd_limit(daemon.pid, lowest_free)
    # When clients wait to be accepted
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    # Then over the next second the master uses little CPU: it does not retry accept() in a
    # loop (the second is a measuring window, not a wait for an event)
    before = cpu_seconds(daemon.pid)
    time.sleep(1.0)
    assert cpu_seconds(daemon.pid) - before < 0.25
    # When the limit is raised again and the clients are gone, then scrapes are answered
    for client in clients:
        client.close()
    set_fd_limit(daemon.pid, old_limit)
    wait_for(lambda: answered(port), 5, "a scrape once descriptors are free again")
