"""Consumers drain a list that any program fills with plain LPUSH, and lose nothing."""

from __future__ import annotations

import signal

from support import wait_for


def test_every_pushed_item_is_handled_once(r, make_config, start_daemon, notify):
    # Given a running goodsd with two consumers recording what they handle
    config = make_config(consumers={"handler": "sample_handlers:record", "batch": 50})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When 10,000 unique items are pushed with plain LPUSH
    items = [f"good{i}" for i in range(10_000)]
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(items), 1000):
        pipe.lpush("q", *items[start : start + 1000])
    pipe.execute()
    # Then each is handled exactly once and nothing stays in flight
    wait_for(lambda: r.llen("test:handled") >= len(items), 60, "all items handled")
    handled = [b.decode() for b in r.lrange("test:handled", 0, -1)]
    assert sorted(handled) == sorted(items)
    assert r.llen("q") == 0
    assert daemon.stop() == 0
    assert r.keys("goodsd:{q}:inflight:*") == []
    assert int(r.hget("goodsd:{q}:stats", "done")) == len(items)


def test_sigterm_exits_cleanly(r, make_config, start_daemon, notify):
    # Given a running goodsd
    daemon = start_daemon(make_config(), notify=notify)
    notify.wait("READY", "1")
    # When it gets SIGTERM
    daemon.send(signal.SIGTERM)
    # Then it says STOPPING, exits 0 and its consumers deregister
    notify.wait("STOPPING", "1")
    assert daemon.wait_exit() == 0
    wait_for(lambda: r.hlen("goodsd:{q}:consumers") == 0, 5, "consumers deregistered")


def test_max_items_recycles_workers_without_losing_or_overshooting(
    r, make_config, start_daemon, notify
):
    # Given one consumer that is replaced after every 5 items, claiming 10 at a time
    config = make_config(
        consumers={"processes": 1, "max_items": 5, "batch": 10, "handler": "sample_handlers:record"}
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When 12 items arrive
    r.lpush("q", *[f"good{i}" for i in range(12)])
    # Then all are handled once, by three workers in turn, each stopping at its 5th item
    wait_for(lambda: r.llen("test:handled") == 12, 20, "all items handled")
    assert sorted(x.decode() for x in r.lrange("test:handled", 0, -1)) == sorted(
        f"good{i}" for i in range(12)
    )
    daemon.wait_log(r"handled 5 items \(max_items\): exiting to be replaced", count=2)
    assert "failed to start" not in daemon.log()
    assert r.llen("q") == 0
