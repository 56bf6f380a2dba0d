"""What every integration test needs: wait for an event, run the real daemon, listen like
systemd. Imported by conftest.py and by tests directly."""

from __future__ import annotations

import array
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")
HERE = Path(__file__).resolve().parent


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after
    ``timeout`` seconds. The one helper for everything "eventually"."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def write_config(directory: Path, redis_url: str, **sections: object) -> Path:
    """A config file with test-friendly defaults; ``sections`` override whole top-level keys
    (dicts are merged one level deep)."""
    data: dict[str, object] = {
        "redis": {"url": redis_url},
        "queue": "q",
        "pythonpath": [str(HERE)],
        "consumers": {"processes": 2, "handler": "goodsd.handlers:noop", "batch": 10},
        "supervisor": {
            "lease": "5s",
            "graceful_timeout": "10s",
            "restart_delay": "200ms",
            "restart_delay_max": "2s",
        },
        "logging": {"level": "info"},
    }
    for key, value in sections.items():
        base = data.get(key)
        if isinstance(base, dict) and isinstance(value, dict):
            data[key] = {**base, **value}
        else:
            data[key] = value
    path = directory / "goodsd.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: a datagram socket with SO_PASSCRED, so every message
    comes with the sender's pid."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def poll(self) -> list[tuple[int, dict[str, str]]]:
        """Read everything waiting; returns the full list of (pid, fields) so far."""
        creds_size = struct.calcsize("3i")
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except BlockingIOError:
                return self.messages
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = array.array("i", payload[:creds_size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((pid, fields))

    def wait(self, key: str, value: str | None = None, after: int = 0, timeout: float = 15.0):
        """The first message (index >= ``after``) carrying ``key`` (= ``value``)."""

        def found() -> tuple[int, dict[str, str]] | None:
            for pid, fields in self.poll()[after:]:
                if key in fields and (value is None or fields[key] == value):
                    return pid, fields
            return None

        return wait_for(found, timeout, f"notify message {key}={value or '*'}")

    def index_of(self, key: str, value: str | None = None, after: int = 0) -> int | None:
        for i, (_, fields) in enumerate(self.poll()[after:], start=after):
            if key in fields and (value is None or fields[key] == value):
                return i
        return None

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """The real ``python -m goodsd`` in its own session, output to a file (not a pipe, so it
    can never block on a full buffer)."""

    def __init__(
        self,
        directory: Path,
        config: Path,
        notify: NotifyListener | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.log_path = directory / f"goodsd-{len(list(directory.glob('goodsd-*.log')))}.log"
        environ = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        environ["PYTHONUNBUFFERED"] = "1"
        if notify is not None:
            environ["NOTIFY_SOCKET"] = notify.path
        environ.update(env or {})
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "goodsd", *(args or ("run",)), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=environ,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the output."""

        def found() -> re.Match[str] | None:
            matches = list(re.finditer(pattern, self.log()))
            return matches[count - 1] if len(matches) >= count else None

        try:
            return wait_for(found, timeout, f"log line /{pattern}/ x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon output ---\n{self.log()[-4000:]}") from None

    def children(self) -> set[int]:
        """Pids of the master's live child processes."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return set()
        return {int(p) for p in text.split() if _is_running(int(p))}

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"goodsd did not exit within {timeout:g}s\n--- output ---\n{self.log()[-4000:]}"
            ) from None

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop (SIGTERM) and its exit code."""
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill_group(self) -> None:
        """Teardown: TERM, then KILL the whole process group."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(5 if signum == signal.SIGTERM else 10)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # children of a master that already exited
        self.log_file.close()


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] != b"Z"
