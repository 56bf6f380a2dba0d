"""`goodsd demo`: all of goodsd on a private Redis, in one terminal, with nothing to set up.

It starts a throw-away redis-server, writes a config into a temp dir, runs a real master
(`python -m goodsd run`) with consumers running the `demo` handler and a producer, and shows
the status view with the master's latest log lines until Ctrl-C. Then it stops the master
(SIGTERM, as systemd would), then Redis, and removes the temp dir: nothing is left running.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from signal import SIGHUP, SIGINT, SIGTERM
from typing import TextIO

from goodsd import config as config_mod
from goodsd.localredis import LocalRedis, RedisServerMissing, find_redis_server
from goodsd.ops import status
from goodsd.ops.common import OpsError, Screen, open_queue, redis_errors
from goodsd.store import Views

QUEUE = "demo"
# The backlog the producer (or the demo itself, without one) keeps: between these two.
LOW_WATERMARK, HIGH_WATERMARK = 100, 200
REFRESH = 0.5
# Rates are taken over the last few refreshes, so the figures do not jump about.
RATE_WINDOW = 4
LOG_LINES = 6
GRACEFUL = 5.0
_DATE = re.compile(r"^\d{4}-\d\d-\d\d ")


def demo_config(redis_url: str, consumers: int, producers: int) -> dict[str, object]:
    producer: dict[str, object] = {"processes": 0}
    if producers:
        producer = {
            "processes": producers,
            "source": "goodsd.sources:counter",
            "high_watermark": HIGH_WATERMARK,
            "low_watermark": LOW_WATERMARK,
        }
    return {
        "redis": {"url": redis_url},
        "queue": QUEUE,
        "consumers": {
            "processes": consumers,
            "handler": "goodsd.handlers:demo",
            "batch": 5,
            "timeout": "10s",
            "retries": 2,
            "retry_delay": "2s",
        },
        "producer": producer,
        "supervisor": {"graceful_timeout": f"{GRACEFUL:g}s", "lease": "10s"},
        "logging": {"level": "info"},
    }


def own_command(argv0: str, executable: str, on_path: str | None) -> str:
    """How another terminal runs this same goodsd: ``goodsd`` when that is the one on PATH
    (``on_path``), else the full path it was started by (a clone's .venv/bin/goodsd, which no
    shell finds by name), or ``executable -m goodsd`` for ``python -m goodsd``."""
    if os.path.basename(argv0) == "__main__.py":
        return f"{shlex.quote(executable)} -m goodsd"
    if on_path and os.path.realpath(on_path) == os.path.realpath(argv0):
        return "goodsd"
    return shlex.quote(os.path.abspath(argv0))


def header(consumers: int, producers: int, config_path: str) -> str:
    feed = (
        f"{producers} producer(s) (goodsd.sources:counter) keep {LOW_WATERMARK}-"
        f"{HIGH_WATERMARK} items ready"
        if producers
        else f"this demo pushes items itself, as any program may, keeping {LOW_WATERMARK}-"
        f"{HIGH_WATERMARK} ready"
    )
    goodsd = own_command(sys.argv[0], sys.executable, shutil.which("goodsd"))
    return (
        "goodsd demo (Ctrl-C stops it and cleans up)\n"
        f"  {consumers} consumer processes take items from the Redis list {QUEUE!r}; each item\n"
        "  takes 5-50 ms; 1 in 100 is broken (retried twice, 2s apart, then dead),\n"
        "  4 in 100 fail once by bad luck and pass on retry.\n"
        f"  {feed}.\n"
        "  backlog: waiting in Redis; in flight: claimed by a consumer, not yet done;\n"
        "  retry waiting: failed, tried again soon; dead: out of attempts, kept for a look.\n"
        f"  Try in another terminal: {goodsd} status -c {config_path}   (or dead list, push)\n"
    )


def log_tail(path: Path, lines: int) -> list[str]:
    """The master's last log lines, without the date (the time is enough here)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [_DATE.sub("", line) for line in text.splitlines()[-lines:]]


def start_master(
    config_path: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m goodsd run`` in its own session, output to ``log_path``, with this
    environment plus ``env`` but without systemd's variables (this program is not the
    service). Public because the benchmarks start their masters the same way."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(env or {})
    with open(log_path, "wb") as log:
        # Own session: the terminal's Ctrl-C reaches the demo only, which then stops the
        # master the way systemd would.
        return subprocess.Popen(
            [sys.executable, "-m", "goodsd", "run", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
            start_new_session=True,
        )


def stop_master(master: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait for the graceful stop; SIGKILL the group if it overstays."""
    if master.poll() is None:
        master.send_signal(signal.SIGTERM)
    try:
        master.wait(GRACEFUL + 5)
    except subprocess.TimeoutExpired:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait()


def top_up(queue: Views, next_number: int) -> int:
    """Without a producer: push items when the backlog is below the low watermark."""
    backlog = queue.backlog()
    if backlog >= LOW_WATERMARK:
        return next_number
    count = HIGH_WATERMARK - backlog
    queue.push([f"good-{n}".encode() for n in range(next_number, next_number + count)])
    return next_number + count


def live_view(
    queue: Views,
    cfg: config_mod.Config,
    master: subprocess.Popen[bytes],
    log_path: Path,
    intro: str,
    feed: bool,
    out: TextIO,
) -> None:
    """Redraw until Ctrl-C; a master that exits on its own ends the demo with its log."""
    screen = Screen(out)
    screen.start()
    samples: collections.deque[status.Sample] = collections.deque(maxlen=RATE_WINDOW)
    next_number = 1
    try:
        while True:
            code = master.poll()
            if code is not None:
                tail = "\n".join(log_tail(log_path, 20))
                raise OpsError(f"demo: the goodsd master exited with status {code}:\n{tail}")
            with redis_errors(cfg):
                if feed:
                    next_number = top_up(queue, next_number)
                view, latest = status.collect(queue, cfg, samples[0] if samples else None)
            samples.append(latest)
            recent = "\n".join("  " + line for line in log_tail(log_path, LOG_LINES))
            screen.show(f"{intro}\n{status.render(view)}\nlatest log lines:\n{recent}\n")
            time.sleep(REFRESH)
    except KeyboardInterrupt:
        return
    finally:
        screen.end()


def main(*, consumers: int, producers: int, out: TextIO = sys.stdout) -> int:
    try:
        find_redis_server()
    except RedisServerMissing as exc:
        raise OpsError(f"demo: {exc}") from None
    workdir = Path(tempfile.mkdtemp(prefix="goodsd-demo-", dir="/tmp"))
    # Ctrl-C, a terminal closing or a `kill`: the same clean stop.
    previous = {signum: signal.getsignal(signum) for signum in (SIGINT, SIGTERM, SIGHUP)}
    for signum in previous:  # even when started with SIGINT ignored (a shell's `&`)
        signal.signal(signum, signal.default_int_handler)
    try:
        with LocalRedis(str(workdir)) as server:
            config_path = workdir / "goodsd.yaml"
            config_path.write_text(config_mod.dump(demo_config(server.url, consumers, producers)))
            cfg = config_mod.load(str(config_path))
            log_path = workdir / "goodsd.log"
            master = start_master(config_path, log_path)
            try:
                live_view(
                    open_queue(cfg, "demo"),
                    cfg,
                    master,
                    log_path,
                    header(consumers, producers, str(config_path)),
                    feed=not producers,
                    out=out,
                )
            finally:
                # A second Ctrl-C must not cut the clean-up short and leave processes behind.
                for signum in previous:
                    signal.signal(signum, signal.SIG_IGN)
                out.write("\nstopping goodsd and redis...\n")
                out.flush()
                stop_master(master)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    out.write("demo stopped; nothing left running.\n")
    return 0
