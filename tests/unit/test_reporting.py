"""What a master tells operators (goodsd.reporting): the STATUS= line, its registry entry and
the metrics snapshot, made from children with real scoreboards; no Redis, no process."""

from __future__ import annotations

from goodsd import __version__
from goodsd.children import Child, Role, State
from goodsd.redisconn import Kind, Trouble
from goodsd.reporting import Rates, Situation, master_entry, metrics_snapshot, status_text
from goodsd.scoreboard import FLAG_PAUSED, FLAG_STANDBY, REDIS_WAIT_SHIFT, Scoreboard

ROLES = (Role.CONSUMER, Role.PRODUCER)
CALM = Situation("redis://localhost:6379", None, 42, 1234.4, "")


def child(role: Role, index: int, state: State = State.RUNNING, flags: int = 0, **kw) -> Child:
    board = Scoreboard()
    board.write(heartbeat=1.0, flags=flags)
    return Child(role=role, index=index, seq=index, generation=1, state=state, board=board, **kw)


def test_status_counts_children_by_role_and_state_with_backlog_and_rate() -> None:
    children = [
        child(Role.CONSUMER, 0),
        child(Role.CONSUMER, 1),
        child(Role.CONSUMER, 2, State.BACKOFF, restart_at=12.5),
        child(Role.PRODUCER, 0, flags=FLAG_PAUSED),
    ]
    assert status_text(children, ROLES, 10.0, CALM) == (
        "consumers: 2 running, 1 backoff (next restart in 2.5s); producers: 1 running; "
        "producer paused; backlog 42; 1234 items/s"
    )


def test_status_says_what_redis_trouble_is_waited_out_and_a_failed_reload() -> None:
    waiting = child(Role.CONSUMER, 0, flags=Kind.READ_ONLY.code << REDIS_WAIT_SHIFT)
    standby = child(Role.PRODUCER, 0, flags=FLAG_STANDBY)
    seen = Situation("redis://localhost:6379", None, 7, 0.0, "bad.yaml:3: consumers.batch")
    assert status_text([waiting, standby], ROLES, 0.0, seen) == (
        "consumers: 1 running; producers: 1 running; "
        "producer standby (another instance holds the lock); "
        f"waiting for redis ({Kind.READ_ONLY.label}); backlog 7; 0 items/s; "
        "last reload failed: bad.yaml:3: consumers.batch"
    )
    away = Situation("redis://localhost:6379", Trouble(Kind.UNREACHABLE, "refused"), None, 0.0, "")
    assert status_text([], ROLES, 0.0, away) == (
        "consumers: none; waiting for redis at redis://localhost:6379: "
        f"{Kind.UNREACHABLE.label} (refused); 0 items/s"
    )


def test_rates_count_handled_items_per_second_and_never_go_back() -> None:
    first, second = child(Role.CONSUMER, 0), child(Role.CONSUMER, 1)
    rates = Rates()
    rates.update([first, second], 10.0)
    first.board.write(heartbeat=2.0, done=30, failed=10)
    rates.retired_total = 60  # a consumer that handled 60 items is gone meanwhile
    rates.update([first, second], 12.0)
    assert rates.per_second == 50.0


def test_the_registry_entry_counts_running_children_by_role() -> None:
    children = [
        child(Role.CONSUMER, 0),
        child(Role.CONSUMER, 1, State.STARTING),
        child(Role.PRODUCER, 0),
    ]
    entry = master_entry(children, host="h", pid=7, started=1.23456, seen=9.87654)
    assert (entry.host, entry.pid, entry.started, entry.seen, entry.version) == (
        "h",
        7,
        1.235,
        9.877,
        __version__,
    )
    assert (entry.consumers, entry.producers) == (1, 1)


def test_the_registry_entry_says_how_many_items_each_consumer_runs() -> None:
    busy = child(Role.CONSUMER, 0, identity="h-1-aa")
    busy.board = Scoreboard(slots=4)
    busy.board.busy(5.0, 11, slot=0)
    busy.board.busy(6.0, 12, slot=3)
    idle = child(Role.CONSUMER, 1, identity="h-2-bb")
    entry = master_entry([busy, idle, child(Role.PRODUCER, 0)], host="h", pid=1, started=0, seen=0)
    assert entry.running == {"h-1-aa": 2, "h-2-bb": 0}


def test_the_metrics_snapshot_has_every_role_and_state_and_a_paused_producer() -> None:
    children = [child(Role.CONSUMER, 0), child(Role.PRODUCER, 0, flags=FLAG_PAUSED)]
    snap = metrics_snapshot(children, queue="q", overview=None, restarts=3, reload_ok=False)
    counts = {(role, state): n for role, state, n in snap.children}
    assert len(counts) == len(Role) * len(State)
    assert counts[(Role.CONSUMER, "running")] == 1 and counts[(Role.PRODUCER, "running")] == 1
    assert sum(counts.values()) == 2
    assert (snap.queue, snap.restarts, snap.producer_paused, snap.reload_ok) == (
        "q",
        3,
        True,
        False,
    )
