"""An outage is said once when it starts, at a bounded rate while it lasts and once when it
ends; its delay grows until a call proves Redis works again, across every retry loop it spans.
Driven with a fake clock (Outage) and with steps that fail as Redis would (until_done)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import redis
from redis._parsers.base import BaseParser

from goodsd import redisconn
from goodsd.clusterslot import SlotFollowed
from goodsd.redisconn import (
    OUTAGE_LOG_EVERY,
    AccessDenied,
    Kind,
    Outage,
    Trouble,
    classify,
    until_done,
)

OOM = Trouble(Kind.OUT_OF_MEMORY, "command not allowed when used memory > 'maxmemory'.")
GONE = Trouble(Kind.UNREACHABLE, "Error 111 connecting to /run/redis.sock. Connection refused.")


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "goodsd.redis"]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """until_done sleeps for real: shrink its delays a thousandfold."""
    monkeypatch.setattr(redisconn, "BACKOFF_BASE", 0.0001)
    monkeypatch.setattr(redisconn, "BACKOFF_MAX", 0.005)


@pytest.mark.parametrize("minutes", [0.5, 3, 10])
def test_an_outage_is_said_when_it_starts_once_a_minute_and_when_it_ends(
    caplog: pytest.LogCaptureFixture, minutes: float
):
    caplog.set_level(logging.INFO)
    # Given an outage with a failed call every 100 ms for ``minutes``
    outage = Outage()
    start = 1000.0
    for tenth in range(int(minutes * 600) + 1):
        now = start + tenth / 10
        outage.failed(OOM, now)
    # When a call succeeds
    assert outage.succeeded(now)
    # Then the log has the start, one line per full minute, and the end
    lines = said(caplog)
    assert lines[0].startswith("redis unavailable: out of memory")
    assert all(line.startswith("redis still unavailable") for line in lines[1:-1])
    assert len(lines) - 2 == int(minutes * 60 // OUTAGE_LOG_EVERY)
    assert lines[-1].startswith(f"redis available again after {minutes * 60:.0f}")
    # And the next failure is a new outage, said again
    outage.failed(GONE, now + 1)
    assert said(caplog)[-1].startswith("redis unavailable: unreachable")


def test_the_delay_grows_to_its_cap_and_starts_over_after_the_outage():
    outage = Outage()
    delays = [outage.failed(GONE, 0.0) for _ in range(12)]
    assert delays == sorted(delays)
    assert delays[0] == redisconn.BACKOFF_BASE
    assert delays[-1] == redisconn.BACKOFF_MAX
    outage.succeeded(1.0)
    assert outage.failed(GONE, 2.0) == redisconn.BACKOFF_BASE


@pytest.mark.parametrize("kind", [k for k in Kind if k.reads_work])
def test_a_read_that_works_does_not_end_a_refusal_of_writes(kind: Kind):
    # Given the master's registry write refused (Redis only refuses writes)
    outage = Outage()
    outage.failed(Trouble(kind, "refused"), 0.0, "masters registry")
    # When a read of the backlog works
    # Then the outage goes on; it ends when the refused call works again
    assert not outage.succeeded(1.0, "backlog")
    assert outage.trouble is not None
    assert outage.succeeded(2.0, "masters registry")
    assert outage.trouble is None


@pytest.mark.parametrize("kind", [k for k in Kind if not k.reads_work])
def test_any_call_that_works_ends_other_outages(kind: Kind):
    outage = Outage()
    outage.failed(Trouble(kind, "away"), 0.0, "masters registry")
    assert outage.succeeded(1.0, "backlog")


def failing(errors: list[BaseException], then: Callable[[], object]) -> Callable[[], object]:
    """A step that raises ``errors`` one per call, then returns ``then()``."""
    pending: Iterator[BaseException] = iter(errors)

    def step() -> object:
        for exc in pending:
            raise exc
        return then()

    return step


def test_a_read_back_after_a_write_refusal_does_not_reset_the_delay(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    # Given a consumer on a read-only replica: its claim is refused, its read-back works
    readonly = BaseParser.parse_error("READONLY You can't write against a read only replica.")
    outage = Outage()
    # When it goes round its loop (claim, read back what it holds) five times
    for _ in range(5):
        held = until_done(
            failing([readonly], lambda: "claimed"),
            retry=lambda: "held",
            beat=lambda: None,
            outage=outage,
        )
        assert held == "held"
    # Then the outage was said once, and goes on with the failures counted across the loops
    assert said(caplog) == ["redis unavailable: read-only replica (You can't write against a read "
                            "only replica.)"]  # fmt: skip
    assert outage.failures == 5
    # And a claim that works ends it, said once
    assert until_done(lambda: "claimed", beat=lambda: None, outage=outage) == "claimed"
    assert said(caplog)[-1].startswith("redis available again after")
    assert outage.trouble is None


def test_the_wait_keeps_the_heartbeat_and_the_scoreboard_flag_fresh():
    # Given a step that fails three times with Redis out of memory, then works
    oom = BaseParser.parse_error("OOM command not allowed when used memory > 'maxmemory'.")
    outage = Outage()
    seen: list[Kind | None] = []
    until_done(
        failing([oom, oom, oom], lambda: None),
        beat=lambda: seen.append(redisconn.waiting_on(outage.flags)),
        outage=outage,
    )
    # Then every beat during the wait said "out of memory", and the last one, after it, nothing
    assert seen[0] is Kind.OUT_OF_MEMORY
    assert seen[-1] is None
    assert set(seen[:-1]) == {Kind.OUT_OF_MEMORY}


@pytest.mark.parametrize(
    "exc",
    [
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        BaseParser.parse_error("NOPERM this user has no permissions to run the 'blmove' command"),
        BaseParser.parse_error(
            "ERR The user executing the script can't run this command or subcommand script: x"
        ),
    ],
)
def test_a_refusal_is_not_retried(exc: BaseException):
    calls = []
    with pytest.raises(AccessDenied, match="redis refused access"):
        until_done(failing([exc], lambda: calls.append(1)), beat=lambda: None)
    assert calls == []


def test_an_error_that_is_no_redis_trouble_propagates_as_it_is():
    wrongtype = BaseParser.parse_error("WRONGTYPE Operation against a key holding the wrong kind")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        until_done(failing([wrongtype], lambda: None), beat=lambda: None)


def test_a_moved_slot_is_retried_at_once_only_by_a_client_that_follows_slots():
    # Given MOVED as a cluster URL's client raises it (it learnt the slot's new node) and as
    # any other client does (a redis:// URL at a cluster node: it goes back to the same node)
    followed = classify(SlotFollowed("11958 127.0.0.1:7002"))
    unfollowed = classify(BaseParser.parse_error("MOVED 11958 127.0.0.1:7002"))
    assert followed is not None and unfollowed is not None
    assert followed.kind is unfollowed.kind is Kind.SLOT_MOVED
    # Then the first is retried after the base delay however often it comes, the second
    # after a growing delay
    following, stuck = Outage(), Outage()
    assert {following.failed(followed, 0.0) for _ in range(12)} == {redisconn.BACKOFF_BASE}
    delays = [stuck.failed(unfollowed, 0.0) for _ in range(12)]
    assert delays == sorted(delays) and delays[-1] == redisconn.BACKOFF_MAX
