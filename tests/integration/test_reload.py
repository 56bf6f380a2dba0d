"""SIGHUP reloads: pools resize, changed settings roll new children in before old ones go, a
bad file or a handler that cannot load changes nothing; SIGTTIN/SIGTTOU add and remove one."""

from __future__ import annotations

import re
import signal

from support import NotifyListener, wait_for

STARTED = re.compile(r"started consumer \d+ \(pid (\d+)\)")
SLOT_STARTED = re.compile(r"started consumer (\d+) \(pid (\d+)\)")


def reload(daemon, notify: NotifyListener) -> dict[str, str]:
    """SIGHUP, then the RELOADING=1 and the READY=1 that follows it; returns READY's fields."""
    mark = len(notify.poll())
    daemon.send(signal.SIGHUP)
    pid, reloading = notify.wait("RELOADING", "1", after=mark)
    assert pid == daemon.pid
    assert int(reloading["MONOTONIC_USEC"]) > 0
    at = notify.index_of("RELOADING", "1", after=mark)
    assert at is not None
    pid, ready = notify.wait("READY", "1", after=at + 1, timeout=20)
    assert pid == daemon.pid
    return ready


def started_pids(daemon) -> list[int]:
    return [int(p) for p in STARTED.findall(daemon.log())]


def slot_pids(daemon) -> dict[int, int]:
    """Consumer slot -> pid of its latest process, from the "started" lines."""
    return {int(slot): int(pid) for slot, pid in SLOT_STARTED.findall(daemon.log())}


def test_reload_resizes_the_pool_2_5_1(r, make_config, start_daemon, notify):
    # Given two consumers
    config = make_config(consumers={"processes": 2})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    first = daemon.children()
    assert len(first) == 2
    # When the file asks for five and goodsd reloads
    make_config(consumers={"processes": 5})
    status = reload(daemon, notify)["STATUS"]
    # Then at READY five run: the two old ones kept, three new
    assert status.startswith("consumers: 5 running;"), status
    five = daemon.children()
    assert len(five) == 5 and first < five
    # When the file asks for one
    make_config(consumers={"processes": 1})
    status = reload(daemon, notify)["STATUS"]
    # Then at READY only slot 0 runs: the surplus retired highest slot first
    assert status.startswith("consumers: 1 running;"), status
    assert daemon.children() == {slot_pids(daemon)[0]}
    assert all(pid == daemon.pid for pid, _ in notify.poll())


def test_changed_settings_roll_new_children_in_before_old_ones_go(
    r, make_config, start_daemon, notify
):
    # Given two consumers recording items, and items flowing
    config = make_config(consumers={"handler": "sample_handlers:record", "batch": 10})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    old = daemon.children()
    r.lpush("q", *[f"before{i}" for i in range(50)])
    # When a setting of the consumers changes and goodsd reloads
    make_config(consumers={"handler": "sample_handlers:record", "batch": 5})
    log_mark = len(daemon.log())
    reload(daemon, notify)
    # Then at READY two new consumers run and none of the old ones
    new = daemon.children()
    assert len(new) == 2 and not (new & old)
    # And each old consumer was stopped only after a new one was ready
    tail = daemon.log()[log_mark:]
    first_ready = re.search(r"consumer \d+ \(pid \d+\) ready", tail)
    first_stop = re.search(r"stopping consumer", tail)
    assert first_ready and first_stop and first_ready.start() < first_stop.start(), tail
    # And nothing was lost across the roll
    r.lpush("q", *[f"after{i}" for i in range(50)])
    wait_for(lambda: r.llen("test:handled") >= 100, 10, "all items handled")
    assert len(set(r.lrange("test:handled", 0, -1))) == 100


def test_an_invalid_file_is_rejected_and_nothing_changes(r, make_config, start_daemon, notify):
    # Given a running goodsd
    config = make_config()
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    before = daemon.children()
    # When the file gets a bad value and goodsd reloads
    text = config.read_text()
    config.write_text(text.replace("batch: 10", "batch: 0"))
    line = next(i for i, t in enumerate(config.read_text().splitlines(), 1) if "batch: 0" in t)
    status = reload(daemon, notify)["STATUS"]
    # Then READY says the reload failed, naming the file, line and key; no child was touched
    assert f"last reload failed: {config}:{line}: consumers.batch:" in status, status
    daemon.wait_log(rf"error \[master\] reload rejected.*{line}: consumers.batch")
    assert daemon.children() == before
    # When the file is fixed and goodsd reloads again
    config.write_text(text)
    status = reload(daemon, notify)["STATUS"]
    # Then the error is gone from STATUS
    assert "last reload failed" not in status
    assert daemon.children() == before


def test_a_reloaded_handler_that_cannot_load_keeps_the_old_children(
    r, make_config, start_daemon, notify
):
    # Given two consumers recording items
    daemon = start_daemon(
        make_config(consumers={"handler": "sample_handlers:record"}), notify=notify
    )
    notify.wait("READY", "1")
    before = daemon.children()
    # When the file names a handler that does not exist and goodsd reloads
    make_config(consumers={"handler": "sample_handlers:no_such_handler"})
    status = reload(daemon, notify)["STATUS"]
    # Then the reload is reported failed, with the import error, and the old children serve on
    assert "last reload failed: consumer handler cannot be loaded: cannot load" in status, status
    assert "no_such_handler" in status
    # (the other new child, still starting when its sibling failed, is being stopped)
    wait_for(lambda: daemon.children() == before, 10, "only the old children")
    r.lpush("q", "still-served")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"still-served"], 10, "item handled")
    # And the master runs on (it did not exit 78: READY was sent long ago)
    assert daemon.proc.poll() is None


def test_ttin_and_ttou_add_and_remove_one_consumer_until_the_next_reload(
    r, make_config, start_daemon, notify
):
    # Given two consumers
    daemon = start_daemon(make_config(), notify=notify)
    notify.wait("READY", "1")
    # When SIGTTIN arrives
    daemon.send(signal.SIGTTIN)
    # Then a third consumer runs
    daemon.wait_log(r"consumer 2 \(pid \d+\) ready")
    wait_for(lambda: len(daemon.children()) == 3, 5, "three consumers")
    slots = slot_pids(daemon)
    # When SIGTTOU arrives twice
    daemon.send(signal.SIGTTOU)
    daemon.wait_log(r"SIGTTOU: one consumer fewer \(2 wanted\)")
    daemon.send(signal.SIGTTOU)
    # Then the highest slots retire, newest first, and slot 0 remains
    wait_for(lambda: daemon.children() == {slots[0]}, 10, "only consumer 0 left")
    stopped = re.findall(r"stopping consumer (\d+) \(pid (\d+)\)", daemon.log())
    assert stopped == [("2", str(slots[2])), ("1", str(slots[1]))]
    # When goodsd reloads the unchanged file
    status = reload(daemon, notify)["STATUS"]
    # Then the file's count (two) is back
    assert status.startswith("consumers: 2 running;"), status
    assert len(daemon.children()) == 2
