"""A private, throw-away redis-server for the demo, the tests and the benchmarks.

Each instance owns a short temp dir holding the unix socket, the log and nothing else: TCP is
off unless asked for, persistence is off, and eviction is off (goodsd must never lose items to
`maxmemory`). Nothing is shared with a system Redis, so a test or a demo cannot touch real data.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

# Linux limits sun_path to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

# How many log lines a start failure shows: enough for redis's own error, not a wall of text.
LOG_TAIL_LINES = 20


class RedisServerMissing(RuntimeError):
    """redis-server is not on PATH; the message tells the user how to install it."""

    def __str__(self) -> str:
        return (
            "redis-server was not found on PATH; install it "
            "(Debian/Ubuntu: apt-get install redis-server) or add its directory to PATH"
        )


def find_redis_server() -> str:
    """Return the path of redis-server, so a missing binary fails early with a clear hint."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerMissing()
    return path


class LocalRedis:
    """A redis-server child process in its own temp dir, used as a context manager.

    `stop()` then `start()` brings a fresh, empty server back on the same socket path, so tests
    can take Redis away for a while and check that goodsd reconnects.
    """

    def __init__(
        self, directory: str | None = None, *, tcp_port: int = 0, log_name: str = "redis.log"
    ) -> None:
        # mkdtemp in /tmp, not $TMPDIR: a long TMPDIR would push the socket path over the limit.
        self._owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="goodsd-redis-", dir="/tmp")
        self.socket_path = os.path.join(self.directory, "redis.sock")
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"unix socket path {self.socket_path!r} is longer than {MAX_SOCKET_PATH} bytes;"
                " use a shorter directory"
            )
        self.log_path = os.path.join(self.directory, log_name)
        self.tcp_port = tcp_port
        if tcp_port:
            self.url = f"redis://127.0.0.1:{tcp_port}"
        else:
            self.url = f"unix://{self.socket_path}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalRedis:
        try:
            self.start()
        except BaseException:
            self._remove_directory()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._remove_directory()

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, for tests that want to kill it the hard way."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Spawn redis-server and return once it answers PING, or raise with its log tail."""
        if self.pid is not None:
            raise RuntimeError(f"redis-server is already running (pid {self.pid})")
        argv = [
            find_redis_server(),
            "--port", str(self.tcp_port),
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--logfile", self.log_path,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tcp_port:
            argv += ["--bind", "127.0.0.1"]
        # stdout/stderr go to the log as well: errors before redis opens its logfile land there.
        with open(self.log_path, "ab") as log:
            # Own session: a ^C in the terminal must not kill Redis under a running daemon.
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self._kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down without saving; escalate to SIGTERM, then SIGKILL. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                with self._ping_client(timeout) as conn:
                    conn.shutdown(nosave=True)
            except redis.RedisError:
                pass  # Already gone or not answering; the signals below handle it.
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new client for this server; keyword arguments go to `redis.Redis.from_url`."""
        return redis.Redis.from_url(self.url, **kwargs)

    def _ping_client(self, timeout: float) -> redis.Redis:
        """A client whose every call gives up after `timeout`, so start/stop stay bounded."""
        return self.client(socket_timeout=timeout, socket_connect_timeout=timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll PING until it answers; a dead or silent server raises with its log tail."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        delay = 0.002
        with self._ping_client(min(timeout, 1.0)) as conn:
            while True:
                try:
                    if conn.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"redis-server exited with status {code} while starting;"
                        f" {self.log_path}:\n{self._log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"redis-server did not answer PING within {timeout:g}s;"
                        f" {self.log_path}:\n{self._log_tail()}"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _kill(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaps, so no zombie is left behind."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def _log_tail(self) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"

    def _remove_directory(self) -> None:
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
