"""The master's permission check before the first READY=1, and what STATUS= says meanwhile,
with the check itself replaced by a fake Redis answer (no Redis, no child)."""

from __future__ import annotations

import pytest
import redis

from goodsd import deployment, housekeeping
from goodsd.config import parse
from goodsd.deployment import Facts
from goodsd.exits import EXIT_CONFIG
from goodsd.master import RETRY_EVERY, Master
from goodsd.notify import Notifier


def a_master(answers: list[object], monkeypatch: pytest.MonkeyPatch) -> tuple[Master, list[float]]:
    """A master (no children wanted) whose Redis answers the permission check with
    ``answers`` in turn (an exception is raised, a list is the refused commands) and says
    it is a 7.0 primary."""
    config = parse(
        "redis: {url: 'unix:///nonexistent/redis.sock'}\nconsumers: {processes: 0}\n",
        "goodsd.yaml",
    )
    now = [100.0]
    master = Master(config, Notifier(environ={}), clock=lambda: now[0])
    pending = iter(answers)

    def check(queue: object, *, waits: bool = False) -> object:
        answer = next(pending)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(housekeeping, "refused_commands", check)
    # and which says it is a primary of a version goodsd runs on
    monkeypatch.setattr(
        deployment, "facts", lambda client: Facts("7.0.15", "standalone", "primary")
    )
    return master, now


def test_a_redis_away_at_start_is_checked_once_it_answers_still_before_ready(
    monkeypatch: pytest.MonkeyPatch,
):
    # Given Redis away at start, then answering with a refusal of a command goodsd needs
    away = redis.ConnectionError("Error 2 connecting to /nonexistent/redis.sock. No such file.")
    master, now = a_master([away, away, ["BLMOVE"]], monkeypatch)
    # When the master starts: no refusal yet, and STATUS= says what it waits for
    assert master.check_redis()
    assert not master.redis_ready()  # (not tried again within the second)
    assert master.status_text().startswith(
        "consumers: none; waiting for redis at unix:///nonexistent/redis.sock: unreachable ("
    )
    # Then READY=1 waits while Redis is away
    now[0] += RETRY_EVERY
    assert not master.redis_ready() and not master.stopping
    # And once Redis answers with the refusal, the service stops with exit code 78
    now[0] += RETRY_EVERY
    assert not master.redis_ready()
    assert master.stopping and master.exit_code == EXIT_CONFIG


def test_a_redis_that_allows_everything_lets_ready_through(monkeypatch: pytest.MonkeyPatch):
    away = redis.ConnectionError("Error 111 connecting to /nonexistent/redis.sock. Refused.")
    master, now = a_master([away, []], monkeypatch)
    assert master.check_redis()
    now[0] += RETRY_EVERY
    assert master.redis_ready() and not master.stopping
    assert "waiting for redis" not in master.status_text()


@pytest.mark.parametrize(
    "refusal",
    [
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        ["BLMOVE", "HINCRBY on goodsd:{goods2}:stats"],
    ],
)
def test_a_refusal_at_start_fails_the_check(refusal: object, monkeypatch: pytest.MonkeyPatch):
    master, _ = a_master([refusal], monkeypatch)
    assert not master.check_redis()


def test_a_redis_older_than_6_2_fails_the_check_naming_its_version(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # Given a Redis that allows everything but is 6.0 (no BLMOVE: every consumer would crash)
    master, _ = a_master([[]], monkeypatch)
    monkeypatch.setattr(
        deployment, "facts", lambda client: Facts("6.0.16", "standalone", "primary")
    )
    # When the master checks it before READY=1, then the service may not start
    assert not master.check_redis()
    assert "redis 6.0.16 is too old: goodsd needs 6.2 or later (BLMOVE)" in caplog.text


def test_an_unexpected_answer_to_the_permission_check_still_gets_the_wrong_form_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # Given a server that answers the permission check with no refusal but an error (a
    # sentinel knows no MULTI), and says it is a sentinel
    unknown = redis.ResponseError("unknown command 'MULTI', with args beginning with: ")
    master, _ = a_master([unknown], monkeypatch)
    monkeypatch.setattr(deployment, "facts", lambda client: Facts("7.0.15", "sentinel", None))
    # When the master checks it, then the URL's form is refused all the same
    assert not master.check_redis()
    assert "reaches a Redis Sentinel: use redis+sentinel://" in caplog.text
