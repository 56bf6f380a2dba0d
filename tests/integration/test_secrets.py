"""Secrets are never handed on: commands goodsd starts, and whatever a Python handler starts,
do not inherit the Redis password or the way to it."""

from __future__ import annotations

import json

import pytest
import redis
from support import wait_for

PASSWORD = "s3cret-pw-4711"


@pytest.fixture
def guarded(r, redis_server, tmp_path):
    """The session's Redis with a password for the test; an authenticated client to it."""
    r.config_set("requirepass", PASSWORD)
    client = redis.Redis.from_url(redis_server.url, password=PASSWORD)
    try:
        yield client
    finally:
        client.config_set("requirepass", "")
        client.close()


def secret_env(tmp_path) -> dict[str, str]:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    return {"GOODSD_REDIS_PASSWORD": PASSWORD, "CREDENTIALS_DIRECTORY": str(credentials)}


def test_a_command_handler_does_not_inherit_the_password(
    guarded, tmp_path, make_config, start_daemon, notify
):
    # Given a command handler that prints its whole environment as its error
    config = make_config(
        consumers={
            "handler": None,
            "command": ["sh", "-c", "env >&2; exit 1"],
            "retries": 0,
            "processes": 1,
        }
    )
    start_daemon(config, notify=notify, env=secret_env(tmp_path))
    notify.wait("READY", "1")
    # When it fails on an item
    guarded.lpush("q", "good1")
    wait_for(lambda: guarded.llen("goodsd:{q}:dead") == 1, 10, "the item dead")
    # Then its environment, now in the dead list, holds neither the password nor the
    # credentials directory
    error = json.loads(guarded.lindex("goodsd:{q}:dead", 0))["error"]
    assert "PATH=" in error
    assert PASSWORD not in error and "CREDENTIALS_DIRECTORY" not in error


def test_a_producer_command_does_not_inherit_the_password(
    guarded, tmp_path, make_config, start_daemon, notify
):
    # Given a producer whose command pushes its environment, one variable per item
    config = make_config(
        consumers={"processes": 0},
        producer={"processes": 1, "command": ["env"]},
    )
    daemon = start_daemon(config, notify=notify, env=secret_env(tmp_path))
    daemon.wait_log(r"producer 0 finished")
    # Then neither the password nor the credentials directory was among them
    items = [item.decode() for item in guarded.lrange("q", 0, -1)]
    assert any(item.startswith("PATH=") for item in items)
    assert not any(PASSWORD in item or "CREDENTIALS_DIRECTORY" in item for item in items)


def test_a_python_handler_s_children_do_not_inherit_the_password(
    guarded, tmp_path, make_config, start_daemon, notify
):
    # Given a Python handler that starts a program, as handlers do
    config = make_config(
        consumers={"handler": "sample_handlers:run_env", "retries": 0, "processes": 1},
    )
    start_daemon(
        config, notify=notify, env={**secret_env(tmp_path), "TEST_OUT": str(tmp_path / "env")}
    )
    notify.wait("READY", "1")
    # When it handles an item
    guarded.lpush("q", "good1")
    wait_for(lambda: (tmp_path / "env").exists() and guarded.llen("q") == 0, 10, "the item run")
    # Then what it started did not get the password from goodsd's environment
    wait_for(lambda: "PATH=" in (tmp_path / "env").read_text(), 10, "the environment written")
    assert PASSWORD not in (tmp_path / "env").read_text()


def test_a_password_file_others_can_read_is_a_warning_at_start(
    guarded, tmp_path, make_config, start_daemon, notify
):
    # Given a password file every user on the host can read
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    config = make_config(redis={"password_file": str(secret)})
    # When goodsd starts
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # Then it runs, and its log says what to fix, without the password
    daemon.wait_log(r"warning \[master\] .*redis-password.* every user")
    assert PASSWORD not in daemon.log()
