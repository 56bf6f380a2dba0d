"""consumers.concurrency above 1, with the real daemon: each handler kind (threads for a plain
def, asyncio tasks for an async def, programs for a command) runs many items at once per
process, and every guarantee of one item at a time holds: nothing lost on a kill, a timeout
blames only its item, a stop finishes what runs and one cut short (graceful_timeout, a second
TERM) gives everything back unblamed, a frozen process is killed and its items run again,
max_items counts across slots."""

from __future__ import annotations

import json
import os
import signal

import pytest
from ops_cli import goodsd
from support import wait_for
from test_command_handler import dead_records

# handler kind -> consumers settings (async ones get their client from an async setup)
THREADS = {"handler": "sample_handlers:shuffled_record"}
TASKS = {
    "handler": "sample_handlers:shuffled_record_async",
    "setup": "sample_handlers:connect_async",
}
RECORD_COMMAND = ["sh", "-c", 'printf "%s\\n" "$(cat)" >> "$OUT"']


# Commands that keep the same records in Redis as the Python handlers, through redis-cli on
# the tests' server (a unix socket): set -e, so that a failed write fails the item.
CLI = 'redis-cli -s "${TEST_REDIS_URL#unix://}"'
RECORD_IN_REDIS = {
    "handler": None,
    "command": ["sh", "-c", f'set -e; item=$(cat); {CLI} rpush test:handled "$item" > /dev/null'],
}
RECORD_WHEN_RELEASED = {
    "handler": None,
    "command": [
        "sh",
        "-c",
        f'set -e; item=$(cat); {CLI} rpush test:started "$item" > /dev/null; '
        f'until [ "$({CLI} exists test:go)" = 1 ]; do sleep 0.01; done; '
        f'{CLI} rpush test:handled "$item" > /dev/null',
    ],
}


def push(r, items: list[str]) -> None:
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(items), 1000):
        pipe.lpush("q", *items[start : start + 1000])
    pipe.execute()


def handled(r) -> list[str]:
    return [b.decode() for b in r.lrange("test:handled", 0, -1)]


def the_dead_record(r, timeout: float, what: str) -> dict[str, object]:
    """The one dead record, once there is one (``what`` names it in a timeout's message)."""
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, timeout, what)
    [record] = dead_records(r)
    return record


def nothing_held(r) -> bool:
    return r.keys("goodsd:{q}:inflight:*") == [] and r.llen("q") == 0


@pytest.mark.parametrize("kind", [THREADS, TASKS], ids=["threads", "tasks"])
def test_ten_thousand_items_finish_out_of_order_each_once(
    kind, r, make_config, start_daemon, notify
):
    # Given two consumers running 50 items each at once, each item taking a random moment
    config = make_config(consumers={**kind, "concurrency": 50})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When 10,000 unique items are pushed
    items = [f"good{i}" for i in range(10_000)]
    push(r, items)
    # Then each is handled exactly once, and counted done once
    wait_for(lambda: r.llen("test:handled") >= len(items), 60, "all items handled")
    assert sorted(handled(r)) == sorted(items)
    assert daemon.stop() == 0
    assert nothing_held(r)
    assert int(r.hget("goodsd:{q}:stats", "done")) == len(items)
    # (each claimed once, however many its consumer held when it claimed)
    assert int(r.hget("goodsd:{q}:stats", "claimed")) == len(items)
    assert "Traceback" not in daemon.log()


def test_commands_run_many_at_once_each_item_once(r, tmp_path, make_config, start_daemon, notify):
    # Given one consumer running up to 20 commands at once, each appending its item to $OUT
    out = tmp_path / "out"
    config = make_config(
        consumers={"processes": 1, "command": RECORD_COMMAND, "handler": None, "concurrency": 20}
    )
    daemon = start_daemon(config, notify=notify, env={"OUT": str(out)})
    notify.wait("READY", "1")
    # When 1,000 items are pushed (a program per item costs milliseconds of CPU: 1,000 take
    # 4 to 8 s on the 2-core VM, so 10,000 would take most of a minute for little more)
    items = [f"good{i}" for i in range(1_000)]
    push(r, items)
    # Then each reached a command exactly once
    wait_for(
        lambda: out.exists() and len(out.read_text().splitlines()) >= len(items),
        60,
        "every item through a command",
    )
    assert sorted(out.read_text().splitlines()) == sorted(items)
    assert daemon.stop() == 0
    assert nothing_held(r)
    assert int(r.hget("goodsd:{q}:stats", "done")) == len(items)
    assert int(r.hget("goodsd:{q}:stats", "claimed")) == len(items)


def test_retries_and_the_dead_list_work_as_one_at_a_time(r, make_config, start_daemon, notify):
    # Given one consumer running 10 items at once, decoding JSON, whose handler fails the first
    # attempt at each item, retried after 100 ms
    config = make_config(
        consumers={
            "handler": "sample_handlers:fail_first_attempt",
            "processes": 1,
            "concurrency": 10,
            "decode": "json",
            "retry_delay": "100ms",
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When 30 items arrive, one of them not JSON, and two of them equal
    items = [f'"good{i}"' for i in range(28)] + ['"good0"', "not json"]
    r.lpush("q", *items)
    # Then every good one is done after one retry (the two equal ones as two deliveries), and
    # the bad one is dead at once without retries
    wait_for(lambda: r.llen("test:handled") == 29, 20, "every good item handled")
    assert sorted(handled(r)) == sorted(["good0", *(f"good{i}" for i in range(28))])
    [record] = dead_records(r)
    assert record["item"] == "not json" and record["attempts"] == 1
    assert str(record["error"]).startswith("malformed: not JSON")
    wait_for(lambda: nothing_held(r), 5, "nothing held")
    assert r.hlen("goodsd:{q}:attempts") == 0 and r.zcard("goodsd:{q}:retry") == 0
    assert int(r.hget("goodsd:{q}:stats", "retried")) == 28
    assert daemon.stop() == 0


RELEASED = {
    "threads": {"handler": "sample_handlers:record_when_released"},
    "tasks": {
        "handler": "sample_handlers:record_when_released_async",
        "setup": "sample_handlers:connect_async",
    },
    "command": RECORD_WHEN_RELEASED,
}


@pytest.mark.parametrize("kind", sorted(RELEASED))
def test_a_killed_consumer_s_running_items_all_run_again(
    kind, r, make_config, start_daemon, notify
):
    # Given one consumer running 8 items at once, each waiting for a go, and 4 more claimed
    settings = {"processes": 1, "concurrency": 8, "retry_delay": "100ms"}
    config = make_config(consumers={**RELEASED[kind], **settings})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(12)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == 8, 10, "8 items running")
    # When the consumer is killed with all 8 running
    (child,) = daemon.children()
    os.kill(child, signal.SIGKILL)
    # Then its items are requeued at once, and a replacement runs them all
    daemon.wait_log(r"requeued 12 in-flight item\(s\)")
    r.set("test:go", 1)
    wait_for(lambda: len(set(handled(r))) == len(items), 20, "every item handled")
    assert sorted(set(handled(r))) == sorted(items)
    wait_for(lambda: nothing_held(r), 5, "nothing held")
    assert r.llen("goodsd:{q}:dead") == 0


def test_an_item_that_kills_its_worker_among_others_ends_dead_alone(
    r, make_config, start_daemon, notify
):
    # Given one consumer running 10 items at once whose handler SIGKILLs its own process on
    # the item "poison", one retry
    settings = {"processes": 1, "concurrency": 10, "retries": 1, "retry_delay": "100ms"}
    config = make_config(
        consumers={"handler": "sample_handlers:sigkill_self_on_poison", **settings}
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the poison item arrives first, among 30 good ones, so that it runs beside others
    good = [f"good{i}" for i in range(30)]
    r.lpush("q", "poison", *good)
    # Then it ends in the dead list after retries + 1 = 2 attempts, each blamed on a death it
    # caused running alone (the deaths beside others blamed nobody)
    record = the_dead_record(r, 60, "the poison item in the dead list")
    assert record["item"] == "poison" and record["attempts"] == 2
    assert record["error"] == "worker killed by SIGKILL while running this item"
    # And every good item is handled (at least once: a death redoes what ran beside it), none
    # dead, and nothing is left suspect, in flight or waiting
    wait_for(lambda: set(handled(r)) == set(good), 30, "every good item handled")
    wait_for(lambda: nothing_held(r), 5, "nothing held")
    assert r.zcard("goodsd:{q}:retry") == 0 and r.hlen("goodsd:{q}:attempts") == 0
    assert r.hlen("goodsd:{q}:suspects") == 0
    stats = r.hgetall("goodsd:{q}:stats")
    assert (int(stats[b"dead"]), int(stats[b"failed"])) == (1, 2)
    assert len(daemon.log().split("killed by SIGKILL")) - 1 >= 2
    assert daemon.stop() == 0


def test_status_shows_the_items_each_consumer_runs(r, make_config, start_daemon, notify):
    # Given one consumer running 6 items at once, each waiting for a go, with 2 more claimed
    config = make_config(consumers={**RELEASED["threads"], "processes": 1, "concurrency": 6})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", *[f"good{i}" for i in range(8)])
    wait_for(lambda: r.llen("test:started") == 6, 10, "6 items running")
    # When the operator asks for the status, once the master has reported
    (child,) = daemon.children()

    def consumers() -> list[dict[str, object]]:
        result = goodsd(config, "status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["consumers"]

    wait_for(lambda: [c["running"] for c in consumers()] == [6], 10, "6 running reported")
    # Then its one consumer holds all 8 and runs 6 of them, and the human view says so too
    [row] = consumers()
    assert (row["pid"], row["in_flight"], row["running"]) == (child, 8, 6)
    table = goodsd(config, "status").stdout.split("consumers:")[1].splitlines()
    assert table[1].split()[:4] == ["HOST", "PID", "ITEMS", "RUNNING"]
    assert table[2].split()[1:4] == [str(child), "8", "6"]
    r.set("test:go", 1)


HANGS = {
    "tasks": {
        "handler": "sample_handlers:hang_on_marker_async",
        "setup": "sample_handlers:connect_async",
    },
    "command": {
        "handler": None,
        "command": ["sh", "-c", 'item=$(cat); [ "$item" = hang ] && exec sleep 60; exit 0'],
    },
}


@pytest.mark.parametrize("kind", sorted(HANGS))
def test_an_item_past_its_timeout_is_cut_alone(kind, r, make_config, start_daemon, notify):
    # Given one consumer running 4 items at once, a 1 s timeout and no retries
    config = make_config(
        consumers={**HANGS[kind], "processes": 1, "concurrency": 4, "timeout": "1s", "retries": 0}
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When one item hangs among others
    items = [f"good{i}" for i in range(20)]
    r.lpush("q", "hang", *items)
    # Then the hung one is cut at the timeout and dead after its one attempt, the process
    # is not killed, and every other item is done, without an attempt counted
    record = the_dead_record(r, 15, "the hung item dead")
    assert record["item"] == "hang" and record["attempts"] == 1
    assert "timed out after 1s" in str(record["error"])
    wait_for(lambda: int(r.hget("goodsd:{q}:stats", "done") or 0) == len(items), 10, "all done")
    assert r.hlen("goodsd:{q}:attempts") == 0
    assert "killing" not in daemon.log()


def test_a_sync_item_past_its_timeout_blames_it_alone(r, make_config, start_daemon, notify):
    # Given one consumer running 4 items at once in threads, a 1 s timeout and no retries
    config = make_config(
        consumers={
            "handler": "sample_handlers:hang_on_marker",
            "processes": 1,
            "concurrency": 4,
            "timeout": "1s",
            "retries": 0,
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When one item hangs while the others keep flowing (50 ms each)
    items = [f"good{i}" for i in range(400)]
    r.lpush("q", "hang", *items)
    # Then the master kills the process once it is past timeout and grace (a thread cannot
    # be stopped); only the hung item counts an attempt (dead, with no retries), and the
    # items running beside it are given back and done by the replacement
    daemon.wait_log(r"killing consumer 0 \(pid \d+\): item running for")
    record = the_dead_record(r, 10, "the hung item dead")
    assert record["item"] == "hang" and record["attempts"] == 1
    wait_for(lambda: len(set(handled(r))) == len(items), 30, "every other item handled")
    assert r.llen("goodsd:{q}:dead") == 1


@pytest.mark.parametrize("kind", sorted(RELEASED))
def test_a_stop_finishes_the_running_items_and_gives_back_the_rest(
    kind, r, make_config, start_daemon, notify
):
    # Given one consumer with 6 items running (each waiting for a go) and more claimed
    config = make_config(consumers={**RELEASED[kind], "processes": 1, "concurrency": 6})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(30)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == 6, 10, "6 items running")
    # When goodsd is told to stop, and the running items then get their go
    daemon.send(signal.SIGTERM)
    daemon.wait_log(r"stopping consumer 0")
    wait_for(lambda: r.llen("q") == len(items) - 6, 10, "the unstarted items given back")
    r.set("test:go", 1)
    # Then the 6 finish, none is cut, the rest wait in the queue, and goodsd exits 0
    assert daemon.wait_exit(15) == 0
    started = sorted(b.decode() for b in r.lrange("test:started", 0, -1))
    assert sorted(handled(r)) == started
    assert sorted(started + [b.decode() for b in r.lrange("q", 0, -1)]) == sorted(items)
    assert r.keys("goodsd:{q}:inflight:*") == [] and r.hlen("goodsd:{q}:attempts") == 0
    assert "killing" not in daemon.log()


RECORDING = {"threads": THREADS, "tasks": TASKS, "command": RECORD_IN_REDIS}


@pytest.mark.parametrize("kind", sorted(RECORDING))
def test_max_items_counts_across_slots(kind, r, make_config, start_daemon, notify):
    # Given one consumer running 8 items at once, replaced after every 20
    config = make_config(
        consumers={
            **RECORDING[kind],
            "processes": 1,
            "concurrency": 8,
            "batch": 10,
            "max_items": 20,
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When 50 items arrive
    items = [f"good{i}" for i in range(50)]
    r.lpush("q", *items)
    # Then all are handled once, by three processes in turn, each stopping at its 20th
    wait_for(lambda: r.llen("test:handled") == len(items), 20, "all items handled")
    assert sorted(handled(r)) == sorted(items)
    daemon.wait_log(r"handled 20 items \(max_items\): exiting to be replaced", count=2)
    assert "handled 2[1-9] items" not in daemon.log()
    # (the last items' outcomes are written in a batch at most 200 ms after they finish)
    wait_for(lambda: nothing_held(r), 5, "nothing held")


def test_a_handler_that_blocks_the_event_loop_is_named(r, make_config, start_daemon, notify):
    # Given one consumer running async items, one of which blocks the loop for 1.5 s
    config = make_config(
        consumers={
            "handler": "sample_handlers:block_loop_on_marker",
            "setup": "sample_handlers:connect_async",
            "processes": 1,
            "concurrency": 10,
        }
    )
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "1.5"})
    notify.wait("READY", "1")
    # When that item comes among others
    r.lpush("q", "good1", "block", "good2")
    # Then a warning names it while it blocks, the loop recovers, and every item is done
    daemon.wait_log(r"the event loop has been blocked for \d+\.\ds by item block:")
    daemon.wait_log(r"the event loop runs again")
    wait_for(lambda: r.llen("test:handled") == 3, 10, "every item handled")


def test_an_async_handler_one_item_at_a_time_runs_to_completion(
    r, make_config, start_daemon, notify
):
    # Given one consumer with an async handler and the default concurrency of 1
    config = make_config(consumers={"handler": "sample_handlers:record_async", "processes": 1})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When items are pushed
    r.lpush("q", "good1", "good2")
    # Then each coroutine ran to its end (it records after awaiting)
    wait_for(lambda: r.llen("test:handled") == 2, 10, "both items handled")
    assert sorted(handled(r)) == ["good1", "good2"]
    assert "never awaited" not in daemon.log()


def test_a_loop_blocked_past_the_timeout_fails_its_blocker_alone(
    r, make_config, start_daemon, notify
):
    # Given one consumer running async items with a 1 s timeout and no retries, one of
    # which blocks the loop for 4 s
    config = make_config(
        consumers={
            "handler": "sample_handlers:block_loop_on_marker",
            "setup": "sample_handlers:connect_async",
            "processes": 1,
            "concurrency": 10,
            "timeout": "1s",
            "retries": 0,
        }
    )
    daemon = start_daemon(config, notify=notify, env={"TEST_ITEM_SECONDS": "4"})
    notify.wait("READY", "1")
    # When that item comes among others, which then cannot run on
    r.lpush("q", "good1", "block", "good2")
    # Then once they are past their timeout the worker gives up on its loop: the blocker is
    # dead after one attempt, the others go back unblamed and a replacement does them; the
    # master kills nobody
    record = the_dead_record(r, 10, "the blocker dead")
    assert record["item"] == "block" and record["attempts"] == 1
    assert str(record["error"]).startswith("ItemTimeout: blocked the event loop for ")
    wait_for(lambda: sorted(handled(r)) == ["good1", "good2"], 10, "the others handled")
    assert r.hlen("goodsd:{q}:attempts") == 0
    daemon.wait_log(r"consumer 0 \(pid \d+\) ready", count=2)
    assert "killing" not in daemon.log()


def test_graceful_timeout_cuts_running_threads_and_gives_their_items_back(
    r, make_config, start_daemon, notify
):
    # Given one consumer with 6 items running in threads (each waiting for a go that never
    # comes), 4 more claimed, and a 1 s graceful timeout
    config = make_config(
        consumers={**RELEASED["threads"], "processes": 1, "concurrency": 6},
        supervisor={"graceful_timeout": "1s"},
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(10)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == 6, 10, "6 items running")
    # When goodsd is told to stop and the items do not finish in time
    daemon.send(signal.SIGTERM)
    # Then the consumer is killed at the graceful timeout, goodsd exits 0, and every item is
    # back in the queue with no attempt counted (the stop was not their fault)
    assert daemon.wait_exit(10) == 0
    assert "did not stop within 1s: killing it" in daemon.log()
    assert sorted(b.decode() for b in r.lrange("q", 0, -1)) == sorted(items)
    assert r.hlen("goodsd:{q}:attempts") == 0 and r.llen("goodsd:{q}:dead") == 0
    assert r.zcard("goodsd:{q}:retry") == 0 and r.keys("goodsd:{q}:inflight:*") == []
    assert r.llen("test:handled") == 0


def test_a_second_term_cuts_running_threads_and_gives_everything_back(
    r, make_config, start_daemon, notify
):
    # Given one consumer with 6 items running in threads (each waiting for a go) and 4 more
    # claimed, and the default graceful timeout of the tests (10 s)
    config = make_config(consumers={**RELEASED["threads"], "processes": 1, "concurrency": 6})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(10)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == 6, 10, "6 items running")
    # When the master is told to stop twice
    daemon.send(signal.SIGTERM)
    notify.wait("STOPPING", "1")
    daemon.send(signal.SIGTERM)
    # Then it stops at once, and every item is back in the queue, none blamed
    assert daemon.wait_exit(5) == 0
    assert sorted(b.decode() for b in r.lrange("q", 0, -1)) == sorted(items)
    assert r.hlen("goodsd:{q}:attempts") == 0 and r.llen("goodsd:{q}:dead") == 0
    assert r.zcard("goodsd:{q}:retry") == 0 and r.keys("goodsd:{q}:inflight:*") == []
    assert r.llen("test:handled") == 0


def test_a_frozen_consumer_with_threads_running_is_killed_and_its_items_run_again(
    r, make_config, start_daemon, notify
):
    # Given one consumer with 6 items running in threads (each waiting for a go) and 2 more
    # claimed, retried at once should they count an attempt
    config = make_config(
        consumers={
            **RELEASED["threads"],
            "processes": 1,
            "concurrency": 6,
            "retry_delay": "100ms",
        }
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    items = [f"good{i}" for i in range(8)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == 6, 10, "6 items running")
    # When the process freezes: its main loop beats no more while its items are running
    (child,) = daemon.children()
    os.kill(child, signal.SIGSTOP)
    # Then the master kills it for its stale heartbeat (after max(15 s, lease / 2)), its items
    # go back to the queue, and a replacement runs them all
    daemon.wait_log(rf"killing consumer 0 \(pid {child}\): no heartbeat for", timeout=25)
    daemon.wait_log(r"requeued 8 in-flight item\(s\)")
    r.set("test:go", 1)
    wait_for(lambda: len(set(handled(r))) == len(items), 20, "every item handled")
    assert sorted(set(handled(r))) == sorted(items)
    wait_for(lambda: nothing_held(r), 5, "nothing held")
    assert r.llen("goodsd:{q}:dead") == 0
