"""Graceful stop: current items finish, unstarted ones go back to the pop end, stragglers are
killed after graceful_timeout and their items requeued; the exit code is 0."""

from __future__ import annotations

import os
import signal

import pytest
from support import wait_for


def test_sigterm_with_slow_items_in_flight_loses_nothing(r, make_config, start_daemon, notify):
    # Given two consumers taking 0.3 s per item, each holding a batch of five
    config = make_config(consumers={"handler": "sample_handlers:slow_record", "batch": 5})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(40)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:handled") >= 3, 10, "some items handled")
    # When goodsd is told to stop mid-batch
    daemon.send(signal.SIGTERM)
    # Then it says STOPPING and exits 0 without killing anyone
    notify.wait("STOPPING", "1")
    assert daemon.wait_exit(15) == 0
    assert "killing" not in daemon.log()
    # And every item was handled once or is back in the list, nothing in flight
    handled = [b.decode() for b in r.lrange("test:handled", 0, -1)]
    waiting = [b.decode() for b in r.lrange("q", 0, -1)]
    assert sorted(handled + waiting) == sorted(items)
    assert r.keys("goodsd:{q}:inflight:*") == []
    # And claimed but unstarted items went back to the pop end: they pop before the items
    # never claimed, which follow in their pushed order
    pop_order = [int(s[4:]) for s in reversed(waiting)]
    assert pop_order, "the stop came late enough for items to wait"
    fresh = next(i for i in range(len(pop_order)) if pop_order[i:] == [*range(pop_order[i], 40)])
    assert all(n < pop_order[fresh] for n in pop_order[:fresh]), pop_order


def test_stragglers_are_killed_after_graceful_timeout_and_requeued(
    r, make_config, start_daemon, notify
):
    # Given a consumer stuck in an item and a 1 s graceful timeout
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:hang"},
        supervisor={"graceful_timeout": "1s"},
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", "slowpoke")
    wait_for(lambda: r.llen("test:started") == 1, 10, "the item started")
    # When goodsd is told to stop
    daemon.send(signal.SIGTERM)
    # Then after the graceful timeout the child is killed, and goodsd still exits 0
    assert daemon.wait_exit(10) == 0
    assert "did not stop within 1s: killing it" in daemon.log()
    # And the item is back at the pop end, no attempt counted (the stop was not its fault)
    assert r.lrange("q", 0, -1) == [b"slowpoke"]
    assert r.hlen("goodsd:{q}:attempts") == 0 and r.llen("goodsd:{q}:dead") == 0
    assert r.keys("goodsd:{q}:inflight:*") == []


def group_term(daemon) -> None:
    """What `systemctl kill`, supervisord's stopasgroup and many init scripts do."""
    os.killpg(daemon.pid, signal.SIGTERM)


def child_then_master_term(daemon) -> None:
    for child in daemon.children():
        os.kill(child, signal.SIGTERM)
    daemon.send(signal.SIGTERM)


@pytest.mark.parametrize("stop", [group_term, child_then_master_term])
def test_a_stop_is_a_stop_however_it_is_signalled(stop, r, make_config, start_daemon, notify):
    # Given consumers in the middle of a slow item
    config = make_config(consumers={"handler": "sample_handlers:timed_record", "batch": 1})
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "1"})
    notify.wait("READY", "1")
    r.lpush("q", "good1", "good2")
    wait_for(lambda: r.llen("test:started") == 2, 10, "both items started")
    # When the stop reaches the children as well as the master, once each
    stop(daemon)
    # Then the running items are finished, not cut, and goodsd exits 0
    assert daemon.wait_exit(15) == 0
    assert sorted(r.lrange("test:handled", 0, -1)) == [b"good1", b"good2"]
    assert "killing" not in daemon.log()


def test_a_second_term_to_the_master_cuts_items_and_loses_none(
    r, make_config, start_daemon, notify
):
    # Given a consumer in the middle of a long item
    config = make_config(consumers={"processes": 1, "handler": "sample_handlers:timed_record"})
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "30"})
    notify.wait("READY", "1")
    r.lpush("q", "good1")
    wait_for(lambda: r.llen("test:started") == 1, 10, "the item started")
    # When the master is told to stop twice
    daemon.send(signal.SIGTERM)
    notify.wait("STOPPING", "1")
    daemon.send(signal.SIGTERM)
    # Then it stops at once, and the cut item is back in the queue, not blamed
    assert daemon.wait_exit(10) == 0
    assert r.lrange("q", 0, -1) == [b"good1"]
    assert r.hlen("goodsd:{q}:attempts") == 0


def test_an_item_whose_own_process_a_group_stop_killed_goes_back_unblamed(
    r, make_config, start_daemon, notify
):
    # Given a consumer whose handler is waiting on a program it started
    config = make_config(consumers={"processes": 1, "handler": "sample_handlers:run_sleep"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", "good1")
    wait_for(lambda: r.llen("test:started") == 1, 10, "the item started")
    # When the stop reaches the whole process group, that program included
    group_term(daemon)
    # Then goodsd exits 0 and the item is back in the queue, no attempt counted
    assert daemon.wait_exit(15) == 0
    assert r.lrange("q", 0, -1) == [b"good1"]
    assert r.hlen("goodsd:{q}:attempts") == 0 and r.zcard("goodsd:{q}:retry") == 0
    assert "given back, no attempt counted" in daemon.log()
