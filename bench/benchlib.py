"""What the benchmarks share: waiting with a deadline, the real goodsd daemon as a pool of
consumers, and the lines that describe the machine and the runs.

Imported by bench/throughput.py and bench/concurrency.py, which run from a plain checkout with
this directory first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Runnable from a plain checkout: make the goodsd package importable without installing it.
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from goodsd.config import dump as dump_config  # noqa: E402
from goodsd.localredis import LocalRedis  # noqa: E402
from goodsd.store import Views  # noqa: E402

POLL = 0.005  # seconds between polls while waiting for something
READY_TIMEOUT = 30.0  # seconds for a design's processes to come up
STOP_TIMEOUT = 45.0  # seconds for goodsd to stop on SIGTERM (graceful_timeout is 30 s)


class BenchError(RuntimeError):
    """A run did not finish or misbehaved; the message says which and why."""


class WaitTimeout(BenchError):
    """Something expected did not happen in time."""


class DaemonExited(BenchError):
    """goodsd exited while it should have been running; ``status`` is its exit status and
    ``log`` the tail of its output."""

    def __init__(self, status: int, log: str) -> None:
        super().__init__(f"goodsd exited with status {status}\n{log}")
        self.status = status
        self.log = log


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every POLL seconds; raise WaitTimeout naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


class GoodsdPool:
    """One `python -m goodsd run` in its own session, output to a log file, run from the
    checkout ``code`` (its goodsd package, and its directory as the working directory, since
    ``python -m`` puts that first on the path). ``env`` is added to the daemon's environment;
    ``BENCH_REDIS_URL`` is always set to ``redis_url``."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        code: Path,
        config: dict[str, Any],
        redis_url: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(dump_config(config))
        self.processes = config["consumers"]["processes"]
        self.queue = Views(redis.Redis.from_url(redis_url), config["queue"])
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))
        }
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(code), environ.get("PYTHONPATH")])
        )
        environ["BENCH_REDIS_URL"] = redis_url
        environ.update(env or {})
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "goodsd", "run", "-c", str(self.config_path)],
                cwd=code,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        """Fail at once, with its log, if the daemon has exited (DaemonExited)."""
        code = self.process.poll()
        if code is not None:
            raise DaemonExited(code, self.log_tail())

    def wait_ready(self) -> None:
        """Wait until every consumer has registered (each starts claiming right after)."""

        def registered() -> bool:
            self.check_alive()
            return len(self.queue.registered()) >= self.processes

        try:
            wait_for(registered, READY_TIMEOUT, f"{self.processes} goodsd consumers to register")
        except WaitTimeout as exc:
            raise BenchError(f"{exc}\n{self.log_tail()}") from None

    def handled(self) -> int:
        """goodsd's ``done`` counter: items acked so far."""
        self.check_alive()
        return self.queue.stats()["done"]

    def worker_pids(self) -> list[int]:
        return [r.pid for r in self.queue.registered().values() if r.pid is not None]

    def master_pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> list[str]:
        """SIGTERM, wait, and report what did not go to plan (exit status, stray children,
        failed items)."""
        problems: list[str] = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"goodsd did not stop within {STOP_TIMEOUT:g}s of SIGTERM")
        if self.process.returncode not in (0, None):
            problems.append(f"goodsd exited with status {self.process.returncode}")
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # Nothing left in its session: the clean case.
        else:
            problems.append("goodsd left processes behind in its session; killed them")
        self.process.wait()
        stats = self.queue.stats()
        if stats.get("failed") or stats.get("dead"):
            problems.append(f"items failed: stats {stats}")
        return problems

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


# --- describing the machine and the runs ----------------------------------------------------


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as printed."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def describe_machine(server: LocalRedis) -> list[str]:
    """Lines naming the machine (CPUs, model, kernel) and the software versions."""
    version = server.client().info("server")["redis_version"]
    usable = len(os.sched_getaffinity(0))
    return [
        f"machine: {os.cpu_count()} CPUs ({usable} usable by this process), {cpu_model()},"
        f" Linux {platform.release()}",
        f"software: Python {platform.python_version()}, {client_library()},"
        f" redis-server {version} on a unix socket",
    ]


def client_library() -> str:
    """redis-py's version, and hiredis's: without it, redis-py parses replies in Python,
    which costs every design dearly per item."""
    described = f"redis-py {importlib.metadata.version('redis')}"
    try:
        return f"{described} (hiredis {importlib.metadata.version('hiredis')})"
    except importlib.metadata.PackageNotFoundError:
        return f"{described} WITHOUT hiredis (replies parsed in Python: slower)"


def spread(values: Sequence[float]) -> str:
    """``min-max`` of ``values``, with thousands separators."""
    return f"{min(values):,.0f}-{max(values):,.0f}"


# --- command lines --------------------------------------------------------------------------


def int_list(text: str) -> tuple[int, ...]:
    """ "1,2,4" -> (1, 2, 4); each at least 1."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"each number must be at least 1: {text!r}")
    return values


def checkout(text: str) -> Path:
    """``--code`` argument: the resolved path of a goodsd checkout."""
    path = Path(text).resolve()
    if not (path / "goodsd" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: not a checkout of goodsd (no goodsd/__main__.py)"
        )
    return path


def code_label(code: Path, codes: Sequence[Path]) -> str:
    """``goodsd`` for this checkout alone; ``goodsd:<dir name>`` when checkouts are compared."""
    if tuple(codes) == (REPO_DIR,):
        return "goodsd"
    return f"goodsd:{code.name}"
