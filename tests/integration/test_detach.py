"""Without systemd: `goodsd run --detach --pidfile PATH` daemonizes; what can fail fast fails
in the foreground; the pidfile is locked for the daemon's life and removed at exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from support import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def detached_pids():
    """Pids of detached masters to kill (with their group) should a test fail midway."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def run_goodsd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "goodsd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
        check=False,
    )


def test_detached_daemon_holds_its_pidfile_and_removes_it_at_exit(
    tmp_path, r, make_config, notify, detached_pids
):
    # Given a config, and a stale pidfile left by a crashed run
    config = make_config()
    pidfile = tmp_path / "goodsd.pid"
    pidfile.write_text("999999\n")
    logfile = tmp_path / "detached.log"
    detach = ("--detach", "--pidfile", str(pidfile), "--logfile", str(logfile), "-c", str(config))
    # When goodsd is started detached
    started = run_goodsd("run", *detach, env={"NOTIFY_SOCKET": notify.path})
    # Then the foreground process returns 0 and the daemon's pid is in the pidfile
    assert started.returncode == 0, started.stderr
    wait_for(lambda: pidfile.read_text().strip() not in ("", "999999"), 10, "the pidfile written")
    pid = int(pidfile.read_text())
    detached_pids.append(pid)
    # And that process is the master: it reports READY and logs to the log file
    sender, _ = notify.wait("READY", "1")
    assert sender == pid
    assert f"goodsd master {pid} starting" in logfile.read_text()
    assert os.getsid(pid) != os.getsid(0)  # its own session, away from our terminal
    # When a second instance is started on the same pidfile
    second = run_goodsd("run", *detach)
    # Then it refuses, saying who runs, and the first one is untouched
    assert second.returncode == 1
    assert f"already running as pid {pid}" in second.stderr
    assert int(pidfile.read_text()) == pid
    # When the daemon is stopped
    os.kill(pid, signal.SIGTERM)
    # Then it exits and its pidfile is gone
    wait_for(lambda: not _alive(pid), 15, "the daemon to exit")
    assert not pidfile.exists()
    assert f"goodsd master {pid} stopped" in logfile.read_text()


def test_a_bad_config_fails_in_the_foreground_with_78(tmp_path, make_config):
    # Given a config with a bad value
    config = make_config(consumers={"processes": -1})
    pidfile = tmp_path / "goodsd.pid"
    # When goodsd is started detached
    result = run_goodsd(
        "run", "--detach", "--pidfile", str(pidfile), "--logfile", "/dev/null", "-c", str(config)
    )
    # Then it exits 78 at once, saying why, and takes no pidfile
    assert result.returncode == 78
    assert "consumers.processes" in result.stderr
    assert not pidfile.exists()


def test_a_handler_that_cannot_load_fails_in_the_foreground_with_78(tmp_path, make_config):
    config = make_config(consumers={"handler": "sample_handlers:no_such_handler"})
    pidfile = tmp_path / "goodsd.pid"
    result = run_goodsd(
        "run", "--detach", "--pidfile", str(pidfile), "--logfile", "/dev/null", "-c", str(config)
    )
    assert result.returncode == 78
    assert "no_such_handler" in result.stderr
    assert not pidfile.exists()


def test_detach_needs_a_pidfile(make_config):
    result = run_goodsd("run", "--detach", "-c", str(make_config()))
    assert result.returncode == 2
    assert "--detach and --pidfile PATH go together" in result.stderr
