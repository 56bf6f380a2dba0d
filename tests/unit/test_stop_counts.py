"""The stop summary's counting, from scoreboards and the master's requeues."""

from __future__ import annotations

from goodsd.children import Child, State
from goodsd.scoreboard import Scoreboard
from goodsd.stopsummary import StopSummary


def child(role: str, index: int, pid: int, **counters: int) -> Child:
    board = Scoreboard()
    board.write(heartbeat=1.0, **counters)
    return Child(role, index, seq=index, generation=1, state=State.RUNNING, pid=pid,
                 identity=f"host-{pid}-aa", board=board)  # fmt: skip


def test_counts_only_what_the_consumers_did_since_the_stop_began() -> None:
    # Given a consumer that had handled 10 items (2 failed), a producer, and a slot in backoff
    worker = child("consumer", 0, 100, done=8, failed=2)
    producer = child("producer", 0, 200, done=500)
    waiting = child("consumer", 1, 0)
    summary = StopSummary.begin([worker, producer, waiting])
    # When the consumer finishes two more (one failed), gives back three and exits
    assert worker.board is not None
    worker.board.write(heartbeat=2.0, done=9, failed=3, given_back=3)
    summary.consumer_exited(worker.identity, worker.board.read())
    # And the producer exits having pushed more
    assert producer.board is not None
    producer.board.write(heartbeat=2.0, done=900)
    summary.consumer_exited(producer.identity, producer.board.read())
    # Then only the consumer's work since the mark counts
    assert (summary.finished, summary.failed, summary.given_back) == (2, 1, 3)


def test_the_masters_requeues_count_for_marked_consumers_only() -> None:
    worker = child("consumer", 0, 100)
    summary = StopSummary.begin([worker])
    summary.requeued(worker.identity, 5)  # killed at the graceful timeout, holding five
    summary.requeued("otherhost-7-bb", 9)  # leftovers of another run, not this stop's
    assert summary.given_back == 5
    assert summary.line() == "stopped: 0 item(s) finished during the stop (0 failed), 5 given back"


def test_items_the_master_could_not_give_back_are_said_to_be_in_flight() -> None:
    summary = StopSummary.begin([child("consumer", 0, 100), child("consumer", 1, 101)])
    line = summary.line(["host-100-aa", "host-100-aa", "otherhost-7-bb"])
    assert line.endswith("; what 1 consumer(s) held is still in flight (redis unreachable)")
