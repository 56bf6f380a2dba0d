"""Redis goes away for a while and comes back: goodsd waits it out, no process restarts, and
consumption resumes where it stopped with nothing lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import wait_for


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def statuses_since(notify, index: int) -> list[str]:
    return [f["STATUS"] for _, f in notify.poll()[index:] if "STATUS" in f]


def take_redis_away(r, redis_server, daemon, notify) -> None:
    """Shut Redis down with its data saved (as a restarted production server keeps it), keep it
    away until both consumers and the master have noticed, then bring it back with that data.
    The session server runs without persistence: the dump is removed once it is loaded."""
    dump = Path(redis_server.directory) / "dump.rdb"
    try:
        r.shutdown(save=True)
        redis_server.stop()
        outage_starts = len(notify.poll())
        daemon.wait_log(r"redis unavailable", count=2)
        wait_for(
            lambda: any("waiting for redis at" in s for s in statuses_since(notify, outage_starts)),
            10,
            "the master's status to show it waits for redis",
        )
        redis_server.start()
    finally:
        dump.unlink(missing_ok=True)


def start_recording(
    tmp_path, make_config, start_daemon, notify, lease: str, seconds: str, concurrency: int = 1
):
    """goodsd with two consumers that record items in a file (not in Redis, which goes away),
    each running ``concurrency`` items at once."""
    out = tmp_path / "handled"
    config = make_config(
        consumers={
            "handler": "sample_handlers:paced_record_to_file",
            "batch": 10,
            "concurrency": concurrency,
        },
        supervisor={"lease": lease},
    )
    env = {"TEST_OUT": str(out), "TEST_ITEM_SECONDS": seconds}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    consumers = wait_for(lambda: len(daemon.children()) == 2 and daemon.children(), 5, "pids")
    return daemon, out, consumers


@pytest.mark.parametrize("concurrency", [1, 8])
def test_consumption_resumes_after_a_redis_restart(
    concurrency, r, redis_server, tmp_path, make_config, start_daemon, notify
):
    # Given goodsd with a lease far longer than the outage (no lease runs out meanwhile)
    daemon, out, consumers = start_recording(
        tmp_path, make_config, start_daemon, notify, "30s", "0.01", concurrency
    )
    registered = r.hgetall("goodsd:{q}:consumers")
    # And items pushed before the outage, being worked on
    before = [f"before{i}" for i in range(300)]
    r.lpush("q", *before)
    wait_for(lambda: len(lines(out)) >= 30, 10, "consumption under way")

    # When Redis goes away for a while, then comes back
    take_redis_away(r, redis_server, daemon, notify)
    # And the items produced during the outage (kept by their producer) are pushed
    during = [f"during{i}" for i in range(100)]
    r.lpush("q", *during)

    # Then every item is handled once, with the same master and the same consumers
    everything = set(before + during)
    wait_for(lambda: set(lines(out)) == everything, 20, "every item handled")
    assert len(lines(out)) == len(everything), "items handled twice"
    assert daemon.proc.poll() is None
    assert daemon.children() == consumers
    assert r.hgetall("goodsd:{q}:consumers") == registered
    log = daemon.log()
    assert len(re.findall(r"started consumer", log)) == 2
    assert not re.search(r"consumer \d \(pid \d+\) (exited|killed)", log)
    # And the master reports a real backlog again
    resumed = len(notify.poll())
    wait_for(
        lambda: any(re.search(r"backlog \d+", s) for s in statuses_since(notify, resumed)),
        10,
        "a status with a known backlog",
    )
    assert daemon.stop() == 0
    assert r.keys("goodsd:{q}:inflight:*") == []
    assert int(r.hget("goodsd:{q}:stats", "done")) == len(everything)


def test_consumers_outliving_their_lease_in_an_outage_carry_on(
    r, redis_server, tmp_path, make_config, start_daemon, notify
):
    # Given goodsd with the shortest lease, busy with items
    daemon, out, consumers = start_recording(
        tmp_path, make_config, start_daemon, notify, lease="1s", seconds="0.02"
    )
    items = [f"good{i}" for i in range(200)]
    r.lpush("q", *items)
    wait_for(lambda: len(lines(out)) >= 20, 10, "consumption under way")
    # When Redis stays away longer than the lease, so the leases are gone when it returns
    take_redis_away(r, redis_server, daemon, notify)
    # Then every item is still handled, by the same consumers
    wait_for(lambda: set(lines(out)) == set(items), 20, "every item handled")
    assert daemon.children() == consumers
    # And both are registered, so that any master could requeue their items later
    wait_for(
        lambda: (
            sorted(json.loads(v)["pid"] for v in r.hvals("goodsd:{q}:consumers"))
            == sorted(consumers)
        ),
        5,
        "both consumers registered",
    )
    assert daemon.stop() == 0
    assert r.keys("goodsd:{q}:inflight:*") == []
