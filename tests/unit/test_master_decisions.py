"""The master's decisions about exits, reload completion, leases and wake-ups, as pure
functions of child records and ``now``."""

from __future__ import annotations

import dataclasses

import pytest

from goodsd.children import (
    HEARTBEAT_MIN,
    ROLLBACK_AFTER,
    STABLE_AFTER,
    START_TIMEOUT,
    TIMEOUT_GRACE,
    Child,
    Exit,
    ExitPlan,
    State,
    all_running,
    keeps_lease,
    next_deadline,
    overdue,
    plan_exit,
    proven_roles,
    reconcile,
    roll_settled,
    roll_stuck,
)
from goodsd.config import Config, ConsumersConfig, SupervisorConfig
from goodsd.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from goodsd.master import wanted_counts
from goodsd.notify import status_line
from goodsd.reloader import role_settings

GEN = {"consumer": 1, "producer": 1}
WANT_TWO = {"consumer": 2, "producer": 0}


def consumer(seq: int, state: State = State.RUNNING, generation: int = 1, **kw: object) -> Child:
    kw.setdefault("index", seq)
    kw.setdefault("pid", 1000 + seq)
    return Child(role="consumer", seq=seq, generation=generation, state=state, **kw)


def decide(child: Child, code: int | None, now: float, **kw: object) -> ExitPlan:
    args: dict[str, object] = {
        "ready_sent": True,
        "can_roll_back": False,
        "base": 1.0,
        "cap": 8.0,
        **kw,
    }
    return plan_exit(child, code, now, **args)  # type: ignore[arg-type]


# --- what an exit leads to --------------------------------------------------------------------


def test_a_reloaded_child_that_keeps_crashing_undoes_the_reload() -> None:
    # Given a child of a reloaded config that has already failed to start twice
    child = consumer(1, State.STARTING, started_at=0.0, crashes=ROLLBACK_AFTER - 1)
    # When it crashes again before it is ready
    plan = decide(child, EXIT_FAILURE, 0.5, can_roll_back=True)
    # Then the reload is undone instead of backing off once more
    assert plan.action is Exit.ROLLBACK and plan.crashes == ROLLBACK_AFTER
    # While with nothing to undo, it only backs off
    assert decide(child, EXIT_FAILURE, 0.5).action is Exit.RESTART


def test_one_crash_of_a_reloaded_child_is_only_a_failed_start() -> None:
    child = consumer(1, State.STARTING, started_at=0.0)
    assert decide(child, EXIT_FAILURE, 0.5, can_roll_back=True).action is Exit.RESTART


def test_a_stopping_child_that_exits_is_simply_gone() -> None:
    child = consumer(1, State.STOPPING, started_at=0.0)
    assert decide(child, EXIT_FAILURE, 1.0).action is Exit.GONE
    assert decide(child, EXIT_CONFIG, 1.0, ready_sent=False).action is Exit.GONE


def test_a_handler_that_cannot_load_before_ready_is_fatal() -> None:
    child = consumer(1, State.STARTING, started_at=0.0)
    assert decide(child, EXIT_CONFIG, 0.5, ready_sent=False) == ExitPlan(Exit.FATAL)


def test_a_handler_that_cannot_load_after_a_reload_rolls_back() -> None:
    child = consumer(1, State.STARTING, started_at=0.0)
    assert decide(child, EXIT_CONFIG, 0.5, can_roll_back=True) == ExitPlan(Exit.ROLLBACK)


def test_a_handler_broken_on_disk_with_nothing_to_roll_back_backs_off() -> None:
    # Given a running service whose handler module broke: a restarted child exits 78
    child = consumer(1, State.STARTING, started_at=0.0, failures=2)
    # Then it is a failed start like any other: a longer delay, not a tight loop or an exit
    assert decide(child, EXIT_CONFIG, 0.5) == ExitPlan(Exit.RESTART, 3, 4.0)


def test_failed_starts_back_off_doubling_up_to_the_cap() -> None:
    child = consumer(1, State.STARTING, started_at=0.0)
    delays = []
    for _ in range(6):
        plan = decide(child, EXIT_FAILURE, 0.1)
        child.failures = plan.failures
        delays.append(plan.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_crash_after_a_stable_run_restarts_at_once_and_resets_the_count() -> None:
    child = consumer(1, started_at=0.0, ready_at=0.1, failures=5)
    assert decide(child, EXIT_FAILURE, STABLE_AFTER + 1) == ExitPlan(Exit.RESTART, 0, 0.0)


def test_a_planned_recycle_restarts_at_once() -> None:
    # Given a child that exits 0 after max_items, even quickly
    child = consumer(1, started_at=0.0, ready_at=0.1, failures=3)
    assert decide(child, EXIT_OK, 1.0) == ExitPlan(Exit.RESTART, 0, 0.0)


def test_a_child_killed_soon_after_start_counts_as_a_failed_start() -> None:
    child = consumer(1, started_at=0.0, ready_at=0.1, kill_reason="item running for 7.0s")
    assert decide(child, None, 1.0) == ExitPlan(Exit.RESTART, 1, 1.0)


# --- READY --------------------------------------------------------------------------------------


def test_first_ready_needs_every_wanted_child_running() -> None:
    assert not all_running([consumer(1), consumer(2, State.STARTING)], WANT_TWO)
    assert not all_running([consumer(1), consumer(2, State.BACKOFF)], WANT_TWO)
    assert all_running([consumer(1), consumer(2)], WANT_TWO)
    assert all_running([], {"consumer": 0, "producer": 0})


def test_a_roll_is_settled_only_when_children_match_the_config_exactly() -> None:
    generation = {"consumer": 2, "producer": 1}
    new_a, new_b = consumer(3, generation=2), consumer(4, generation=2)
    # old children still serving: not settled
    assert not roll_settled([consumer(1), new_a, new_b], WANT_TWO, generation)
    # an old child still stopping: not settled
    old_stopping = consumer(1, State.STOPPING)
    assert not roll_settled([old_stopping, new_a, new_b], WANT_TWO, generation)
    # a new one still starting: not settled
    starting = consumer(4, State.STARTING, generation=2)
    assert not roll_settled([new_a, starting], WANT_TWO, generation)
    # exactly the new ones running: settled
    assert roll_settled([new_a, new_b], WANT_TWO, generation)


def test_a_reload_is_proven_once_one_of_its_children_handled_an_item() -> None:
    # Given a reload that brought generation 2 of the consumers
    generation, previous = {"consumer": 2, "producer": 1}, {"consumer": 1, "producer": 1}
    first, second = consumer(3, generation=2), consumer(4, generation=2)
    # Then while none of its children has handled an item, the consumer role is unproven
    assert proven_roles([first, second], generation, previous, {first: 0}) == {"producer"}
    # And once one has, it is proven; roles the reload did not change never wait
    assert proven_roles([first, second], generation, previous, {second: 1}) == {
        "consumer",
        "producer",
    }


def test_a_reloaded_child_that_crashes_before_the_reload_is_proven_undoes_it() -> None:
    # Given a child of an unproven reload that already crashed twice, after running a while
    child = consumer(1, State.RUNNING, started_at=0.0, ready_at=0.1, crashes=ROLLBACK_AFTER - 1)
    # When it crashes again (not a failed start: it ran longer than STABLE_AFTER)
    plan = decide(child, EXIT_FAILURE, STABLE_AFTER + 10, can_roll_back=True)
    # Then the reload is undone
    assert plan.action is Exit.ROLLBACK and plan.crashes == ROLLBACK_AFTER
    # While a proven one (or a planned recycle) only restarts, counting no crash
    assert decide(child, EXIT_FAILURE, STABLE_AFTER + 10) == ExitPlan(Exit.RESTART)
    assert decide(child, EXIT_OK, STABLE_AFTER + 10, can_roll_back=True).crashes == 0


def test_a_shrink_is_settled_once_the_surplus_has_exited() -> None:
    keep, surplus = consumer(2), consumer(1, State.STOPPING)
    want_one = {"consumer": 1, "producer": 0}
    assert not roll_settled([surplus, keep], want_one, GEN)
    assert roll_settled([keep], want_one, GEN)


def test_a_roll_is_stuck_when_a_new_child_backs_off() -> None:
    generation = {"consumer": 2, "producer": 1}
    assert roll_stuck([consumer(1), consumer(3, State.BACKOFF, generation=2)], generation)
    assert not roll_stuck([consumer(1, State.BACKOFF), consumer(3, generation=2)], generation)


# --- leases -------------------------------------------------------------------------------------


def test_leases_are_kept_for_live_children_only() -> None:
    running = consumer(1, started_at=0.0, ready_at=1.0)
    now = 100.0
    # idle with a fresh heartbeat: kept; stale: dropped
    assert keeps_lease(running, now - 1, 0.0, now, 30.0, HEARTBEAT_MIN)
    assert not keeps_lease(running, now - HEARTBEAT_MIN - 1, 0.0, now, 30.0, HEARTBEAT_MIN)
    # busy within its timeout and grace: kept, however old the heartbeat; past it: dropped
    assert keeps_lease(running, 0.0, now - 30.0 - TIMEOUT_GRACE + 1, now, 30.0, HEARTBEAT_MIN)
    assert not keeps_lease(running, 0.0, now - 30.0 - TIMEOUT_GRACE - 1, now, 30.0, 15.0)


@pytest.mark.parametrize(
    "child",
    [
        consumer(1, State.STARTING),  # not registered yet
        consumer(1, State.BACKOFF, pid=0),  # no process
        consumer(1, kill_reason="no heartbeat for 16.0s"),  # killed, being reaped
    ],
)
def test_no_lease_for_children_not_serving(child: Child) -> None:
    assert not keeps_lease(child, 100.0, 0.0, 100.0, 30.0, HEARTBEAT_MIN)


def test_a_child_loses_its_lease_when_it_becomes_overdue_not_before() -> None:
    # The lease and the kill use one measure: a hung child is killed as its lease stops
    running = consumer(1, started_at=0.0, ready_at=1.0)
    for now in (110.0, 114.9, 115.1, 130.0):
        kept = keeps_lease(running, 100.0, 0.0, now, 30.0, HEARTBEAT_MIN)
        killed = bool(overdue(running, 100.0, 0.0, now, 30.0, HEARTBEAT_MIN))
        assert kept != killed, now


# --- wake-ups and slots -------------------------------------------------------------------------


def test_the_loop_wakes_for_the_earliest_restart_or_stop_deadline() -> None:
    children = [
        consumer(1, State.BACKOFF, restart_at=12.0),
        consumer(2, State.STOPPING, stop_deadline=11.5),
        consumer(3, restart_at=1.0),  # running: its old restart time means nothing
    ]
    assert next_deadline(children) == 11.5
    assert next_deadline([consumer(1)]) is None


def test_a_slot_still_held_by_a_stopping_child_is_not_reused() -> None:
    # Given slot 0 stopping (a shrink, then a grow before it exited) and slot 1 running
    children = [consumer(1, State.STOPPING, index=0), consumer(2, index=1)]
    plan = reconcile(children, WANT_TWO, GEN)
    assert plan.spawn == (("consumer", 2),)


# --- what a reload compares ---------------------------------------------------------------------


def test_only_a_change_in_what_children_run_with_rolls_them() -> None:
    base = Config(consumers=ConsumersConfig(processes=2, handler="m:f"))
    resized = dataclasses.replace(base, consumers=ConsumersConfig(processes=5, handler="m:f"))
    other_handler = dataclasses.replace(base, consumers=ConsumersConfig(handler="m:g"))
    calmer = dataclasses.replace(base, supervisor=SupervisorConfig(graceful_timeout=60.0))
    assert role_settings(base, "consumer") == role_settings(resized, "consumer")
    assert role_settings(base, "consumer") == role_settings(calmer, "consumer")
    assert role_settings(base, "consumer") != role_settings(other_handler, "consumer")
    assert role_settings(base, "producer") == role_settings(other_handler, "producer")


def test_ttin_and_ttou_adjust_the_consumer_count_never_below_zero() -> None:
    config = Config(consumers=ConsumersConfig(processes=2))
    assert wanted_counts(config, 1) == {"consumer": 3, "producer": 0}
    assert wanted_counts(config, -5) == {"consumer": 0, "producer": 0}


def test_status_line_is_ascii_so_the_message_is_never_dropped() -> None:
    # A reload error may quote a path or a value in any script
    assert status_line("last reload failed: /etc/gööds.yaml: 值") == (
        "STATUS=last reload failed: /etc/g\\xf6\\xf6ds.yaml: \\u503c"
    )


def test_a_child_starting_while_redis_is_away_is_not_a_failed_start() -> None:
    # Given a child still starting long past START_TIMEOUT
    child = consumer(1, State.STARTING, started_at=0.0)
    late = START_TIMEOUT + 10
    # Then it is killed as a failed start, unless it is waiting out a Redis outage and
    # heartbeating meanwhile
    assert overdue(child, late, 0.0, late, 30.0, 15.0).startswith("not ready after")
    assert overdue(child, late, 0.0, late, 30.0, 15.0, waiting_on_redis=True) == ""
    assert overdue(child, 0.0, 0.0, late, 30.0, 15.0, waiting_on_redis=True) != ""
