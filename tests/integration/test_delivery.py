"""At least once, nothing lost: a consumer killed mid-batch, a handler that kills its worker,
and a graceful stop with a batch in flight."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

from support import wait_for

from goodsd.store import Upkeep

INFLIGHT = "goodsd:{q}:inflight:"


def registered_pids(r) -> dict[str, int]:
    """Consumer id -> pid, from the consumers hash."""
    return {
        key.decode(): json.loads(value)["pid"]
        for key, value in r.hgetall("goodsd:{q}:consumers").items()
    }


def inflight(r, consumer: str) -> list[str]:
    """What a consumer holds, oldest first."""
    return [b.decode() for b in reversed(r.lrange(INFLIGHT + consumer, 0, -1))]


def handled(r) -> list[str]:
    return [b.decode() for b in r.lrange("test:handled", 0, -1)]


def nothing_in_flight(r) -> bool:
    return all(r.llen(key) == 0 for key in r.keys(INFLIGHT + "*"))


def test_consumer_killed_mid_batch_loses_nothing(r, make_config, start_daemon, notify):
    # Given two consumers working through batches of 20 items, 20 ms each
    batch = 20
    config = make_config(
        consumers={
            "handler": "sample_handlers:paced_record",
            "batch": batch,
            "retry_delay": "200ms",
        }
    )
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "0.02"})
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(200)]
    r.lpush("q", *items)

    # When one consumer is SIGKILLed while it holds part of a batch
    def busy_consumer() -> tuple[str, int] | None:
        if r.llen("test:handled") < 10:
            return None
        for consumer, pid in registered_pids(r).items():
            if r.llen(INFLIGHT + consumer) >= 5 and pid in daemon.children():
                return consumer, pid
        return None

    victim, pid = wait_for(busy_consumer, 10, "a consumer in the middle of a batch")
    os.kill(pid, signal.SIGKILL)

    # Then the master notices, gives its items back at once and starts a replacement
    daemon.wait_log(rf"consumer \d \(pid {pid}\) killed by SIGKILL")
    requeued = daemon.wait_log(rf"requeued (\d+) in-flight item\(s\) of {victim}")
    assert int(requeued.group(1)) >= 1
    wait_for(
        lambda: len(daemon.children()) == 2 and pid not in daemon.children(),
        10,
        "a replacement consumer",
    )
    # And every item is handled, duplicates only among those in flight at the kill
    wait_for(lambda: set(handled(r)) == set(items), 20, "every item handled")
    counts = Counter(handled(r))
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= batch, counts.most_common(5)
    # And nothing is left in flight, waiting for a retry, or counting attempts
    wait_for(lambda: nothing_in_flight(r), 5, "in-flight lists empty")
    assert r.llen("q") == 0
    assert r.zcard("goodsd:{q}:retry") == 0
    assert r.llen("goodsd:{q}:dead") == 0
    assert victim not in registered_pids(r)
    assert daemon.stop() == 0
    assert r.keys(INFLIGHT + "*") == []
    assert r.hlen("goodsd:{q}:attempts") == 0


def test_item_that_kills_its_worker_ends_dead_and_takes_nothing_with_it(
    r, make_config, start_daemon, notify
):
    # Given consumers whose handler kills the worker process on the item "poison", one retry
    config = make_config(
        consumers={
            "handler": "sample_handlers:crash_on_poison",
            "batch": 5,
            "retries": 1,
            "retry_delay": "200ms",
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the poison item is pushed among good ones
    good = [f"good{i}" for i in range(40)]
    r.lpush("q", *good[:20], "poison", *good[20:])
    # Then the poison item is dead after retries + 1 = 2 attempts, blamed on the worker's death
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, 15, "the poison item in the dead list")
    record = json.loads(r.lindex("goodsd:{q}:dead", 0))
    assert record["item"] == "poison"
    assert record["attempts"] == 2
    assert record["error"] == "worker exited with status 3 while running this item"
    daemon.wait_log(r"consumer \d \(pid \d+\) exited with status 3", count=2)
    # And every other item is handled: none went down with the worker
    wait_for(lambda: set(handled(r)) == set(good), 15, "every good item handled")
    assert "poison" not in handled(r)
    wait_for(lambda: nothing_in_flight(r), 5, "in-flight lists empty")
    assert r.zcard("goodsd:{q}:retry") == 0
    assert r.hlen("goodsd:{q}:attempts") == 0
    stats = r.hgetall("goodsd:{q}:stats")
    assert int(stats[b"dead"]) == 1 and int(stats[b"failed"]) == 2
    # And the pool is whole again
    wait_for(lambda: len(daemon.children()) == 2, 10, "two consumers running")


def test_graceful_stop_gives_unstarted_items_back_to_the_pop_end(
    r, make_config, start_daemon, notify
):
    # Given two consumers with big batches of slow items (100 ms each)
    config = make_config(consumers={"handler": "sample_handlers:paced_record", "batch": 50})
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "0.1"})
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(150)]
    r.lpush("q", *items)
    # And both consumers are busy with a batch
    consumers = wait_for(
        lambda: (
            len(pids := registered_pids(r)) == 2
            and all(r.llen(INFLIGHT + c) >= 10 for c in pids)
            and r.llen("test:handled") >= 2
            and pids
        ),
        10,
        "both consumers in the middle of a batch",
    )
    held = {c: inflight(r, c) for c in consumers}

    # When goodsd is told to stop
    daemon.send(signal.SIGTERM)

    # Then it exits cleanly, each consumer having finished its current item only
    assert daemon.wait_exit(15) == 0
    done = handled(r)
    assert len(done) == len(set(done)), "an item was handled twice"
    # And every item is either handled or ready again: nothing in flight, nothing lost
    ready = [b.decode() for b in r.lrange("q", 0, -1)]
    assert sorted(done + ready) == sorted(items)
    assert r.keys(INFLIGHT + "*") == []
    assert r.hlen("goodsd:{q}:consumers") == 0
    # And the given-back items sit at the pop end, oldest first per consumer, ahead of the
    # items never claimed, which keep their FIFO order
    pop_order = list(reversed(ready))
    given_back = {c: [i for i in held[c] if i not in done] for c in held}
    count = sum(len(v) for v in given_back.values())
    assert count > 0
    assert set(pop_order[:count]) == {i for v in given_back.values() for i in v}
    for consumer, mine in given_back.items():
        assert [i for i in pop_order[:count] if i in mine] == mine, consumer
    never_claimed = [i for i in items if i not in done and all(i not in v for v in held.values())]
    assert pop_order[count:] == never_claimed
    assert int(r.hget("goodsd:{q}:stats", "requeued")) == count


def test_live_consumer_whose_lease_ran_out_registers_again(
    r, redis_server, make_config, start_daemon, notify
):
    # Given two consumers busy with items
    config = make_config(consumers={"handler": "sample_handlers:paced_record", "batch": 10})
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "0.02"})
    notify.wait("READY", "1")
    ids = wait_for(lambda: len(pids := registered_pids(r)) == 2 and pids, 5, "two consumers")
    items = [f"good{i}" for i in range(200)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:handled") >= 20, 10, "consumption under way")

    # When their leases run out while they live (as in a network partition longer than the
    # lease) and another host's master reaps them, requeueing what they hold
    other_master = Upkeep(redis_server.client(), "q")
    reaped: dict[str, int] = {}

    def reap_both() -> bool:
        for consumer in ids:
            if consumer not in reaped:
                r.delete(other_master.keys.lease(consumer))
        reaped.update(other_master.requeue_expired())
        return reaped.keys() == ids.keys()

    wait_for(reap_both, 5, "both consumers reaped")
    assert r.hlen("goodsd:{q}:consumers") == 0

    # Then the consumers carry on and register again, so a later crash of theirs stays
    # requeueable by any master
    wait_for(lambda: registered_pids(r) == ids, 5, "both consumers registered again")
    # And every item is handled, duplicates only among those they held when reaped
    wait_for(lambda: set(handled(r)) == set(items), 20, "every item handled")
    duplicates = len(handled(r)) - len(items)
    assert duplicates <= sum(reaped.values())
    assert daemon.children() == set(ids.values())
    assert daemon.stop() == 0
    assert r.keys(INFLIGHT + "*") == []
