"""The producer's decisions, without Redis or processes: watermark hysteresis and its poll
timing, which pauses get a log line, registry clean-up, the source feed, and how the master's
reconcile treats a finished producer."""

from __future__ import annotations

import itertools
import threading

import pytest

from goodsd import sources
from goodsd.children import Child, State, finished, overdue, reconcile
from goodsd.exits import EXIT_FAILURE, EXIT_OK
from goodsd.producer import POLL_MAX, POLL_MIN, Backpressure, PauseLog, stale_producers
from goodsd.scoreboard import FLAG_FINISHED, FLAG_PAUSED
from goodsd.sources import Feed, SourceError
from goodsd.store import ProducerRecord

# --- backpressure ----------------------------------------------------------------------------


def test_pauses_at_high_and_resumes_only_at_low() -> None:
    # Given watermarks 100 / 60
    bp = Backpressure(high=100, low=60)
    # Then a list below the high mark does not pause
    assert not bp.full(99, now=0.0)
    # When a push finds it at the mark, a pause starts, once
    assert bp.full(100, now=1.0)
    assert not bp.full(130, now=1.1)
    assert bp.paused
    # And the pause holds between the marks
    assert not bp.drained(99, now=1.2)
    assert not bp.drained(61, now=1.3)
    assert bp.paused
    # Until the list is down to the low mark
    assert bp.drained(60, now=1.4)
    assert not bp.paused
    assert not bp.drained(0, now=1.5)


def test_poll_waits_for_the_expected_drain_within_bounds() -> None:
    # Given a pause that began at 1000 items, with the low mark at 200
    bp = Backpressure(high=1000, low=200)
    bp.full(1000, now=0.0)
    # Then the first read comes soon, to learn the drain rate
    assert bp.poll_delay() == POLL_MIN
    # When 100 items drained in 10 ms (10,000/s), 700 to go: 70 ms, capped
    bp.drained(900, now=0.010)
    assert bp.poll_delay() == POLL_MAX
    # When 500 more drained in the next 10 ms (50,000/s), 200 to go: 4 ms
    bp.drained(400, now=0.020)
    assert bp.poll_delay() == pytest.approx(0.004)
    # When nothing drains, wait the longest, never zero
    bp.drained(400, now=0.030)
    assert bp.poll_delay() == POLL_MAX
    # When it drains very fast (150 in 1 ms), never sooner than the minimum
    bp.drained(250, now=0.031)
    assert bp.poll_delay() == POLL_MIN


def test_pause_log_keeps_one_pair_per_quiet_period() -> None:
    # Given a producer pausing every 0.1 s
    plog = PauseLog(quiet=10.0)
    # Then the first pause and its resume are logged
    assert plog.pause(0.0) and plog.note() == ""
    assert plog.resume()
    # And the next ones within 10 s are not, nor their resumes
    for t in (0.1, 0.2, 0.3):
        assert not plog.pause(t)
        assert not plog.resume()
    # When 10 s have passed, the next pause is logged and tells what was left out
    assert plog.pause(10.0)
    assert plog.note() == " (3 more pause(s) since the last message)"
    assert plog.resume()
    assert plog.note() == ""


# --- registry clean-up -----------------------------------------------------------------------


def test_stale_producers_of_this_host_only() -> None:
    # Given records of live and dead producers, on this host and another
    alive_pids = {10, 20}
    fields = {
        "live": {"host": "h", "pid": 10, "proc_start": 1, "state": "active"},
        "dead": {"host": "h", "pid": 11, "proc_start": 1, "state": "paused"},
        "elsewhere": {"host": "other", "pid": 11, "state": "active"},
        "finished, master alive": {
            "host": "h",
            "pid": 12,
            "state": "finished",
            "master_pid": 20,
            "master_start": 1,
        },
        "finished, master gone": {
            "host": "h",
            "pid": 13,
            "state": "finished",
            "master_pid": 21,
            "master_start": 1,
        },
        "garbled": {"host": "h"},
    }
    records = {name: ProducerRecord(**given) for name, given in fields.items()}
    # When the stale ones are picked
    stale = stale_producers(records, "h", lambda pid, start: pid in alive_pids)
    # Then dead producers go, finished ones only with their master, other hosts' stay
    assert sorted(stale) == ["dead", "finished, master gone", "garbled"]


# --- sources ---------------------------------------------------------------------------------


def test_counter_numbers_items_like_the_classic_example() -> None:
    assert list(itertools.islice(sources.counter(), 3)) == [b"good10", b"good11", b"good12"]


def test_items_must_be_text_or_bytes() -> None:
    assert sources.to_bytes("é") == "é".encode()
    assert sources.to_bytes(bytearray(b"x")) == b"x"
    with pytest.raises(SourceError, match="yielded int; items must be str or bytes"):
        sources.to_bytes(5)


def test_feed_hands_over_batches_then_ends() -> None:
    # Given a finite source of 25 items and batches of 10
    feed = Feed(iter([f"i{n}" for n in range(25)]), batch=10)
    feed.start()
    # When batches are taken until it ends
    taken: list[bytes] = []
    while not feed.exhausted:
        batch = feed.take(idle=1.0, linger=1.0)
        assert len(batch) <= 10
        taken += batch
    # Then every item came once, in order, with no error
    assert taken == [f"i{n}".encode() for n in range(25)]
    assert feed.error is None


def test_feed_gives_a_partial_batch_of_a_slow_source() -> None:
    # Given a source that yields two items, then blocks
    gate = threading.Event()

    def slow():
        yield "a"
        yield "b"
        gate.wait(10)

    feed = Feed(slow(), batch=100)
    feed.start()
    # When a batch is taken with a short linger
    got = feed.take(idle=5.0, linger=0.05)
    while len(got) < 2:
        got += feed.take(idle=5.0, linger=0.05)
    # Then what there is comes out, without waiting for a full batch
    assert got == [b"a", b"b"]
    assert not feed.exhausted
    gate.set()
    feed.take(idle=5.0, linger=0)
    assert feed.exhausted


def test_feed_keeps_the_error_after_the_items_before_it() -> None:
    # Given a source that raises after one item
    def broken():
        yield "ok"
        raise ValueError("boom")

    feed = Feed(broken(), batch=10)
    feed.start()
    # Then the item comes first, then the end with the error
    assert feed.take(idle=5.0, linger=1.0) == [b"ok"]
    feed.take(idle=5.0, linger=0)
    assert feed.exhausted
    assert isinstance(feed.error, ValueError)


def test_feed_stop_hands_over_the_item_waiting_for_room() -> None:
    # Given a feed whose batch is full while its thread holds one more item from the source
    given: list[int] = []
    holding, closed = threading.Event(), threading.Event()

    def endless():
        try:
            for n in itertools.count():
                given.append(n)
                if n == 3:
                    holding.set()
                yield f"i{n}"
        finally:
            closed.set()

    feed = Feed(endless(), batch=3)
    feed.start()
    assert holding.wait(5), "the source never got to its fourth item"
    # When it is stopped
    rest = feed.stop(wait=5.0)
    # Then everything the source gave is handed over, and the source was closed
    assert rest == [f"i{n}".encode() for n in given] == [b"i0", b"i1", b"i2", b"i3"]
    assert not feed.thread.is_alive()
    assert closed.is_set()


def test_load_rejects_what_cannot_run(tmp_path) -> None:
    from goodsd.config import ProducerConfig
    from goodsd.runner import HandlerLoadError

    with pytest.raises(HandlerLoadError, match="not found or not executable"):
        sources.load(ProducerConfig(command=(str(tmp_path / "nope"),)), ())
    with pytest.raises(HandlerLoadError, match="cannot load 'no_such_module:f'"):
        sources.load(ProducerConfig(source="no_such_module:f"), ())
    opener = sources.load(ProducerConfig(source="builtins:len"), ())
    with pytest.raises(TypeError):
        opener()  # called without the argument it needs: a source failure, not a load error


# --- the master's view of a finished producer --------------------------------------------------


def producer(index: int, state: State, generation: int = 1, seq: int = 0) -> Child:
    seq = seq or index + 1
    return Child(role="producer", index=index, seq=seq, generation=generation, state=state)


def test_finished_exit_needs_exit_0_and_the_flag() -> None:
    child = producer(0, State.RUNNING)
    assert finished(child, EXIT_OK, FLAG_FINISHED)
    assert finished(child, EXIT_OK, FLAG_FINISHED | FLAG_PAUSED)
    assert not finished(child, EXIT_OK, 0)  # a plain clean exit: restart it
    assert not finished(child, EXIT_FAILURE, FLAG_FINISHED)
    assert not finished(child, None, FLAG_FINISHED)  # killed by a signal
    consumer = Child(role="consumer", index=0, seq=1, generation=1)
    assert not finished(consumer, EXIT_OK, FLAG_FINISHED)


def test_finished_producer_fills_its_slot() -> None:
    # Given two wanted producers, one finished
    children = [producer(0, State.FINISHED), producer(1, State.RUNNING)]
    # Then nothing is spawned or retired
    plan = reconcile(children, {"producer": 2}, {"producer": 1})
    assert plan.spawn == () and plan.retire == ()
    # And a finished producer is never judged hung
    assert overdue(children[0], 0.0, 0.0, 1e9, None, 10.0) == ""


def test_finished_producer_retires_first_when_fewer_are_wanted() -> None:
    children = [producer(0, State.RUNNING, seq=1), producer(1, State.FINISHED, seq=2)]
    plan = reconcile(children, {"producer": 1}, {"producer": 1})
    assert plan.retire == (children[1],)


def test_outdated_finished_producer_goes_and_a_new_one_starts() -> None:
    # Given a producer that finished under generation 1, and a reload to generation 2
    children = [producer(0, State.FINISHED, generation=1)]
    plan = reconcile(children, {"producer": 1}, {"producer": 2})
    # Then it is dropped and a new one spawned in a free slot
    assert plan.retire == (children[0],)
    assert plan.spawn == (("producer", 1),)


def test_finished_current_producer_lets_outdated_running_ones_go() -> None:
    # Given an old producer still running and its replacement already finished
    old = producer(0, State.RUNNING, generation=1, seq=1)
    new = producer(1, State.FINISHED, generation=2, seq=2)
    plan = reconcile([old, new], {"producer": 1}, {"producer": 2})
    # Then the old one retires
    assert plan.retire == (old,)
    assert plan.spawn == ()
