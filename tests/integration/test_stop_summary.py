"""A graceful stop ends with one line saying what became of the items in hand: how many the
consumers finished during the stop, how many went back to the queue."""

from __future__ import annotations

import random
import re
import signal

import pytest
from support import wait_for

SUMMARY = re.compile(
    r"stopped: (\d+) item\(s\) finished during the stop \((\d+) failed\), (\d+) given back"
)


def summary(daemon) -> tuple[int, int, int]:
    """(finished, failed, given back) from the master's last words."""
    found = SUMMARY.findall(daemon.log())
    assert len(found) == 1, daemon.log()[-3000:]
    finished, failed, given_back = found[0]
    return int(finished), int(failed), int(given_back)


def start_gated(make_config, start_daemon, notify, r, consumers: int, batch: int, **supervisor):
    """A master whose consumers each hold a full batch, every one of them stuck in its first
    item behind the gate. Returns the daemon and the items pushed."""
    config = make_config(
        consumers={"processes": consumers, "handler": "gated_handlers:gated", "batch": batch},
        supervisor=supervisor,
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"{'bad' if i % 3 == 0 else 'good'}-{i}" for i in range(consumers * batch + 3)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == consumers, 10, "every consumer in an item")
    return daemon, items


@pytest.mark.parametrize("seed", range(3))
def test_a_stop_counts_what_finished_and_what_went_back(r, make_config, start_daemon, notify, seed):
    # Given consumers each holding a batch, each in its first item
    rng = random.Random(seed)
    consumers, batch = rng.randint(1, 3), rng.randint(1, 6)
    daemon, items = start_gated(make_config, start_daemon, notify, r, consumers, batch)
    # When goodsd is told to stop, and the items in hand may then end
    daemon.send(signal.SIGTERM)
    daemon.wait_log(r"stopping: waiting up to")
    r.rpush("test:gate", "open")
    assert daemon.wait_exit(15) == 0
    # Then the last line counts the items finished since the stop; one whose handler failed
    # once the stop had begun is not among them (it is given back, no attempt counted)...
    finished, failed, given_back = summary(daemon)
    handled = [item.decode() for item in r.lrange("test:handled", 0, -1)]
    assert finished == sum(not item.startswith("bad-") for item in handled)
    assert len(handled) >= consumers and failed == 0
    # ...and those given back: every other item the consumers held, now waiting to run again
    assert given_back == consumers * batch - finished
    assert given_back == int(r.hget("goodsd:{q}:stats", "requeued") or 0)
    assert r.llen("q") == len(items) - finished
    assert r.keys("goodsd:{q}:inflight:*") == []


def test_items_of_consumers_killed_at_the_graceful_timeout_count_as_given_back(
    r, make_config, start_daemon, notify
):
    # Given two consumers holding three items each, stuck in their first for good
    daemon, items = start_gated(make_config, start_daemon, notify, r, 2, 3, graceful_timeout="1s")
    # When goodsd is told to stop and the graceful timeout runs out
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0
    assert "did not stop within 1s: killing it" in daemon.log()
    # Then nothing finished, and all six items went back
    assert summary(daemon) == (0, 0, 6)
    assert r.llen("q") == len(items)
