"""Supervision: crash loops back off, a handler that cannot load stops the start with 78, a
killed master leaves no children behind and its successor requeues their items at once."""

from __future__ import annotations

import itertools
import os
import re
import signal
from datetime import datetime

from support import wait_for

STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})"


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it is gone for our purpose
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    return stat[stat.rindex(b")") + 2 :][:1] == b"Z"


def test_crash_loop_backs_off_with_growing_delays(r, make_config, start_daemon, notify):
    # Given one consumer whose setup fails whenever test:fail-setup is set
    config = make_config(
        consumers={"processes": 1, "setup": "sample_handlers:setup_fails_when_flagged"},
        supervisor={"restart_delay": "200ms", "restart_delay_max": "2s"},
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the setup starts failing and the running consumer dies
    r.set("test:fail-setup", 1)
    (child,) = daemon.children()
    os.kill(child, signal.SIGKILL)
    # Then the restarts back off: each announced delay doubles, up to the cap
    pattern = r"consumer 0 failed to start (\d+) time\(s\) in a row; restarting in ([\d.]+)s"
    daemon.wait_log(pattern, timeout=15, count=5)
    announced = [(int(n), float(d)) for n, d in re.findall(pattern, daemon.log())[:5]]
    delays = [d for _, d in announced]
    assert all(b == min(2.0, a * 2) for a, b in itertools.pairwise(delays)), delays
    assert delays[-1] == 2.0
    assert [n for n, _ in announced] == list(range(announced[0][0], announced[0][0] + 5))
    # And the real gap from each announcement to the next start is the announced delay
    events = re.findall(
        STAMP + r" \S+ \[master\] (?:.*restarting in ([\d.]+)s|(started) consumer 0)",
        daemon.log(),
    )
    gaps = [
        (_time(later[0]) - _time(stamp), float(delay))
        for (stamp, delay, _), later in itertools.pairwise(events)
        if delay and later[2]
    ]
    assert len(gaps) >= 4
    assert all(delay - 0.05 <= gap <= delay + 0.6 for gap, delay in gaps), gaps
    # And STATUS shows the backoff
    wait_for(
        lambda: any("backoff" in f.get("STATUS", "") for _, f in notify.poll()),
        6,
        "a STATUS showing the backoff",
    )
    status = next(f["STATUS"] for _, f in notify.poll() if "backoff" in f.get("STATUS", ""))
    assert re.search(r"consumers: 1 backoff \(next restart in [\d.]+s\)", status), status
    # When it is stopped while the child waits in backoff
    daemon.send(signal.SIGTERM)
    # Then it stops at once and cleanly
    assert daemon.wait_exit(5) == 0


def test_a_failed_start_heals_when_the_cause_goes(r, make_config, start_daemon, notify):
    # Given a consumer crash-looping on its setup at a short delay
    r.set("test:fail-setup", 1)
    config = make_config(
        consumers={"processes": 1, "setup": "sample_handlers:setup_fails_when_flagged"},
        supervisor={"restart_delay": "100ms", "restart_delay_max": "300ms"},
    )
    daemon = start_daemon(config, notify=notify)
    daemon.wait_log(r"restarting in", count=2)
    # Then there is no READY while it cannot start
    assert notify.index_of("READY") is None
    # When the cause is removed
    r.delete("test:fail-setup")
    # Then the next start succeeds and the service is READY
    notify.wait("READY", "1", timeout=10)
    daemon.wait_log(r"consumer 0 \(pid \d+\) ready")


def test_a_handler_that_cannot_load_exits_78_before_ready(make_config, start_daemon, notify):
    # Given a handler that does not exist
    config = make_config(consumers={"handler": "sample_handlers:no_such_handler"})
    daemon = start_daemon(config, notify=notify)
    # Then the master exits 78 (EX_CONFIG: systemd must not restart it) without READY
    assert daemon.wait_exit(15) == 78
    assert notify.index_of("READY") is None
    assert "consumer handler cannot be loaded: cannot load 'sample_handlers:no_such_handler'" in (
        daemon.log()
    )


def test_master_sigkill_leaves_no_orphans_and_successor_requeues_at_once(
    r, make_config, start_daemon, notify
):
    # Given two consumers each stuck in an item, with leases far longer than the test
    config = make_config(
        consumers={"handler": "sample_handlers:hang", "batch": 1},
        supervisor={"lease": "120s"},
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", "a", "b")
    wait_for(lambda: r.llen("test:started") == 2, 10, "both items started")
    children = daemon.children()
    assert len(children) == 2
    # When the master is killed with SIGKILL
    daemon.send(signal.SIGKILL)
    daemon.wait_exit(5)
    # Then every child exits within 2 s
    wait_for(lambda: all(_gone(pid) for pid in children), 2, "children to die with the master")
    assert r.llen("q") == 0  # the items are still in flight, under live leases
    # When a new master starts on this host with a handler that works
    config = make_config(
        consumers={"handler": "sample_handlers:record", "batch": 1},
        supervisor={"lease": "120s"},
    )
    successor = start_daemon(config)
    # Then it requeues the dead consumers' items at once (not after 120 s) and they are handled
    wait_for(lambda: r.llen("test:handled") == 2, 10, "the in-flight items handled again")
    assert sorted(r.lrange("test:handled", 0, -1)) == [b"a", b"b"]
    assert len(re.findall(r"requeued 1 in-flight item\(s\)", successor.log())) == 2
    # And the crash cost the items no attempt
    assert r.hlen("goodsd:{q}:attempts") == 0 and r.llen("goodsd:{q}:dead") == 0


def test_a_failing_setup_is_logged_as_such_with_the_user_s_traceback(
    r, make_config, start_daemon, notify
):
    # Given a consumer whose setup raises
    r.set("test:fail-setup", 1)
    config = make_config(
        consumers={"processes": 1, "setup": "sample_handlers:setup_fails_when_flagged"},
        supervisor={"restart_delay": "100ms", "restart_delay_max": "300ms"},
    )
    daemon = start_daemon(config, notify=notify)
    # Then the log says the setup failed, with a traceback of the user's code only
    daemon.wait_log(r"restarting in")
    log = daemon.log()
    assert "setup sample_handlers:setup_fails_when_flagged failed" in log
    assert "sample_handlers.py" in log and "RuntimeError: setup failed on purpose" in log
    assert "goodsd/consumer.py" not in log and "goodsd/runner.py" not in log
    assert "crashed" not in log
