"""The master's Redis housekeeping (goodsd.housekeeping): whom to kill, whose leases to renew,
what to requeue and whom to blame, as pure decisions over real scoreboards; and the pause
after a failed Redis call, with a stand-in for the master's queue client (no Redis)."""

from __future__ import annotations

import redis

from goodsd.children import TIMEOUT_GRACE, Child, Role, State
from goodsd.config import Config, parse
from goodsd.housekeeping import (
    REDIS_PAUSE,
    Housekeeping,
    Requeue,
    lease_holders,
    leftovers,
    overdue_children,
    requeue_of,
)
from goodsd.scoreboard import Scoreboard
from goodsd.store import Registration

CONFIG = parse(
    "consumers: {processes: 2, handler: goodsd.handlers:noop, timeout: 10s, retries: 2}\n"
    "supervisor: {lease: 60s}\n",
    "goodsd.yaml",
)


def consumer(index: int, state: State = State.RUNNING, **kw: object) -> Child:
    kw.setdefault("config", CONFIG)
    kw.setdefault("board", Scoreboard())
    return Child(
        role=Role.CONSUMER,
        index=index,
        seq=index,
        generation=1,
        state=state,
        pid=1000 + index,
        identity=f"host-{1000 + index}-abc",
        **kw,
    )


def test_a_consumer_that_died_running_an_item_blames_it() -> None:
    child = consumer(0)
    child.board.write(heartbeat=50.0, busy_since=50.0, item=3)
    rec = requeue_of(child, child.board.read(), "killed by SIGSEGV", CONFIG)
    assert rec == Requeue(
        child.identity, (3,), "worker killed by SIGSEGV while running this item", CONFIG
    )


def test_a_killed_consumer_blames_only_the_items_it_was_killed_for() -> None:
    # Given a consumer running three items in three slots, one of them past its timeout
    child = consumer(0, board=Scoreboard(slots=3))
    child.board.write(heartbeat=119.0)
    child.board.busy(100.0, 4, slot=0)
    child.board.busy(118.0, 5, slot=1)
    child.board.busy(119.0, 6, slot=2)
    # When the master finds it overdue and kills it
    [(found, reason, blamed)] = overdue_children([child], now=100.0 + 10 + TIMEOUT_GRACE + 1)
    assert found is child and reason.startswith("item running for 16.0s")
    child.kill_reason, child.blamed = reason, blamed
    # Then its requeue blames the overdue item only; the two beside it go back unblamed
    rec = requeue_of(child, child.board.read(), "killed by SIGKILL", CONFIG)
    assert (rec.running, rec.error) == ((4,), f"worker killed: {reason}")


def test_a_consumer_that_crashed_blames_every_item_it_was_running() -> None:
    child = consumer(0, board=Scoreboard(slots=3))
    child.board.busy(100.0, 4, slot=0)
    child.board.busy(101.0, 6, slot=2)
    rec = requeue_of(child, child.board.read(), "killed by SIGSEGV", CONFIG)
    assert rec.running == (4, 6)


def test_a_stop_blames_nothing_and_an_idle_consumer_blames_nothing() -> None:
    stopping = consumer(0, State.STOPPING)
    stopping.board.write(heartbeat=50.0, busy_since=50.0, item=0)
    idle = consumer(1)
    assert requeue_of(stopping, stopping.board.read(), "exited with status 0", CONFIG).running == ()
    assert requeue_of(idle, idle.board.read(), "killed by SIGKILL", CONFIG).running == ()


def test_overdue_children_are_the_hung_and_the_late() -> None:
    late, fine, silent = consumer(0), consumer(1), consumer(2)
    late.board.write(heartbeat=100.0, busy_since=100.0, item=0)
    fine.board.write(heartbeat=114.0)
    silent.board.write(heartbeat=10.0)
    kills = overdue_children([late, fine, silent], now=100.0 + 10 + TIMEOUT_GRACE + 1)
    assert [(c.index, why.split(",")[0]) for c, why, _ in kills] == [
        (0, "item running for 16.0s"),
        (2, "no heartbeat for 106.0s"),
    ]


def test_leases_are_renewed_for_live_consumers_only_grouped_by_queue() -> None:
    other = parse("queue: other\nconsumers: {handler: goodsd.handlers:noop}\n", "goodsd.yaml")
    a, b, hung, gone = consumer(0), consumer(1, config=other), consumer(2), consumer(3)
    for child in (a, b):
        child.board.write(heartbeat=100.0)
    hung.board.write(heartbeat=1.0)
    gone.board.write(heartbeat=100.0)
    gone.kill_reason = "no heartbeat"
    holders = lease_holders([a, b, hung, gone], now=100.0)
    assert [(cfg.queue, ids) for cfg, ids in holders] == [
        (CONFIG.queue, [a.identity]),
        ("other", [b.identity]),
    ]


def test_leftovers_are_this_hosts_dead_consumers_whose_master_is_dead_too() -> None:
    def reg(host: str, pid: int, master: int, pidns: str = "ns1") -> Registration:
        return Registration(host=host, pid=pid, pidns=pidns, master_pid=master)

    registered = {
        "dead": reg("h", 10, 1),
        "known": reg("h", 11, 1),
        "elsewhere": reg("other", 12, 1),
        "other-namespace": reg("h", 13, 1, pidns="ns2"),
        "master-alive": reg("h", 14, 99),
        "alive": reg("h", 15, 1),
    }
    alive = {15, 99}
    found = leftovers(
        registered, {"known"}, host="h", pidns="ns1", alive=lambda pid, start: pid in alive
    )
    assert found == ["dead"]


class FakeQueue:
    """Stands in for the master's queue client: requeue answers from a list of outcomes."""

    def __init__(self, outcomes: list[object]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def requeue(self, consumer: str, *, running: tuple[int, ...], **kw: object) -> int:
        self.calls.append((consumer, running))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[return-value]


def housekeeping(config: Config, queue: FakeQueue) -> tuple[Housekeeping, list[float]]:
    now = [100.0]
    keeper = Housekeeping(lambda: now[0])
    keeper.queues[(config.redis, config.queue)] = queue  # type: ignore[assignment]
    return keeper, now


def test_a_requeue_redis_refuses_waits_and_is_done_once_redis_answers() -> None:
    queue = FakeQueue([redis.ConnectionError("refused"), 2])
    keeper, now = housekeeping(CONFIG, queue)
    # When Redis is away at the requeue
    assert keeper.requeue(Requeue("c1", (0,), "worker died", CONFIG)) == []
    assert keeper.waiting() == {"c1"}
    # Then nothing is tried during the pause, and once it is over the requeue is done
    assert keeper.retry_requeues() == [] and len(queue.calls) == 1
    now[0] += REDIS_PAUSE
    assert keeper.retry_requeues() == [("c1", 2)]
    assert keeper.waiting() == set() and queue.calls == [("c1", (0,)), ("c1", (0,))]


def test_a_failed_call_pauses_the_others_and_is_said_as_an_outage() -> None:
    keeper, now = housekeeping(CONFIG, FakeQueue([]))
    calls = []

    def fails() -> None:
        calls.append(now[0])
        raise redis.ConnectionError("Error 111 connecting. Connection refused.")

    assert keeper.do("backlog", fails) is None
    assert keeper.do("backlog", lambda: 5) is None  # skipped: still in the pause
    assert keeper.outage.trouble is not None
    now[0] += REDIS_PAUSE
    assert keeper.do("backlog", lambda: 5) == 5
    assert calls == [100.0] and keeper.outage.trouble is None


CONCURRENT = parse(
    "consumers: {processes: 1, handler: goodsd.handlers:noop, timeout: 10s, concurrency: 4}\n"
    "supervisor: {lease: 60s}\n",
    "goodsd.yaml",
)


def test_a_consumer_with_items_in_slots_is_judged_by_its_main_loops_heartbeat() -> None:
    # Given two consumers with 4 slots, both running items that started recently
    hung, fine = (consumer(i, config=CONCURRENT, board=Scoreboard(slots=4)) for i in (0, 1))
    for child in (hung, fine):
        child.board.busy(95.0, 7, slot=0)
        child.board.busy(99.0, 8, slot=1)
    # When the main loop of one stopped beating long ago, while the other's beats on
    hung.board.write(heartbeat=10.0)
    fine.board.write(heartbeat=99.5)
    # Then the hung one is killed for its heartbeat, though items in its slots started lately,
    # and blames no item (none is past its timeout); neither keeps its lease but the fine one
    [(found, reason, blamed)] = overdue_children([hung, fine], now=100.0)
    assert found is hung and reason == "no heartbeat for 90.0s" and blamed == ()
    assert [ids for _, ids in lease_holders([hung, fine], now=100.0)] == [[fine.identity]]


def test_one_item_at_a_time_is_not_judged_by_heartbeat_while_it_runs() -> None:
    child = consumer(0)
    child.board.write(heartbeat=10.0, busy_since=95.0, item=7)
    assert overdue_children([child], now=100.0) == []
