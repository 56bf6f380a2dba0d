"""A consumer whose in-flight list no longer matches what it claimed (its lease lapsed, or a
Redis failover lost recent writes) starts afresh instead of settling the wrong items."""

from __future__ import annotations

import pytest
from support import wait_for

from goodsd.store import (
    Failure,
    InFlightLost,
    RedisConsumerStore,
    Registration,
    RetryPolicy,
    Settlement,
)


def test_a_settle_that_no_longer_matches_changes_nothing(r):
    # Given a consumer that claimed two items
    queue = RedisConsumerStore(r, "q")
    queue.register("c1", Registration(host="h", pid=1), 30)
    r.lpush("q", "good1", "good2")
    claimed = queue.claim("c1", 2, 30, 0)
    # When Redis's in-flight list changes behind its back (an unknown item at the oldest end)
    r.rpush("goodsd:{q}:inflight:c1", "ghost")
    before = (r.lrange("goodsd:{q}:inflight:c1", 0, -1), r.hgetall("goodsd:{q}:stats"))
    # Then settling them raises, and nothing was changed
    with pytest.raises(InFlightLost):
        queue.settle(
            "c1",
            Settlement("s1", done=(claimed[0],), failed=(Failure(claimed[1], "boom"),)),
            RetryPolicy(3, 1),
        )
    assert (r.lrange("goodsd:{q}:inflight:c1", 0, -1), r.hgetall("goodsd:{q}:stats")) == before
    assert r.zcard("goodsd:{q}:retry") == 0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_consumer_out_of_step_gives_back_everything_and_carries_on(
    concurrency, r, make_config, start_daemon, notify
):
    # Given one consumer whose in-flight list drifts while it runs a batch (or while it runs
    # 4 items at once: those running go back too, and their outcomes are dropped)
    config = make_config(
        consumers={
            "processes": 1,
            "batch": 20,
            "handler": "sample_handlers:drift_on_marker",
            "concurrency": concurrency,
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(10)] + ["drift"] + [f"good{i}" for i in range(10, 20)]
    # When the items arrive (oldest first) and the drift happens mid-batch
    r.lpush("q", *items)
    # Then it notices, gives everything held back, and every item (and the stranger) is
    # handled, with nothing left in flight and nobody blamed
    daemon.wait_log(r"no longer matches what it claimed")
    wanted = set(items) | {"ghost"}
    wait_for(
        lambda: {x.decode() for x in r.lrange("test:handled", 0, -1)} >= wanted,
        20,
        "every item and the stranger handled",
    )
    # (the last batch is settled just after its last item is recorded)
    wait_for(
        lambda: (
            r.llen("q") == 0 and not any(r.llen(k) for k in r.scan_iter("goodsd:{q}:inflight:*"))
        ),
        10,
        "an empty queue, the last batch settled",
    )
    assert [k for k in r.scan_iter("goodsd:{q}:inflight:*") if r.llen(k)] == []
    assert r.llen("goodsd:{q}:dead") == 0 and r.zcard("goodsd:{q}:retry") == 0
