"""Liveness: the master kills a child whose item runs past its timeout, or whose heartbeat
stopped, requeues what it held (counting the attempt) and starts a replacement."""

from __future__ import annotations

import json
import os
import signal

from support import wait_for


def test_a_hung_item_is_killed_each_time_then_dead_lettered(r, make_config, start_daemon, notify):
    # Given one consumer whose handler hangs, a 1 s item timeout and one retry
    config = make_config(
        consumers={
            "processes": 1,
            "handler": "sample_handlers:hang",
            "timeout": "1s",
            "retries": 1,
            "retry_delay": "100ms",
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When an item is pushed that hangs every time
    r.lpush("q", "stuck")
    # Then it ends in the dead list after two attempts, each ended by the master's SIGKILL
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, 30, "the hung item dead-lettered")
    record = json.loads(r.lindex("goodsd:{q}:dead", 0))
    assert record["item"] == "stuck"
    assert record["attempts"] == 2
    assert record["error"].startswith("worker killed: item running for ")
    assert r.lrange("test:started", 0, -1) == [b"stuck", b"stuck"]
    assert len(daemon.log().split("past timeout 1s")) - 1 >= 2
    # And nothing is left anywhere else, and a fresh consumer serves on
    assert r.llen("q") == 0 and r.zcard("goodsd:{q}:retry") == 0
    assert r.hlen("goodsd:{q}:attempts") == 0
    daemon.wait_log(r"consumer 0 \(pid \d+\) ready", count=3)
    r.lpush("q", "next")
    wait_for(lambda: r.llen("test:started") == 3, 10, "the next item picked up")


def test_a_child_without_heartbeat_is_killed_and_its_lease_not_kept(
    r, make_config, start_daemon, notify
):
    # Given one idle consumer
    config = make_config(consumers={"processes": 1, "handler": "sample_handlers:record"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    (child,) = daemon.children()
    # When it freezes (no heartbeat at all)
    os.kill(child, signal.SIGSTOP)
    # Then the master kills it for its stale heartbeat and starts another one
    daemon.wait_log(rf"killing consumer 0 \(pid {child}\): no heartbeat for", timeout=25)
    daemon.wait_log(r"consumer 0 \(pid \d+\) ready", count=2)
    # And the replacement consumes
    r.lpush("q", "after-freeze")
    wait_for(lambda: r.llen("test:handled") == 1, 10, "the replacement handles an item")
