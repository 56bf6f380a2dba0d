"""Throughput and pickup latency of goodsd against the classic design it replaces.

Starts its own redis-server, then:
- classic: N `multiprocessing` processes sharing one `multiprocessing.Lock` around LLEN + LPOP,
  sleeping 1 s whenever the list is empty; processes 1/2/4 on the same items;
- goodsd: `python -m goodsd run` with the no-op handler, processes 1/2/4 x batch 1/10/100;
- pickup latency of single items on an idle queue (p50/p99), goodsd processes 1/4 x batch 1/100.

Run: python bench/throughput.py [--items N] [--quick] [--baseline-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from goodsd.ops.demo import start_master  # noqa: E402
from goodsd.store import Views  # noqa: E402

QUEUE = "bench"  # the classic design's list, and goodsd's queue name
STAGING = "bench:staging"
LATENCY_LIST = "bench:latency"

PUSH_CHUNK = 1_000  # items per LPUSH while filling the staging list
POLL = 0.005  # seconds between progress polls
READY_TIMEOUT = 30.0  # seconds for a fresh goodsd to register all its consumers
STOP_TIMEOUT = 45.0  # seconds for goodsd to stop on SIGTERM (graceful_timeout is 30 s)
LATENCY_WARMUP = 20  # samples dropped first: each child's first item opens its connection
LATENCY_GAP = 0.002  # seconds between latency samples, so each one meets an idle queue
GOAL_RATIO = 50.0  # goodsd batch 100 vs classic, same process count
GOAL_P50_MS = 1.0


@dataclass(frozen=True)
class Plan:
    """What one run of the bench measures."""

    items: int  # items per throughput run
    processes: tuple[int, ...]  # process counts for both designs
    batches: tuple[int, ...]  # goodsd batch sizes for throughput
    latency_processes: tuple[int, ...]
    latency_batches: tuple[int, ...]
    latency_samples: int
    baseline_only: bool


@dataclass(frozen=True)
class Result:
    """One row of the throughput table."""

    design: str
    processes: int
    batch: int | None  # None for the classic design, which has no batches
    items_per_second: float
    ready_seconds: float | None = None  # goodsd start until all consumers registered


class BenchError(RuntimeError):
    """A run did not finish or misbehaved; the message says which and why."""


class WaitTimeout(BenchError):
    """Something expected did not happen in time."""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every POLL seconds; raise BenchError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


def fill_staging(r: redis.Redis, items: int) -> None:
    """Build the items in a side list, so RENAME can make them all appear at once."""
    r.delete(STAGING)
    pipe = r.pipeline(transaction=False)
    for start in range(0, items, PUSH_CHUNK):
        pipe.lpush(STAGING, *(f"good{i}" for i in range(start, min(start + PUSH_CHUNK, items))))
    pipe.execute()


def run_timeout(items: int) -> float:
    """Generous bound for one throughput run: even 500 items/s finishes within it."""
    return max(120.0, items / 500)


# --- the classic design -------------------------------------------------------------------


def noop(item: bytes) -> None:
    """The classic consumer's business logic, reduced to nothing."""


def classic_consumer(
    url: str,
    lock: Any,
    ready: Any,
    stop: Any,
    index: int,
    counts: Any,
    first: Any,
    last: Any,
) -> None:
    """The classic consumer loop, as the pattern is usually written.

    It pops with LPOP from the same end the producer LPUSHes to, so it runs items LIFO; kept
    as the classic code had it. The lock is held around LLEN + LPOP, and an empty list means a
    1 s sleep. `counts`, `first` and `last` are this bench's bookkeeping, one slot per process.
    """
    r = redis.Redis.from_url(url)
    r.ping()
    ready.put(index)
    while True:
        item = None
        with lock:
            if r.llen(QUEUE) > 0:
                item = r.lpop(QUEUE)
        if item is None:
            if stop.is_set():
                return
            time.sleep(1)
            continue
        noop(item)
        now = time.perf_counter()
        if counts[index] == 0:
            first[index] = now
        counts[index] += 1
        last[index] = now


def run_classic(server: LocalRedis, processes: int, items: int) -> Result:
    """Time the classic design from its first pop to its last one.

    Its 1 s idle sleep before the first pop is not charged, which favours the classic design.
    """
    r = server.client()
    r.flushall()
    fill_staging(r, items)
    ctx = multiprocessing.get_context("fork")
    lock, ready, stop = ctx.Lock(), ctx.Queue(), ctx.Event()
    counts = ctx.RawArray("q", processes)
    first = ctx.RawArray("d", processes)
    last = ctx.RawArray("d", processes)
    children = [
        ctx.Process(
            target=classic_consumer,
            args=(server.url, lock, ready, stop, i, counts, first, last),
            daemon=True,
        )
        for i in range(processes)
    ]
    try:
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=READY_TIMEOUT)
        r.rename(STAGING, QUEUE)

        def finished() -> bool:
            for child in children:
                if child.exitcode is not None:
                    raise BenchError(f"a classic consumer exited with status {child.exitcode}")
            return sum(counts) >= items

        wait_for(
            finished,
            run_timeout(items),
            f"the classic design ({processes} processes) to pop {items:,} items"
            f" (popped {sum(counts):,})",
        )
    except queue.Empty:
        raise BenchError(f"classic consumers did not connect within {READY_TIMEOUT:g}s") from None
    finally:
        stop.set()
        for child in children:
            child.join(5.0)
            if child.is_alive():
                child.terminate()
                child.join()
    started = min(first[i] for i in range(processes) if counts[i])
    return Result("classic", processes, None, items / (max(last) - started))


# --- goodsd -------------------------------------------------------------------------------


class Goodsd:
    """One `python -m goodsd run` in its own session, output to a log file."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any], redis_url: str) -> None:
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(dump_config(config))
        pythonpath = os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": pythonpath, "BENCH_REDIS_URL": redis_url}
        self.process = start_master(self.config_path, self.log_path, env)

    def check_alive(self) -> None:
        """Fail at once, with its log, if the daemon has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"goodsd exited with status {code}\n{self.log_tail()}")

    def wait_ready(self, queue: Views, processes: int) -> float:
        """Wait until every consumer has registered; return the seconds that took."""
        started = time.perf_counter()

        def registered() -> bool:
            self.check_alive()
            return len(queue.registered()) >= processes

        try:
            wait_for(registered, READY_TIMEOUT, f"{processes} goodsd consumers to register")
        except WaitTimeout as exc:
            raise BenchError(f"{exc}\n{self.log_tail()}") from None
        return time.perf_counter() - started

    def stop(self) -> list[str]:
        """SIGTERM, wait, and report what did not go to plan (exit status, stray children)."""
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
        return problems

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


def goodsd_config(url: str, processes: int, batch: int, handler: str) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "queue": QUEUE,
        "pythonpath": [str(BENCH_DIR)],
        "consumers": {"processes": processes, "batch": batch, "handler": handler},
        "logging": {"level": "warning"},
    }


def run_goodsd(server: LocalRedis, workdir: Path, processes: int, batch: int, items: int) -> Result:
    """Time goodsd from the moment all items appear until its `done` counter reaches them."""
    r = server.client()
    r.flushall()
    fill_staging(r, items)
    goodsd_queue = Views(r, QUEUE)
    config = goodsd_config(server.url, processes, batch, "goodsd.handlers:noop")
    daemon = Goodsd(workdir, f"goodsd-p{processes}-b{batch}", config, server.url)
    problems: list[str] = []
    try:
        ready_seconds = daemon.wait_ready(goodsd_queue, processes)
        started = time.perf_counter()
        r.rename(STAGING, goodsd_queue.keys.ready)

        def finished() -> bool:
            daemon.check_alive()
            return goodsd_queue.stats()["done"] >= items

        try:
            wait_for(finished, run_timeout(items), f"goodsd to finish {items:,} items")
        except WaitTimeout as exc:
            done = goodsd_queue.stats()["done"]
            raise BenchError(f"{exc} (done={done:,})\n{daemon.log_tail()}") from None
        elapsed = time.perf_counter() - started
    finally:
        problems += daemon.stop()
    stats = goodsd_queue.stats()
    if stats["done"] != items or goodsd_queue.backlog() != 0:
        problems.append(f"expected done={items:,} and an empty queue; stats {stats}")
    if stats.get("failed") or stats.get("dead"):
        problems.append(f"no-op items failed: stats {stats}")
    for problem in problems:
        print(f"  warning (goodsd p={processes} b={batch}): {problem}", file=sys.stderr)
    return Result("goodsd", processes, batch, items / elapsed, ready_seconds)


def measure_latency(
    server: LocalRedis, workdir: Path, processes: int, batch: int, samples: int
) -> list[float]:
    """Push single timestamped items on an idle queue; return the pickup delays in ms."""
    r = server.client()
    r.flushall()
    config = goodsd_config(server.url, processes, batch, "latency_handler:stamp")
    daemon = Goodsd(workdir, f"latency-p{processes}-b{batch}", config, server.url)
    goodsd_queue = Views(r, QUEUE)
    delays: list[float] = []
    try:
        daemon.wait_ready(goodsd_queue, processes)
        for n in range(LATENCY_WARMUP + samples):
            time.sleep(LATENCY_GAP)
            goodsd_queue.push([repr(time.time()).encode()])
            reply = r.blpop([LATENCY_LIST], timeout=5)
            if reply is None:
                daemon.check_alive()
                raise BenchError(
                    f"no latency sample within 5s (sample {n}, p={processes} b={batch})\n"
                    f"{daemon.log_tail()}"
                )
            if n >= LATENCY_WARMUP:
                delays.append(float(reply[1]) * 1000)
    finally:
        for problem in daemon.stop():
            print(f"  warning (latency p={processes} b={batch}): {problem}", file=sys.stderr)
    return delays


# --- reporting ----------------------------------------------------------------------------


def machine(server: LocalRedis) -> str:
    usable = len(os.sched_getaffinity(0))
    version = server.client().info("server")["redis_version"]
    return (
        f"machine: {os.cpu_count()} CPUs ({usable} usable), {platform.machine()},"
        f" Python {platform.python_version()}, redis-server {version}"
    )


def print_throughput(results: Sequence[Result], items: int) -> None:
    classic = {r.processes: r.items_per_second for r in results if r.design == "classic"}
    print(f"\nthroughput, {items:,} no-op items")
    print("design   procs batch     items/s vs classic ready s")
    for r in results:
        base = classic.get(r.processes)
        ratio = f"{r.items_per_second / base:.1f}x" if base else "-"
        ready = f"{r.ready_seconds:.2f}" if r.ready_seconds is not None else "-"
        batch = str(r.batch) if r.batch is not None else "-"
        mark = "  <- headline" if r.batch == 100 else ""
        print(
            f"{r.design:8} {r.processes:>5} {batch:>5} {r.items_per_second:>11,.0f}"
            f" {ratio:>10} {ready:>7}{mark}"
        )
    print("classic: timed from its first pop to its last (its 1 s idle sleep is not charged)")
    if any(r.design == "goodsd" for r in results):
        print(
            "goodsd: timed from the moment all items appear (one RENAME) until stats.done"
            " reaches them;\nready s: goodsd start until every consumer registered (not in items/s)"
        )


def percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def print_latency(rows: Sequence[tuple[int, int, list[float]]], samples: int) -> None:
    print(f"\npickup latency, idle queue, {samples} single items (push -> handler call)")
    print("design   procs batch   p50 ms   p99 ms   max ms")
    for processes, batch, delays in rows:
        print(
            f"{'goodsd':8} {processes:>5} {batch:>5} {percentile(delays, 50):>8.3f}"
            f" {percentile(delays, 99):>8.3f} {max(delays):>8.3f}"
        )
    print(f"{'classic':8} {'any':>5} {'-':>5}  0 to 1000 ms by construction (1 s sleep when empty)")


def print_goals(results: Sequence[Result], latency: Sequence[tuple[int, int, list[float]]]) -> None:
    classic = {r.processes: r.items_per_second for r in results if r.design == "classic"}
    print("\ngoals (2-core machine): batch 100 >= 50x classic; pickup p50 <= 1 ms")
    for r in results:
        if r.batch == 100 and r.processes in classic:
            ratio = r.items_per_second / classic[r.processes]
            verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
            print(f"  throughput p={r.processes} b=100: {ratio:.1f}x  {verdict}")
    for processes, batch, delays in latency:
        p50 = percentile(delays, 50)
        verdict = "met" if p50 <= GOAL_P50_MS else "NOT met"
        print(f"  latency p={processes} b={batch}: p50 {p50:.3f} ms  {verdict}")


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--items",
        type=int,
        default=None,
        help="items per run (default 100000, or 10000 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="10,000 items and fewer combos")
    parser.add_argument(
        "--baseline-only", action="store_true", help="measure only the classic design"
    )
    args = parser.parse_args(argv)
    if args.quick:
        plan = Plan(10_000, (1, 2), (1, 100), (1,), (1, 100), 100, args.baseline_only)
    else:
        plan = Plan(100_000, (1, 2, 4), (1, 10, 100), (1, 4), (1, 100), 500, args.baseline_only)
    if args.items is not None:
        if args.items < 1:
            parser.error("--items must be at least 1")
        plan = dataclasses.replace(plan, items=args.items)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    results: list[Result] = []
    latency: list[tuple[int, int, list[float]]] = []
    with LocalRedis() as server, tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp:
        workdir = Path(tmp)
        print(machine(server))
        try:
            for processes in plan.processes:
                print(f"classic  p={processes} ...", file=sys.stderr, flush=True)
                results.append(run_classic(server, processes, plan.items))
            if not plan.baseline_only:
                for processes in plan.processes:
                    for batch in plan.batches:
                        print(f"goodsd   p={processes} b={batch} ...", file=sys.stderr, flush=True)
                        results.append(run_goodsd(server, workdir, processes, batch, plan.items))
                for processes in plan.latency_processes:
                    for batch in plan.latency_batches:
                        print(f"latency  p={processes} b={batch} ...", file=sys.stderr, flush=True)
                        delays = measure_latency(
                            server, workdir, processes, batch, plan.latency_samples
                        )
                        latency.append((processes, batch, delays))
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            if results:
                print_throughput(results, plan.items)
            if latency:
                print_latency(latency, plan.latency_samples)
    if not plan.baseline_only:
        print_goals(results, latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
