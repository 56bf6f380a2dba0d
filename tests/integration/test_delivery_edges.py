"""Delivery edges found under fault injection: a stop during an outage, a master restarted
while Redis is down, bursts of signals."""

from __future__ import annotations

import collections
import os
import re
import signal
import time
from pathlib import Path

from support import wait_for
from test_redis_outage import lines


def stop_redis_saving(r, redis_server) -> Path:
    """Shut Redis down with its data saved, as a restarted production server keeps it."""
    r.shutdown(save=True)
    redis_server.stop()
    return Path(redis_server.directory) / "dump.rdb"


def test_a_stop_during_an_outage_still_records_what_is_done(
    r, redis_server, tmp_path, make_config, start_daemon, notify
):
    # Given one consumer working through a batch of slow items, recorded in a file
    out = tmp_path / "handled"
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:paced_record_to_file", "batch": 20},
        supervisor={"graceful_timeout": "20s", "lease": "60s"},
    )
    env = {"TEST_OUT": str(out), "TEST_ITEM_SECONDS": "0.05"}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(60)]
    r.lpush("q", *items)
    wait_for(lambda: len(lines(out)) >= 5, 10, "the first items handled")
    # When Redis goes away, goodsd is told to stop, and Redis comes back within the graceful
    # timeout
    dump = stop_redis_saving(r, redis_server)
    try:
        daemon.wait_log(r"\[consumer 0 pid \d+\] redis unavailable")
        daemon.send(signal.SIGTERM)
        daemon.wait_log(r"stop requested while redis is unavailable")
        redis_server.start()
    finally:
        dump.unlink(missing_ok=True)
    # Then the consumer records what it finished before exiting: nothing it did runs again
    assert daemon.wait_exit(25) == 0
    successor = start_daemon(config, notify=None, env=env)
    wait_for(lambda: set(lines(out)) == set(items), 20, "every item handled")
    duplicates = [i for i, n in collections.Counter(lines(out)).items() if n > 1]
    assert duplicates == [], daemon.log()
    successor.stop()


def test_a_master_started_during_an_outage_requeues_as_soon_as_redis_answers(
    r, redis_server, make_config, start_daemon, notify
):
    # Given two consumers each stuck in an item, with leases far longer than the test, and
    # their master killed
    config = make_config(
        consumers={"handler": "sample_handlers:hang", "batch": 1}, supervisor={"lease": "120s"}
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", "a", "b")
    wait_for(lambda: r.llen("test:started") == 2, 10, "both items started")
    daemon.send(signal.SIGKILL)
    daemon.wait_exit(5)
    # When Redis is away while a new master starts, and then comes back
    dump = stop_redis_saving(r, redis_server)
    try:
        config = make_config(
            consumers={"handler": "sample_handlers:record", "batch": 1},
            supervisor={"lease": "120s"},
        )
        mark = len(notify.poll())
        successor = start_daemon(config, notify=notify)
        successor.wait_log(r"\[master\] redis unavailable")
        # (away for longer than the master's first look and its recheck a second later)
        wait_for(
            lambda: (
                sum("waiting for redis at" in f.get("STATUS", "") for _, f in notify.poll()[mark:])
                >= 2
            ),
            10,
            "two status ticks without redis",
        )
        redis_server.start()
        back = time.monotonic()
    finally:
        dump.unlink(missing_ok=True)
    # Then the dead consumers' items are requeued and handled within seconds, not at the
    # next periodic pass
    wait_for(lambda: r.llen("test:handled") == 2, 10, "the stranded items handled")
    assert time.monotonic() - back < 6
    # (the master logs its requeues once all are done, and their items may be handled first)
    successor.wait_log(r"requeued 1 in-flight item\(s\)", count=2)
    assert len(re.findall(r"requeued 1 in-flight item\(s\)", successor.log())) == 2
    # And once it has found them, its loop sleeps again: no timer left behind that wakes it
    assert cpu_seconds_over(successor.pid, 2.0) < 0.5


def cpu_seconds_over(pid: int, window: float) -> float:
    """CPU time (user + system) the process uses during the next ``window`` seconds."""

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    start = used()
    time.sleep(window)  # the window measured, not a wait for an event
    return used() - start


def test_every_ttin_in_a_burst_counts(r, make_config, start_daemon, notify):
    # Given two consumers
    daemon = start_daemon(make_config(), notify=notify)
    notify.wait("READY", "1")
    # When five SIGTTIN arrive 1 ms apart
    for _ in range(5):
        daemon.send(signal.SIGTTIN)
        time.sleep(0.001)  # the burst's spacing, not a wait for anything
    # Then each one the master received adds a consumer (the kernel merges a signal that
    # arrives while the same one is still pending, so a busy machine may deliver fewer)
    daemon.wait_log(r"SIGTTIN: one consumer more")
    wait_for(
        lambda: len(daemon.children()) == 2 + daemon.log().count("SIGTTIN: one consumer more"),
        10,
        "one more consumer per SIGTTIN received",
    )
