"""What systemd hears: READY only once the children run, STATUS refreshed, STOPPING, the
watchdog, and never a word from anyone but the master."""

from __future__ import annotations

import re
import signal

from support import wait_for


def test_ready_comes_from_the_master_once_every_child_runs(r, make_config, start_daemon, notify):
    # Given goodsd with two consumers under a NOTIFY_SOCKET
    daemon = start_daemon(
        make_config(consumers={"handler": "sample_handlers:record"}), notify=notify
    )
    # When it reports READY
    pid, fields = notify.wait("READY", "1")
    # Then it came from the master, after both children said they were ready
    assert pid == daemon.pid
    log = daemon.log()
    assert len(re.findall(r"consumer \d \(pid \d+\) ready", log)) == 2
    assert fields["STATUS"].startswith("consumers: 2 running;")
    assert len(daemon.children()) == 2
    # And both consumers have registered in Redis
    assert r.hlen("goodsd:{q}:consumers") == 2
    # When items flow and it stops
    r.lpush("q", *[f"good{i}" for i in range(20)])
    wait_for(lambda: r.llen("test:handled") == 20, 10, "items handled")
    daemon.send(signal.SIGTERM)
    notify.wait("STOPPING", "1")
    assert daemon.wait_exit() == 0
    # Then every message all along came from the master's pid, none from a child
    senders = {sender for sender, _ in notify.poll()}
    assert senders == {daemon.pid}


def test_status_is_refreshed_with_backlog_and_rate(r, make_config, start_daemon, notify):
    # Given a running goodsd
    daemon = start_daemon(make_config(), notify=notify)
    notify.wait("READY", "1")
    # When a few status intervals pass (at most 5 s each)
    first = notify.index_of("READY", "1")
    assert first is not None
    notify.wait("STATUS", after=first + 1, timeout=6)
    second = notify.index_of("STATUS", after=first + 1)
    assert second is not None
    _, fields = notify.wait("STATUS", after=second + 1, timeout=6)
    # Then each refresh is one line naming children, backlog and rate
    status = fields["STATUS"]
    assert re.fullmatch(r"consumers: 2 running; backlog \d+; \d+ items/s", status), status
    assert all(pid == daemon.pid for pid, _ in notify.poll())


def test_watchdog_pings_from_the_master_while_the_loop_runs(make_config, start_daemon, notify):
    # Given a watchdog of 400 ms meant for the master (WATCHDOG_PID unset means "you")
    daemon = start_daemon(make_config(), notify=notify, env={"WATCHDOG_USEC": "400000"})
    notify.wait("READY", "1")
    # Then WATCHDOG=1 keeps arriving, every half interval, from the master only
    wait_for(
        lambda: sum(1 for _, f in notify.poll() if f.get("WATCHDOG") == "1") >= 5,
        5,
        "five watchdog pings",
    )
    assert {pid for pid, f in notify.poll() if "WATCHDOG" in f} == {daemon.pid}


def test_no_watchdog_when_it_is_meant_for_another_pid(make_config, start_daemon, notify):
    # Given WATCHDOG_USEC with WATCHDOG_PID naming another process
    start_daemon(make_config(), notify=notify, env={"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    notify.wait("READY", "1")
    ready = notify.index_of("READY", "1")
    assert ready is not None
    # When a status refresh has passed (several watchdog intervals)
    notify.wait("STATUS", after=ready + 1, timeout=6)
    # Then no WATCHDOG=1 was sent
    assert not any("WATCHDOG" in f for _, f in notify.poll())


def test_a_reader_that_falls_behind_cannot_freeze_the_master(make_config, start_daemon, notify):
    # Given a master whose notify socket nobody reads after READY
    daemon = start_daemon(make_config(), notify=notify)
    notify.wait("READY", "1")
    # When more messages are due than the socket queues (10 by default): each reload sends
    # RELOADING=1 and READY=1
    for count in range(1, 9):
        daemon.send(signal.SIGHUP)
        daemon.wait_log(r"reload complete", count=count)
    # Then the master still answers at once: it stops cleanly when asked
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
