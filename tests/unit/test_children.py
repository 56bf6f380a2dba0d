"""The master's decisions about its children, as pure functions of state and ``now``."""

from __future__ import annotations

import random
import signal

import pytest

from goodsd.backoff import backoff_delay
from goodsd.children import (
    HEARTBEAT_MIN,
    START_TIMEOUT,
    TIMEOUT_GRACE,
    TRANSITIONS,
    Child,
    IllegalTransition,
    State,
    describe_exit,
    failed_start,
    heartbeat_timeout,
    overdue,
    reconcile,
)

GEN = {"consumer": 1, "producer": 1}


def consumer(seq: int, state: State = State.RUNNING, generation: int = 1, **kw: object) -> Child:
    """A consumer child in slot ``seq`` unless ``index`` says otherwise."""
    kw.setdefault("index", seq)
    return Child(role="consumer", seq=seq, generation=generation, state=state, **kw)


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    # Given a base of 1 s and a cap of 60 s
    # When a child keeps failing
    delays = [backoff_delay(n, 1.0, 60.0) for n in range(0, 10)]
    # Then there is no delay before any failure, then 1, 2, 4 ... never above 60
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_survives_a_huge_failure_count() -> None:
    # Given a child that failed more times than a float exponent can take
    # Then the delay is still the cap, not an overflow
    assert backoff_delay(10_000, 0.2, 5.0) == 5.0
    assert backoff_delay(-1, 0.2, 5.0) == 0.0


# --- failed starts ----------------------------------------------------------------------------


def test_a_child_that_never_got_ready_failed_to_start() -> None:
    child = consumer(1, State.STARTING, started_at=100.0)
    assert failed_start(child, now=1000.0)


def test_a_child_that_dies_soon_after_ready_failed_to_start() -> None:
    child = consumer(1, started_at=100.0, ready_at=100.5)
    assert failed_start(child, now=103.0)


def test_a_child_that_ran_for_a_while_did_not_fail_to_start() -> None:
    child = consumer(1, started_at=100.0, ready_at=100.5)
    assert not failed_start(child, now=106.0)


# --- reconcile --------------------------------------------------------------------------------


def test_reconcile_grows_a_pool_into_free_slots() -> None:
    # Given one running consumer in slot 1
    children = [consumer(1)]
    # When three are wanted
    plan = reconcile(children, {"consumer": 3, "producer": 0}, GEN)
    # Then two are spawned, in the lowest free slots, and nobody retires
    assert plan.spawn == (("consumer", 0), ("consumer", 2))
    assert plan.retire == ()


def test_reconcile_from_nothing_fills_slots_from_zero() -> None:
    plan = reconcile([], {"consumer": 3, "producer": 1}, GEN)
    assert plan.spawn == (("consumer", 0), ("consumer", 1), ("consumer", 2), ("producer", 0))
    assert plan.retire == ()


def test_reconcile_matching_pool_does_nothing() -> None:
    children = [consumer(1), consumer(2, State.STARTING), consumer(3, State.BACKOFF)]
    plan = reconcile(children, {"consumer": 3, "producer": 0}, GEN)
    assert plan.spawn == () and plan.retire == ()


def test_reconcile_shrinks_retiring_backoff_first_then_highest_slot() -> None:
    # Given four slots: 0, 2 and 3 running (3 the oldest process: restarted, spawn order is no
    # guide) and 1 waiting in backoff
    backoff = consumer(4, State.BACKOFF, index=1)
    highest = consumer(1, index=3)
    children = [consumer(3, index=2), highest, backoff, consumer(2, index=0)]
    # When only two are wanted
    plan = reconcile(children, {"consumer": 2, "producer": 0}, GEN)
    # Then the one in backoff goes first (it serves nobody), then the highest slot
    assert plan.retire == (backoff, highest)
    assert plan.spawn == ()


@pytest.mark.parametrize("seed", range(50))
def test_a_shrink_keeps_slots_0_to_n_minus_1_whatever_the_spawn_order(seed: int) -> None:
    # Given a pool in slots 0..size-1 whose processes were (re)started in any order
    rng = random.Random(seed)
    size = rng.randint(1, 12)
    seqs = rng.sample(range(1, 100), size)
    children = [
        consumer(seq, rng.choice([State.RUNNING, State.STARTING]), index=index)
        for index, seq in enumerate(seqs)
    ]
    rng.shuffle(children)
    # When fewer are wanted
    want = rng.randint(0, size)
    plan = reconcile(children, {"consumer": want, "producer": 0}, GEN)
    # Then the highest slots retire and slots 0..want-1 keep serving
    assert sorted(c.index for c in plan.retire) == list(range(want, size))
    assert plan.spawn == ()


def test_reconcile_ignores_children_already_stopping() -> None:
    # Given one consumer stopping and one running, with two wanted
    children = [consumer(1, State.STOPPING), consumer(2)]
    # Then a replacement for the stopping one is spawned, in a slot of its own
    plan = reconcile(children, {"consumer": 2, "producer": 0}, GEN)
    assert plan.retire == ()
    assert len(plan.spawn) == 1
    assert plan.spawn[0][1] not in (1, 2)


def test_rolling_keeps_outdated_children_until_replacements_run() -> None:
    # Given two consumers of generation 1, running, and a reload that made generation 2
    old_a, old_b = consumer(1), consumer(2)
    generation = {"consumer": 2, "producer": 1}
    wanted = {"consumer": 2, "producer": 0}
    # When the roll starts
    plan = reconcile([old_a, old_b], wanted, generation)
    # Then two new children are spawned and the old ones keep serving
    assert len(plan.spawn) == 2 and plan.retire == ()

    # When the replacements exist but are still starting
    new_a = consumer(3, State.STARTING, generation=2)
    new_b = consumer(4, State.STARTING, generation=2)
    plan = reconcile([old_a, old_b, new_a, new_b], wanted, generation)
    # Then nothing retires yet
    assert plan.spawn == () and plan.retire == ()

    # When one replacement is RUNNING
    new_a.state = State.RUNNING
    plan = reconcile([old_a, old_b, new_a, new_b], wanted, generation)
    # Then exactly one outdated child retires, the oldest
    assert plan.retire == (old_a,)

    # When both replacements are RUNNING
    new_b.state = State.RUNNING
    plan = reconcile([old_a, old_b, new_a, new_b], wanted, generation)
    # Then the outdated ones all retire
    assert set(map(id, plan.retire)) == {id(old_a), id(old_b)}


def test_a_shrink_during_a_roll_retires_the_highest_new_slot_and_old_ones_as_before() -> None:
    # Given a roll under way: old children in slots 0 and 1, their replacements running in
    # slots 2 and 3 (a slot still held is not reused)
    generation = {"consumer": 2, "producer": 1}
    old_a, old_b = consumer(1, index=0), consumer(2, index=1)
    new_a, new_b = consumer(3, index=2, generation=2), consumer(4, index=3, generation=2)
    # When only one is wanted
    plan = reconcile([old_a, old_b, new_a, new_b], {"consumer": 1, "producer": 0}, generation)
    # Then the highest new slot goes, and the old ones go since a new one serves
    assert set(map(id, plan.retire)) == {id(new_b), id(old_a), id(old_b)}
    assert plan.spawn == ()


def test_rolling_drops_outdated_children_that_are_not_serving_at_once() -> None:
    # Given outdated children that are starting or backing off
    starting = consumer(1, State.STARTING)
    backoff = consumer(2, State.BACKOFF)
    generation = {"consumer": 2, "producer": 1}
    # When the roll is planned
    plan = reconcile([starting, backoff], {"consumer": 2, "producer": 0}, generation)
    # Then they retire now, and two current children are spawned
    assert set(map(id, plan.retire)) == {id(starting), id(backoff)}
    assert len(plan.spawn) == 2


# --- overdue ----------------------------------------------------------------------------------


def test_an_item_past_timeout_plus_grace_is_overdue() -> None:
    # Given a running consumer whose item started at t=100 with a 30 s timeout
    child = consumer(1, started_at=0.0, ready_at=1.0)
    # Then it is fine up to the grace and overdue after it
    assert overdue(child, 129.0, 100.0, 100.0 + 30 + TIMEOUT_GRACE - 0.1, 30.0, 10.0) == ""
    reason = overdue(child, 129.0, 100.0, 100.0 + 30 + TIMEOUT_GRACE + 1, 30.0, 10.0)
    assert reason == "item running for 36.0s, past timeout 30s"


def test_a_busy_child_needs_no_fresh_heartbeat_within_its_timeout() -> None:
    child = consumer(1, started_at=0.0, ready_at=1.0)
    # Given a consumer whose last heartbeat came when its item started, 25 s ago
    reason = overdue(
        child, heartbeat=100.0, busy_since=100.0, now=125.0, timeout=30.0, heartbeat_timeout=10.0
    )
    # Then it is not hung: a running item beats no heartbeat, the timeout guards it instead
    assert reason == ""


def test_an_idle_child_with_a_stale_heartbeat_is_overdue() -> None:
    child = consumer(1, started_at=0.0, ready_at=1.0)
    assert overdue(child, 100.0, 0.0, 109.0, 30.0, 10.0) == ""
    assert overdue(child, 100.0, 0.0, 112.5, 30.0, 10.0) == "no heartbeat for 12.5s"


def test_a_child_not_ready_within_the_start_timeout_is_overdue() -> None:
    # Given a starting child (its heartbeat does not matter before it is ready)
    child = consumer(1, State.STARTING, started_at=50.0)
    # Then it is fine up to START_TIMEOUT and overdue after
    assert overdue(child, 0.0, 0.0, 50.0 + START_TIMEOUT - 1, 30.0, 10.0) == ""
    assert overdue(child, 0.0, 0.0, 50.0 + START_TIMEOUT + 1, 30.0, 10.0) == (
        f"not ready after {START_TIMEOUT:g}s"
    )


def test_children_in_backoff_or_already_killed_are_never_overdue() -> None:
    assert overdue(consumer(1, State.BACKOFF), 0.0, 0.0, 1e6, 30.0, 10.0) == ""
    killed = consumer(2, kill_reason="no heartbeat for 11.0s")
    assert overdue(killed, 0.0, 0.0, 1e6, 30.0, 10.0) == ""


def test_without_a_timeout_a_busy_child_is_never_overdue() -> None:
    # Given a producer (no per-item timeout) busy for a long time
    producer = Child(role="producer", index=0, seq=1, generation=1, state=State.RUNNING)
    assert overdue(producer, 0.0, 1.0, 1e6, None, 10.0) == ""


def test_heartbeat_timeout_is_half_the_lease_but_at_least_the_minimum() -> None:
    # The minimum outlasts one blocked Redis call of a child (10 s socket timeout + claim wait)
    assert HEARTBEAT_MIN > 11.0
    assert heartbeat_timeout(5.0) == HEARTBEAT_MIN
    assert heartbeat_timeout(60.0) == 30.0


# --- exit statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, ("exited with status 0", 0, None)),
        (3 << 8, ("exited with status 3", 3, None)),
        (78 << 8, ("exited with status 78", 78, None)),
        (signal.SIGKILL, ("killed by SIGKILL", None, signal.SIGKILL)),
        (signal.SIGTERM, ("killed by SIGTERM", None, signal.SIGTERM)),
        (0x80 | signal.SIGSEGV, ("killed by SIGSEGV", None, signal.SIGSEGV)),  # core dumped
        (40, ("killed by signal 40", None, 40)),  # a real-time signal without a name
    ],
)
def test_describe_exit(status: int, expected: tuple[str, int | None, int | None]) -> None:
    assert describe_exit(status) == expected


def test_child_name_shows_its_pid_only_while_it_has_one() -> None:
    assert consumer(1, pid=4242).name == "consumer 1 (pid 4242)"
    assert consumer(1, State.BACKOFF).name == "consumer 1"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (State.FINISHED, State.STARTING),
        (State.STOPPING, State.RUNNING),
        (State.BACKOFF, State.RUNNING),
        (State.RUNNING, State.STARTING),
    ],
)
def test_a_move_no_supervision_path_makes_fails_loudly(start: State, end: State) -> None:
    child = Child(role="consumer", index=0, seq=1, generation=1, state=start)
    with pytest.raises(IllegalTransition, match=f"{start.value} -> {end.value}"):
        child.move_to(end)
    assert child.state is start


def test_every_allowed_move_is_made() -> None:
    for start, ends in TRANSITIONS.items():
        for end in ends:
            child = Child(role="consumer", index=0, seq=1, generation=1, state=start)
            child.move_to(end)
            assert child.state is end
