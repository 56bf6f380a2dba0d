"""Redis trouble that retrying cannot fix, or that must not hold up a stop."""

from __future__ import annotations

import time

from support import wait_for


def test_a_refused_password_exits_78_before_ready(r, make_config, start_daemon, notify):
    # Given a Redis that wants a password goodsd does not have
    r.config_set("requirepass", "secret")
    try:
        # When goodsd starts
        daemon = start_daemon(make_config(), notify=notify)
        # Then it exits 78 (bad config) without READY, saying Redis refused it
        assert daemon.wait_exit(20) == 78
        assert "redis refused access" in daemon.log()
        assert notify.index_of("READY") is None
    finally:
        r.config_set("requirepass", "")


def test_a_stop_during_an_outage_does_not_wait_for_redis(
    r, redis_server, make_config, start_daemon, notify
):
    # Given running consumers that lost their Redis
    config = make_config(supervisor={"graceful_timeout": "20s"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    redis_server.stop()
    try:
        daemon.wait_log(r"redis unavailable", count=2)
        # When goodsd is stopped
        asked = time.monotonic()
        daemon.stop()
        # Then the consumers give up waiting at once and the master exits 0, long before
        # graceful_timeout (what they held stays in Redis for the next master)
        assert daemon.wait_exit(15) == 0
        assert time.monotonic() - asked < 10, daemon.log()
        assert "stop requested while redis is unavailable" in daemon.log()
        assert "did not stop within" not in daemon.log()
    finally:
        redis_server.start()
    wait_for(lambda: r.ping(), 5, "redis back")
