"""`goodsd check` refuses what `run` would: as the service user (`--as-user`), commands that
are not there, metrics addresses this host cannot serve; `-c` may come before the command."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from test_cli_check import EX_CONFIG, goodsd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="--as-user needs root")


@pytest.fixture
def shared_dir():
    """A directory every user may enter (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="goodsd-check-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        f"redis:\n  url: {url}\n{extra}"
        "consumers:\n  processes: 1\n  handler: goodsd.handlers:noop\n"
    )
    path.chmod(0o644)
    return path


def test_the_config_path_may_come_before_the_command(tmp_path, redis_server) -> None:
    path = config(tmp_path, redis_server.url)
    before = goodsd("-c", str(path), "check")
    after = goodsd("check", "-c", str(path))
    assert before.returncode == after.returncode == 0, before.stderr
    assert before.stdout == after.stdout
    assert goodsd("-c", str(tmp_path / "missing.yaml"), "check").returncode == EX_CONFIG


@needs_root
def test_a_config_the_service_user_cannot_read_fails_its_check(shared_dir, redis_server) -> None:
    path = config(shared_dir, redis_server.url)
    path.chmod(0o600)
    result = goodsd("check", "-c", str(path), "--as-user", "nobody")
    assert result.returncode == EX_CONFIG
    assert "Permission denied" in result.stderr


@needs_root
def test_a_password_file_the_service_user_cannot_read_fails_its_check(shared_dir, redis_server):
    secret = shared_dir / "redis-password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    path = config(shared_dir, redis_server.url, f"  password_file: {secret}\n")
    result = goodsd("check", "-c", str(path), "--as-user", "nobody")
    assert result.returncode == EX_CONFIG
    assert "redis.password_file" in result.stderr


@needs_root
def test_a_socket_the_service_user_may_not_open_fails_its_check(shared_dir, redis_server) -> None:
    # Given the test's Redis, whose socket only root may open
    path = config(shared_dir, redis_server.url)
    # Then as root the check gets past it, and as another user it names the socket
    result = goodsd("check", "-c", str(path), "--as-user", "nobody")
    assert result.returncode == EX_CONFIG, result.stderr
    assert f"cannot open the socket {redis_server.socket_path}" in result.stderr
    assert "SupplementaryGroups=redis" in result.stderr


def test_an_unknown_user_is_a_usage_error(tmp_path, redis_server) -> None:
    path = config(tmp_path, redis_server.url)
    result = goodsd("check", "-c", str(path), "--as-user", "no-such-user-here")
    assert result.returncode == 2
    assert "no such user or group" in result.stderr
    assert pwd.getpwuid(os.geteuid())  # the caller itself is a known user


def test_check_refuses_a_command_that_is_not_there(tmp_path, redis_server) -> None:
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        f"redis:\n  url: {redis_server.url}\nconsumers:\n  processes: 0\n"
        "producer:\n  processes: 1\n  command: [/nonexistent/prog]\n"
    )
    result = goodsd("check", "-c", str(path))
    assert result.returncode == EX_CONFIG
    assert "producer.command: cannot run '/nonexistent/prog'" in result.stderr


@pytest.mark.parametrize(
    ("listen", "reason"),
    [("192.0.2.1:9464", "Cannot assign requested address"), ("no-such-host.invalid:9464", "")],
)
def test_check_refuses_a_metrics_address_this_host_cannot_serve(
    tmp_path, redis_server, listen, reason
) -> None:
    path = config(tmp_path, redis_server.url, "")
    path.write_text(path.read_text() + f"metrics:\n  listen: '{listen}'\n")
    result = goodsd("check", "-c", str(path))
    assert result.returncode == EX_CONFIG, result.stdout
    assert f"metrics.listen: cannot listen on {listen}: {reason}" in result.stderr
