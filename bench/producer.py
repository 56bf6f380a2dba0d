"""How fast one goodsd producer pushes the built-in counter source into an empty queue.

Starts its own redis-server and `python -m goodsd run` with no consumers and one producer
(`goodsd.sources:counter`, high watermark out of reach), then reads the fleet's `pushed`
counter over a measuring window after a warm-up. For scale, the same window is measured for the
classic producer loop goodsd replaces: LLEN, then LPUSH one item, per item.

Run: python bench/producer.py [--seconds S] [--batches 100,1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import redis

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Runnable from a plain checkout: make the goodsd package importable without installing it.
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from goodsd.config import dump as dump_config  # noqa: E402
from goodsd.localredis import LocalRedis  # noqa: E402
from goodsd.ops.demo import start_master  # noqa: E402
from goodsd.store import Views  # noqa: E402

QUEUE = "bench"
HIGH = 2_000_000_000  # never reached: the bench measures pushing, not pausing
WARMUP = 1.0  # seconds of pushing before the window opens
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def pushed(queue: Views) -> int:
    return queue.stats()["pushed"]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def measure_goodsd(server: LocalRedis, r: redis.Redis, batch: int, seconds: float) -> float:
    """Items/s one producer pushes with ``batch``, over ``seconds`` after the warm-up."""
    r.flushall()
    queue = Views(r, QUEUE)
    with tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp:
        config = Path(tmp) / "goodsd.yaml"
        config.write_text(
            dump_config(
                {
                    "redis": {"url": server.url},
                    "queue": QUEUE,
                    "consumers": {"processes": 0},
                    "producer": {
                        "processes": 1,
                        "source": "goodsd.sources:counter",
                        "batch": batch,
                        "high_watermark": HIGH,
                        "low_watermark": 0,
                    },
                    "logging": {"level": "warning"},
                }
            )
        )
        daemon = start_master(config, Path(tmp) / "goodsd.log", {"PYTHONPATH": str(REPO_DIR)})
        try:
            wait_until(lambda: pushed(queue) > 0, START_TIMEOUT, "the first push")
            time.sleep(WARMUP)
            start_count, start = pushed(queue), time.monotonic()
            time.sleep(seconds)
            end_count, end = pushed(queue), time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            if daemon.wait(STOP_TIMEOUT) != 0:
                raise RuntimeError(f"goodsd exited with {daemon.returncode}")
        finally:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
    return (end_count - start_count) / (end - start)


def measure_classic(r: redis.Redis, seconds: float) -> float:
    """The classic loop: check the length, then LPUSH one item, one round trip each."""
    r.flushall()
    count, deadline = 0, time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < deadline:
        if r.llen(QUEUE) < HIGH:
            r.lpush(QUEUE, b"good1%d" % count)
            count += 1
    return count / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per run")
    parser.add_argument("--batches", default="100,1000", help="producer.batch values to run")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# one producer, counter source, empty queue, {args.seconds:g}s window")
    with LocalRedis() as server:
        r = server.client()
        version = r.info("server")["redis_version"]
        print(f"# redis-server {version} on a unix socket")
        print(f"{'design':<28} {'items/s':>12}")
        for batch in batches:
            rate = measure_goodsd(server, r, batch, args.seconds)
            print(f"{f'goodsd producer, batch {batch}':<28} {rate:>12,.0f}")
        rate = measure_classic(r, args.seconds)
        print(f"{'classic LLEN + LPUSH loop':<28} {rate:>12,.0f}")
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
