"""The producer role: atomic backpressure, finite and command sources, restarts, the
singleton lock across masters, and turning the role on and off with SIGHUP."""

from __future__ import annotations

import json
import re
import signal
import sys
import time

from support import HERE, wait_for

from goodsd.children import HEARTBEAT_MIN

COUNTER = "goodsd.sources:counter"
REGISTRY = "goodsd:{q}:producers"
# An endless source that records in Redis how many items it has given so far.
COUNTED_SOURCE = """
import itertools, os, redis

def counted():
    client = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    for i in itertools.count():
        client.set("test:yielded", i + 1)
        yield f"item-{i}"
"""


def producers(r) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in r.hgetall(REGISTRY).items()}


def handled(r) -> list[str]:
    return [b.decode() for b in r.lrange("test:handled", 0, -1)]


def status_lines(notify) -> list[str]:
    return [fields["STATUS"] for _, fields in notify.poll() if "STATUS" in fields]


def test_two_producers_never_overshoot_and_resume_at_low_watermark(
    r, make_config, start_daemon, notify
):
    # Given two producers far faster than two slow consumers
    high, low, batch = 500, 200, 50
    config = make_config(
        consumers={"processes": 2, "handler": "sample_handlers:dawdle", "batch": 10},
        producer={
            "processes": 2,
            "source": COUNTER,
            "batch": batch,
            "high_watermark": high,
            "low_watermark": low,
        },
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the list is watched while they cycle through several pauses
    longest = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        longest = max(longest, r.llen("q"))
    # Then it never grew past the high watermark plus one batch
    assert high <= longest <= high + batch
    # And each producer logged its first pause and resume, resuming at the low watermark
    daemon.wait_log(r"producer 0 pid \d+\] paused at \d+ \(high watermark 500\)")
    daemon.wait_log(r"producer 1 pid \d+\] paused at \d+ \(high watermark 500\)")
    daemon.wait_log(r"resumed at \d+", count=2)
    resumed = [int(n) for n in re.findall(r"resumed at (\d+)", daemon.log())]
    assert all(n <= low for n in resumed), resumed
    # And not once per check, nor once per cycle: many cycles, one pause line per producer
    # (two on a machine slow enough to pass the 10 s quiet period)
    assert int(r.hget("goodsd:{q}:stats", "pushed")) > 3 * high
    assert len(re.findall(r"paused at", daemon.log())) <= 4
    # And the master's STATUS= says so
    wait_for(lambda: any("producer paused" in s for s in status_lines(notify)), 10, "STATUS paused")
    assert {p["state"] for p in producers(r).values()} <= {"active", "paused"}
    assert daemon.stop() == 0


def test_finite_source_is_pushed_completely_and_not_restarted(r, make_config, start_daemon, notify):
    # Given a producer whose source ends after 1000 items, in batches that do not divide it
    config = make_config(
        consumers={"processes": 2, "handler": "sample_handlers:record", "batch": 10},
        producer={"processes": 1, "source": "sample_sources:finite", "batch": 64},
    )
    daemon = start_daemon(config, notify=notify, env={"TEST_SOURCE_ITEMS": "1000"})
    # When it has run
    daemon.wait_log(r"producer 0 finished: pushed 1000 items")
    # Then every item is handled exactly once
    wait_for(lambda: len(handled(r)) >= 1000, 20, "all items handled")
    assert sorted(handled(r)) == sorted(f"item-{i}" for i in range(1000))
    # And the producer is done, not respawned; the consumers carry on
    notify.wait("READY", "1")
    wait_for(
        lambda: any("producers: 1 finished" in s for s in status_lines(notify)),
        10,
        "STATUS with the finished producer",
    )
    assert len(re.findall(r"started producer 0", daemon.log())) == 1
    assert len(daemon.children()) == 2
    assert [p["state"] for p in producers(r).values()] == ["finished"]
    assert int(r.hget("goodsd:{q}:stats", "pushed")) == 1000
    assert daemon.stop() == 0


def test_stop_pushes_every_item_taken_from_the_source(r, make_config, start_daemon, tmp_path):
    # Given a producer paused at its high watermark with nobody consuming
    (tmp_path / "counted_source.py").write_text(COUNTED_SOURCE)
    batch, high = 10, 50
    config = make_config(
        pythonpath=[str(HERE), str(tmp_path)],
        consumers={"processes": 0},
        producer={
            "processes": 1,
            "source": "counted_source:counted",
            "batch": batch,
            "high_watermark": high,
            "low_watermark": 20,
        },
    )
    daemon = start_daemon(config)
    daemon.wait_log(r"producer 0 pid \d+\] paused at 50")
    # And, taken from the source but not in Redis: the refused batch, the next batch, and
    # the item the source's thread holds while it waits for room
    taken = high + 2 * batch + 1
    wait_for(lambda: int(r.get("test:yielded") or 0) >= taken, 10, f"{taken} items taken")
    # When it is stopped
    assert daemon.stop() == 0
    # Then every item the source gave is in the queue, once
    assert int(r.get("test:yielded")) == taken
    assert sorted(b.decode() for b in r.lrange("q", 0, -1)) == sorted(
        f"item-{i}" for i in range(taken)
    )
    held = taken - high
    assert f"pushing the {held} item(s) taken from the source past the high watermark" in (
        daemon.log()
    )


def test_command_source_lines_become_items(r, make_config, start_daemon, notify):
    # Given a command printing 300 lines, with blank lines between them
    script = "for i in range(300): print(f'cmd-{i}'); print()"
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:record", "batch": 10},
        producer={"processes": 1, "command": [sys.executable, "-c", script]},
    )
    daemon = start_daemon(config, notify=notify)
    # When it exits 0
    daemon.wait_log(r"producer 0 finished: pushed 300 items")
    # Then each non-empty line was handled once, in order
    wait_for(lambda: len(handled(r)) >= 300, 20, "all lines handled")
    assert handled(r) == [f"cmd-{i}" for i in range(300)]
    assert daemon.stop() == 0


def test_quiet_source_is_not_taken_for_hung(r, make_config, start_daemon):
    # Given a command that prints nothing for longer than the master's hang limit (the test
    # config's 5 s lease keeps that limit at its minimum, HEARTBEAT_MIN)
    quiet = HEARTBEAT_MIN + 1
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:record", "batch": 10},
        producer={"processes": 1, "command": ["sh", "-c", f"sleep {quiet:g}; echo late"]},
    )
    daemon = start_daemon(config)
    # Then the producer keeps heartbeating meanwhile, and its late line still gets through
    daemon.wait_log(r"producer 0 finished: pushed 1 items", timeout=quiet + 15)
    wait_for(lambda: handled(r) == ["late"], 5, "the late line handled")
    assert "killing producer" not in daemon.log()
    assert daemon.stop() == 0


def test_failing_command_is_restarted_with_backoff(r, make_config, start_daemon, notify):
    # Given a command that prints one line and exits 3
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:record", "batch": 10},
        producer={"processes": 1, "command": ["sh", "-c", "echo once; exit 3"]},
    )
    daemon = start_daemon(config, notify=notify)
    # Then the failure is logged and the producer restarted with a growing delay
    daemon.wait_log(r"source failed: command 'sh' exited with status 3")
    daemon.wait_log(r"producer 0 failed to start 1 time\(s\) in a row; restarting in 0\.2s")
    daemon.wait_log(r"producer 0 failed to start 2 time\(s\) in a row; restarting in 0\.4s")
    # And what it printed before failing was pushed each time
    wait_for(lambda: handled(r).count("once") >= 2, 10, "the line of each run handled")
    assert daemon.stop() == 0


def test_crashing_source_is_restarted_with_backoff(r, make_config, start_daemon, notify):
    # Given a Python source that yields three items, then raises
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:record", "batch": 10},
        producer={"processes": 1, "source": "sample_sources:crashing"},
    )
    daemon = start_daemon(config, notify=notify)
    # Then the error is logged with its traceback and the producer is restarted with backoff
    daemon.wait_log(r"source failed: RuntimeError: source broke")
    assert "Traceback" in daemon.log()
    for n, delay in ((1, "0.2"), (2, "0.4"), (3, "0.8")):
        daemon.wait_log(rf"failed to start {n} time\(s\) in a row; restarting in {delay}s")
    # And the items it gave before failing were pushed, not lost
    wait_for(lambda: handled(r).count("early-2") >= 3, 10, "items of each run handled")
    # And consumers were never disturbed
    assert "consumer 0 (pid" in daemon.log()
    assert not re.search(r"consumer 0 .*exited", daemon.log())
    assert daemon.stop() == 0


def test_source_that_cannot_load_stops_the_service_with_78(r, make_config, start_daemon):
    # Given a source that does not return an iterable
    config = make_config(producer={"processes": 1, "source": "sample_sources:not_iterable"})
    daemon = start_daemon(config)
    # Then goodsd exits with EX_CONFIG, naming the problem
    assert daemon.wait_exit() == 78
    assert "returned int, not an iterable" in daemon.log()


def test_singleton_producer_is_exclusive_and_taken_over(r, make_config, start_daemon):
    # Given two masters on one Redis, each with a singleton producer (lock TTL = lease = 3s)
    ttl = 3.0
    config = make_config(
        consumers={"processes": 1, "handler": "goodsd.handlers:noop", "batch": 10},
        producer={
            "processes": 1,
            "source": COUNTER,
            "singleton": True,
            "high_watermark": 1000,
            "low_watermark": 500,
        },
        supervisor={"lease": f"{ttl:g}s"},
    )
    first = start_daemon(config)
    second = start_daemon(config)
    wait_for(lambda: len(producers(r)) == 2, 10, "both producers registered")

    # Then exactly one holds the lock and pushes; the other stands by and pushes nothing
    def one_holder() -> dict | None:
        records = list(producers(r).values())
        holders = [p for p in records if p["lock"]]
        standbys = [p for p in records if p["state"] == "standby"]
        return holders[0] if len(holders) == 1 and len(standbys) == 1 else None

    holder = wait_for(one_holder, 10, "one lock holder and one standby")
    for _ in range(20):
        records = list(producers(r).values())
        assert sum(p["lock"] for p in records) <= 1
        assert all(p["pushed"] == 0 for p in records if p["state"] == "standby")
    by_pid = {first.pid: first, second.pid: second}
    active = by_pid[holder["master_pid"]]
    standby = first if active is second else second

    # When the holder's master is killed with SIGKILL (its producer dies with it)
    killed_at = time.monotonic()
    active.send(signal.SIGKILL)
    # Then the other takes over within the lock's TTL
    standby.wait_log(r"took the singleton producer lock", timeout=ttl + 5)
    assert time.monotonic() - killed_at < ttl + 1.0
    pushed = int(r.hget("goodsd:{q}:stats", "pushed"))
    wait_for(lambda: int(r.hget("goodsd:{q}:stats", "pushed")) > pushed, 5, "pushing again")

    # When a third master stands by and the holder stops gracefully
    third = start_daemon(config)
    wait_for(
        lambda: sum(p["state"] == "standby" for p in producers(r).values()) == 1,
        10,
        "the third producer in standby",
    )
    # (renewals only lengthen the lock's life: it cannot expire sooner than this from now)
    expires_in = r.pttl("goodsd:{q}:producer:lock") / 1000
    stopped_at = time.monotonic()
    standby.send(signal.SIGTERM)
    # Then the lock passes at once: released, before it could have expired
    third.wait_log(r"took the singleton producer lock", timeout=ttl)
    assert time.monotonic() - stopped_at < expires_in
    assert standby.wait_exit() == 0
    assert third.stop() == 0
    assert r.get("goodsd:{q}:producer:lock") is None


def test_sighup_turns_the_producer_role_on_and_off(r, make_config, start_daemon, notify):
    # Given goodsd running consumers only
    consumers = {"processes": 2, "handler": "goodsd.handlers:noop", "batch": 10}
    producer = {"source": COUNTER, "high_watermark": 1000, "low_watermark": 500}
    config = make_config(consumers=consumers, producer={**producer, "processes": 0})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    consumer_pids = daemon.children()
    assert len(consumer_pids) == 2

    def reload(**sections: object) -> None:
        make_config(consumers=consumers, **sections)
        after = len(notify.poll())
        daemon.send(signal.SIGHUP)
        reloading = notify.wait("RELOADING", "1", after=after)
        notify.wait("READY", "1", after=notify.poll().index(reloading))

    # When a reload asks for a producer
    reload(producer={**producer, "processes": 1})
    # Then one starts and pushes, and the consumers are the same processes
    daemon.wait_log(r"producer 0 \(pid \d+\) ready")
    wait_for(lambda: r.hget("goodsd:{q}:stats", "pushed"), 5, "items pushed")
    assert consumer_pids <= daemon.children()
    assert len(producers(r)) == 1

    # When only the watermarks change
    reload(producer={**producer, "processes": 1, "high_watermark": 2000})
    # Then only the producer is rolled
    daemon.wait_log(r"producer settings changed: rolling producer children")
    daemon.wait_log(r"producer 0 \(pid \d+\) exited with status 0")
    assert consumer_pids <= daemon.children()

    # When a reload turns the role off again
    reload(producer={**producer, "processes": 0})
    # Then the producer stops cleanly and leaves the registry; consumers are untouched
    daemon.wait_log(r"producer \d \(pid \d+\) exited with status 0", count=2)
    wait_for(lambda: daemon.children() == consumer_pids, 10, "only the consumers left")
    wait_for(lambda: not producers(r), 5, "producer gone from the registry")
    assert daemon.stop() == 0
