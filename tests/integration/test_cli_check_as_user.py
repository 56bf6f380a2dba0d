"""`goodsd check` refuses what `run` would: as the service user (`--as-user`), commands that
are not there, metrics addresses this host cannot serve; `-c` may come before the command."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_cli_check import EX_CONFIG, goodsd

from goodsd import cli

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


@needs_root
def test_an_interpreter_the_service_user_cannot_reach_fails_its_check(shared_dir, tmp_path) -> None:
    # Given goodsd run by an interpreter in a directory only root may enter (a venv under
    # /root, say), and a config the user may read that names a handler to import
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "venv").symlink_to(Path(sys.prefix))
    python = private / "venv" / "bin" / Path(sys.executable).name
    path = config(shared_dir, "redis://127.0.0.1:6390/0")
    # When it is checked as a user who cannot run that interpreter
    result = subprocess.run(
        [str(python), "-m", "goodsd", "check", "-c", str(path), "--as-user", "nobody"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Then the check fails as a config problem and says what the user could not reach
    assert result.returncode == EX_CONFIG, result
    assert result.stderr == f"goodsd: check as user nobody: {python}: Permission denied\n"


@needs_root
def test_an_unexpected_error_of_the_check_as_user_is_one_line(
    shared_dir, monkeypatch, capfd
) -> None:
    # Given a check as a user (root itself) that fails in a way nobody planned for
    path = config(shared_dir, "redis://127.0.0.1:6390/0")
    args = cli.build_parser().parse_args(["check", "-c", str(path), "--as-user", "root"])

    def broken(_: object) -> int:
        raise ValueError("something nobody planned for")

    monkeypatch.setattr(cli, "run_command", broken)
    # When it runs (in a child process, as --as-user does)
    code = cli.check_as_user(args)
    # Then it exits 1 with one line: what went wrong and where
    err = capfd.readouterr().err
    assert code == 1
    assert err.startswith(
        "goodsd: check as user root failed: ValueError: something nobody planned for (at "
    ), err
    assert err.count("\n") == 1 and "in broken)" in err, err
