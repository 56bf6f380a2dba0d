"""A handler that forks cannot clone a consumer: a forked child that returns into goodsd's
code exits at once, so no item runs twice and nothing outlives the master."""

from __future__ import annotations

from support import wait_for
from test_command_handler import session_members


def test_a_forked_child_that_returns_exits_at_once(r, make_config, start_daemon, notify):
    # Given a handler whose forked child returns instead of exiting
    config = make_config(
        consumers={"processes": 1, "batch": 3, "handler": "sample_handlers:fork_and_return"}
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When six items are handled
    items = [f"good{i}" for i in range(6)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:handled") >= 6, 10, "six items handled")
    # Then each item ran once, and no clone of the consumer is left running
    wait_for(lambda: len(session_members(daemon.pid)) == 2, 10, "only the master and its consumer")
    assert sorted(x.decode() for x in r.lrange("test:handled", 0, -1)) == items
    assert daemon.stop() == 0
    wait_for(lambda: not session_members(daemon.pid), 10, "nothing left in the session")
    assert "forked" in daemon.log()
