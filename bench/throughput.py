"""Throughput and pickup latency of goodsd, against the classic design it replaces and against
the floor any queue runner can reach with this Redis.

Starts its own redis-server (unix socket) and measures, for each number of processes and each
batch size:
- classic: processes sharing one `multiprocessing.Lock` around LLEN + LPOP, one item per round
  trip, sleeping 1 s whenever the list is empty (the pattern goodsd grew from);
- bare: plain Python loops, each calling one Lua script that RPOPs `batch` items and then the
  handler on each item, nothing else: no in-flight list, no acks, no counters. The floor for a
  runner on this Redis with this client; goodsd is shown as a fraction of it;
- goodsd: `python -m goodsd run`, the real daemon, with its default config but for `processes`
  and `batch`;
- pickup latency: single items pushed on an idle queue, push to handler call, goodsd only.
Every design calls the same no-op handler (`goodsd.handlers.noop`).

What is timed. Each run starts on a backlog (a copy of a prepared list, so it never runs dry),
starts the design's processes and waits until all are up, lets them warm up, and then measures
a fixed window: items handled (goodsd: its `done` counter, so acked items; the others: counters
in shared memory) and CPU time from /proc of the workers, the goodsd master, redis-server and
the whole machine. Starting and stopping the processes are outside the window. Each
configuration runs `--runs` times, in rounds (every configuration once per round), so load
that comes and goes on a shared machine hits them all alike; a row shows the median and range.

Run: python bench/throughput.py [--runs N] [--quick] [--window S] [--code DIR ...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Runnable from a plain checkout: make the goodsd package importable without installing it.
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from benchlib import (  # noqa: E402
    READY_TIMEOUT,
    BenchError,
    GoodsdPool,
    checkout,
    code_label,
    describe_machine,
    int_list,
    load_average,
    spread,
)
from cputime import MachineCpu, ProcessGone, machine_seconds, processes_seconds  # noqa: E402

from goodsd.handlers import noop  # noqa: E402
from goodsd.localredis import LocalRedis  # noqa: E402

QUEUE = "bench"  # the ready list every design consumes, and goodsd's queue name
TEMPLATE = "bench:template"  # the prepared backlog, in TEMPLATE_DB; copied to db 0 per run
TEMPLATE_DB = 1
LATENCY_LIST = "bench:latency"

PUSH_CHUNK = 1_000  # items per LPUSH while building the template
LATENCY_WARMUP = 20  # samples dropped first: each child's first item opens its connection
LATENCY_GAP = 0.002  # seconds between latency samples, so each one meets an idle queue
GOAL_RATIO = 50.0  # goodsd batch 100 vs classic, same process count
GOAL_P50_MS = 1.0
# A window is flagged when the rest of the machine kept this many cores busy meanwhile.
BUSY_OTHERS = 0.2

# The bare loop's one script: up to ARGV[1] items off the pop end, nothing else.
BARE_POP = "return redis.call('RPOP', KEYS[1], ARGV[1])"


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    runs: int  # measurements of each configuration
    window: float  # seconds each throughput measurement lasts
    warmup: float  # seconds between all processes being up and the window opening
    backlog: int  # items each run starts on
    designs: tuple[str, ...]  # of "classic", "bare", "goodsd"
    processes: tuple[int, ...]
    batches: tuple[int, ...]  # for bare and goodsd; classic has no batches
    codes: tuple[Path, ...]  # checkouts whose goodsd to run, side by side
    latency: tuple[tuple[int, int], ...]  # (processes, batch) of each latency row
    latency_samples: int  # per run


@dataclass(frozen=True)
class Setup:
    """One row of the throughput table."""

    design: str  # "classic", "bare" or a goodsd label ("goodsd", or "goodsd:<checkout>")
    processes: int
    batch: int | None  # None for classic, which takes one item per round trip
    code: Path | None = None  # the checkout whose goodsd runs; goodsd rows only

    def __str__(self) -> str:
        batch = f" b={self.batch}" if self.batch is not None else ""
        return f"{self.design} p={self.processes}{batch}"


@dataclass(frozen=True)
class Reading:
    """Counters at one moment of a run; two of them make a Sample."""

    at: float  # perf_counter seconds
    handled: int  # items handled so far
    workers: float  # CPU seconds of the worker processes
    master: float  # CPU seconds of the goodsd master (0 for the others)
    redis: float  # CPU seconds of redis-server
    own: float  # CPU seconds of this bench process
    machine: MachineCpu


@dataclass(frozen=True)
class Sample:
    """One run's window: items per second, CPU microseconds per item, other load in cores."""

    items_per_second: float
    workers_us: float  # worker CPU per item
    master_us: float  # goodsd master CPU per item
    redis_us: float  # redis-server CPU per item
    other_cores: float  # CPUs kept busy by everything else on the machine, steal included

    @classmethod
    def between(cls, start: Reading, end: Reading) -> Sample:
        seconds = end.at - start.at
        items = end.handled - start.handled
        if items <= 0:
            raise BenchError("no item was handled during the window")
        ours = sum(
            getattr(end, f) - getattr(start, f) for f in ("workers", "master", "redis", "own")
        )
        busy = end.machine.busy - start.machine.busy + end.machine.steal - start.machine.steal

        def per_item(f: str) -> float:
            return (getattr(end, f) - getattr(start, f)) / items * 1e6

        return cls(
            items_per_second=items / seconds,
            workers_us=per_item("workers"),
            master_us=per_item("master"),
            redis_us=per_item("redis"),
            # /proc/stat counts in 10 ms ticks, so a quiet machine can come out a hair below 0.
            other_cores=max(0.0, (busy - ours) / seconds),
        )


@dataclass
class Results:
    """Samples by setup, in the order the setups were first measured."""

    samples: dict[Setup, list[Sample]] = field(default_factory=dict)
    latency: dict[Setup, list[tuple[float, float]]] = field(default_factory=dict)  # p50, p99

    def add(self, setup: Setup, sample: Sample) -> None:
        self.samples.setdefault(setup, []).append(sample)

    def median_rate(self, design: str, processes: int, batch: int | None) -> float | None:
        for setup, samples in self.samples.items():
            if (setup.design, setup.processes, setup.batch) == (design, processes, batch):
                return statistics.median(s.items_per_second for s in samples)
        return None


def build_template(server: LocalRedis, items: int) -> None:
    """The backlog every run starts on, built once: `good0`, `good1`, ... in TEMPLATE_DB."""
    r = server.client(db=TEMPLATE_DB)
    r.delete(TEMPLATE)
    pipe = r.pipeline(transaction=False)
    for start in range(0, items, PUSH_CHUNK):
        pipe.lpush(TEMPLATE, *(f"good{i}" for i in range(start, min(start + PUSH_CHUNK, items))))
        if len(pipe) >= 100:
            pipe.execute()
    pipe.execute()


def fresh_backlog(server: LocalRedis) -> None:
    """An empty db 0 holding only a full backlog; COPY takes milliseconds even for millions."""
    server.client().flushdb()
    server.client(db=TEMPLATE_DB).copy(TEMPLATE, QUEUE, destination_db="0")


# --- the designs ----------------------------------------------------------------------------


class Pool(Protocol):
    """A design's running processes, as one run sees them."""

    def wait_ready(self) -> None: ...
    def handled(self) -> int: ...
    def worker_pids(self) -> list[int]: ...
    def master_pids(self) -> list[int]: ...
    def stop(self) -> list[str]: ...


def classic_consumer(url: str, lock: Any, ready: Any, index: int, counts: Any) -> None:
    """The classic consumer loop, as the pattern is usually written.

    It pops with LPOP from the end the producer LPUSHes to, so it runs items LIFO; kept as the
    classic code had it. The lock is held around LLEN + LPOP, and an empty list means a 1 s
    sleep. ``counts[index]`` is this bench's bookkeeping: items handled by this process.
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
            time.sleep(1)
            continue
        noop(item)
        counts[index] += 1


def bare_consumer(url: str, batch: int, ready: Any, index: int, counts: Any) -> None:
    """The floor: one script call pops up to ``batch`` items, the handler runs on each, and
    nothing else happens per item; ``counts[index]`` grows once per batch."""
    r = redis.Redis.from_url(url)
    pop = r.register_script(BARE_POP)
    r.script_load(BARE_POP)
    ready.put(index)
    while True:
        items = pop(keys=[QUEUE], args=[batch])
        if not items:
            time.sleep(0.01)  # never in a window: runs end long before the backlog does
            continue
        for item in items:
            noop(item)
        counts[index] += len(items)


class ForkedPool:
    """Consumer processes forked from this bench, counting what they handle in shared memory;
    for the classic and the bare designs."""

    def __init__(self, setup: Setup, url: str) -> None:
        ctx = multiprocessing.get_context("fork")
        self.ready = ctx.Queue()
        self.counts = ctx.RawArray("q", setup.processes)
        if setup.design == "classic":
            target: Callable[..., None] = classic_consumer
            shared: Any = ctx.Lock()
        else:
            target, shared = bare_consumer, setup.batch
        self.children = [
            ctx.Process(target=target, args=(url, shared, self.ready, i, self.counts), daemon=True)
            for i in range(setup.processes)
        ]
        for child in self.children:
            child.start()

    def wait_ready(self) -> None:
        try:
            for _ in self.children:
                self.ready.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            raise BenchError(f"consumers did not connect within {READY_TIMEOUT:g}s") from None

    def handled(self) -> int:
        for child in self.children:
            if child.exitcode is not None:
                raise BenchError(f"a consumer exited with status {child.exitcode}")
        return sum(self.counts)

    def worker_pids(self) -> list[int]:
        return [child.pid for child in self.children if child.pid is not None]

    def master_pids(self) -> list[int]:
        return []

    def stop(self) -> list[str]:
        """SIGTERM: these loops hold nothing that needs a clean exit."""
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.join()
        return []


def goodsd_config(url: str, processes: int, batch: int, handler: str) -> dict[str, Any]:
    """A goodsd config as YAML data: defaults but for the queue, processes, batch, handler."""
    return {
        "redis": {"url": url},
        "queue": QUEUE,
        "pythonpath": [str(BENCH_DIR)],
        "consumers": {"processes": processes, "batch": batch, "handler": handler},
        "logging": {"level": "warning"},
    }


def start_pool(setup: Setup, server: LocalRedis, workdir: Path) -> Pool:
    """Start the processes of ``setup``: forked loops for classic and bare, else goodsd."""
    if setup.code is None:
        return ForkedPool(setup, server.url)
    assert setup.batch is not None
    config = goodsd_config(server.url, setup.processes, setup.batch, "goodsd.handlers:noop")
    name = f"{setup.design}-p{setup.processes}-b{setup.batch}".replace(":", "-")
    return GoodsdPool(workdir, name, setup.code, config, server.url)


# --- one measurement ------------------------------------------------------------------------


def read(pool: Pool, server_pid: int) -> Reading:
    """The counters now. CPU first and the item count last, the same at both ends."""
    machine = machine_seconds()
    workers = processes_seconds(pool.worker_pids())
    master = processes_seconds(pool.master_pids())
    redis_cpu = processes_seconds([server_pid])
    own = time.process_time()
    return Reading(time.perf_counter(), pool.handled(), workers, master, redis_cpu, own, machine)


def measure(setup: Setup, server: LocalRedis, workdir: Path, plan: Plan) -> Sample:
    """One run of ``setup``: start on a full backlog, warm up, measure one window, stop."""
    fresh_backlog(server)
    server_pid = server.pid
    assert server_pid is not None
    pool = start_pool(setup, server, workdir)
    problems: list[str] = []
    try:
        pool.wait_ready()
        time.sleep(plan.warmup)  # the measurement's warm-up, not a wait for an event
        start = read(pool, server_pid)
        time.sleep(plan.window)  # the measuring window itself
        end = read(pool, server_pid)
        if server.client().llen(QUEUE) == 0:
            raise BenchError(f"{setup}: the backlog ran dry; give a larger --backlog")
    except ProcessGone as exc:
        raise BenchError(f"{setup}: a worker exited during the window ({exc})") from None
    finally:
        problems = pool.stop()
    for problem in problems:
        print(f"  warning ({setup}): {problem}", file=sys.stderr)
    return Sample.between(start, end)


def measure_latency(
    setup: Setup, server: LocalRedis, workdir: Path, samples: int
) -> tuple[float, float]:
    """Push single timestamped items on an idle queue; return the p50 and p99 pickup delays
    in ms (push to handler call)."""
    assert setup.code is not None and setup.batch is not None
    r = server.client()
    r.flushdb()
    config = goodsd_config(server.url, setup.processes, setup.batch, "latency_handler:stamp")
    name = f"latency-{setup.design}-p{setup.processes}-b{setup.batch}".replace(":", "-")
    daemon = GoodsdPool(workdir, name, setup.code, config, server.url)
    delays: list[float] = []
    try:
        daemon.wait_ready()
        for n in range(LATENCY_WARMUP + samples):
            time.sleep(LATENCY_GAP)  # spacing between samples, so each meets an idle queue
            daemon.queue.push([repr(time.time()).encode()])
            reply = r.blpop([LATENCY_LIST], timeout=5)
            if reply is None:
                daemon.check_alive()
                raise BenchError(
                    f"no latency sample within 5s (sample {n}, {setup})\n{daemon.log_tail()}"
                )
            if n >= LATENCY_WARMUP:
                delays.append(float(reply[1]) * 1000)
    finally:
        for problem in daemon.stop():
            print(f"  warning (latency {setup}): {problem}", file=sys.stderr)
    return percentile(delays, 50), percentile(delays, 99)


def percentile(values: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile (1-99) of ``values``, interpolated; needs two values."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# --- what runs, and in which order ----------------------------------------------------------


def setups(plan: Plan) -> list[Setup]:
    """Every throughput row, grouped by process count: classic, then bare and goodsd by batch."""
    rows: list[Setup] = []
    for processes in plan.processes:
        if "classic" in plan.designs:
            rows.append(Setup("classic", processes, None))
        for batch in plan.batches:
            if "bare" in plan.designs:
                rows.append(Setup("bare", processes, batch))
            if "goodsd" in plan.designs:
                rows += [
                    Setup(code_label(code, plan.codes), processes, batch, code)
                    for code in plan.codes
                ]
    return rows


def latency_setups(plan: Plan) -> list[Setup]:
    """Every latency row: each (processes, batch) of the plan, for each checkout."""
    return [
        Setup(code_label(code, plan.codes), processes, batch, code)
        for processes, batch in plan.latency
        for code in plan.codes
    ]


def rounds(plan: Plan) -> Iterator[tuple[int, Setup]]:
    """(round, setup): every setup once per round, so slow spells spread over all of them."""
    for run in range(plan.runs):
        for setup in setups(plan):
            yield run, setup


# --- reporting ------------------------------------------------------------------------------


def describe_plan(plan: Plan) -> str:
    """One line saying what each run timed."""
    return (
        f"method: {plan.runs} runs of each row, in rounds; a run measures a {plan.window:g} s"
        f" window, {plan.warmup:g} s after all its processes are up, on a backlog of"
        f" {plan.backlog:,} items"
    )


def throughput_row(results: Results, setup: Setup, samples: Sequence[Sample], width: int) -> str:
    """One row of the throughput table: medians, range, ratios, CPU per item, other load."""

    def median(field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples)

    rate = median("items_per_second")
    classic = results.median_rate("classic", setup.processes, None)
    bare = results.median_rate("bare", setup.processes, setup.batch)
    is_goodsd = setup.code is not None
    vs_classic = f"{rate / classic:.1f}x" if classic and setup.design != "classic" else "-"
    of_bare = f"{rate / bare:.2f}" if bare and is_goodsd else "-"
    master = f"{median('master_us'):.2f}" if is_goodsd else "-"
    rates = "(" + spread([s.items_per_second for s in samples]) + ")"
    return (
        f"{setup.design:{width}} {setup.processes:>5} {setup.batch or '-':>5} {rate:>10,.0f}"
        f" {rates:>21} {vs_classic:>10} {of_bare:>7} {median('workers_us'):>8.2f} {master:>7}"
        f" {median('redis_us'):>6.2f} {median('other_cores'):>6.2f}"
    )


def throughput_lines(results: Results, runs: int) -> list[str]:
    """The throughput table with its header and notes."""
    width = max(len("design"), *(len(setup.design) for setup in results.samples))
    lines = [
        f"no-op items/s: median of {runs} runs (min-max); CPU us per item and other load: medians",
        f"{'design':{width}} {'procs':>5} {'batch':>5} {'items/s':>10} {'(min-max)':>21}"
        f" {'vs classic':>10} {'of bare':>7} {'workers':>8} {'master':>7} {'redis':>6}"
        f" {'other':>6}",
    ]
    for setup, samples in results.samples.items():
        lines.append(throughput_row(results, setup, samples, width))
    lines += [
        "vs classic: median over classic's median, same processes; of bare: median over the",
        "  bare loop's median, same processes and batch",
        "workers, master, redis: CPU microseconds per item handled, from /proc; other: CPUs",
        "  kept busy meanwhile by everything else on the machine (hypervisor steal included)",
    ]
    others = [s.other_cores for samples in results.samples.values() for s in samples]
    busy = sum(1 for cores in others if cores > BUSY_OTHERS)
    lines.append(
        f"other load over all {len(others)} windows: median {statistics.median(others):.2f},"
        f" max {max(others):.2f} CPUs; above {BUSY_OTHERS:g} in {busy}"
        + ("; a quieter machine gives higher items/s" if busy else "")
    )
    return lines


def latency_lines(results: Results, samples: int) -> list[str]:
    """The pickup latency table: medians and ranges of each run's p50 and p99."""
    runs = len(next(iter(results.latency.values())))
    width = max(len("design"), *(len(setup.design) for setup in results.latency))
    lines = [
        f"pickup latency, idle queue, push to handler call: {samples} items per run; median of"
        f" {runs} runs' p50 and p99 (min-max)",
        f"{'design':{width}} {'procs':>5} {'batch':>5} {'p50 ms':>8} {'(min-max)':>13}"
        f" {'p99 ms':>8} {'(min-max)':>13}",
    ]
    for setup, rows in results.latency.items():
        p50s, p99s = [p50 for p50, _ in rows], [p99 for _, p99 in rows]
        lines.append(
            f"{setup.design:{width}} {setup.processes:>5} {setup.batch:>5}"
            f" {statistics.median(p50s):>8.3f}"
            f" {f'({min(p50s):.3f}-{max(p50s):.3f})':>13} {statistics.median(p99s):>8.3f}"
            f" {f'({min(p99s):.3f}-{max(p99s):.3f})':>13}"
        )
    lines.append(
        f"{'classic':{width}} {'any':>5} {'-':>5}  0 to 1000 ms (it sleeps 1 s when empty)"
    )
    return lines


def goal_lines(results: Results) -> list[str]:
    """Whether the medians meet the design's goals."""
    lines = [
        f"goals (2-core machine): batch 100 >= {GOAL_RATIO:g}x classic;"
        f" pickup p50 <= {GOAL_P50_MS:g} ms"
    ]
    for setup in results.samples:
        classic = results.median_rate("classic", setup.processes, None)
        if setup.code is None or setup.batch != 100 or not classic:
            continue
        rate = results.median_rate(setup.design, setup.processes, setup.batch)
        assert rate is not None
        ratio = rate / classic
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        lines.append(f"  throughput {setup}: {ratio:.1f}x  {verdict}")
    for setup, rows in results.latency.items():
        p50 = statistics.median(p50 for p50, _ in rows)
        verdict = "met" if p50 <= GOAL_P50_MS else "NOT met"
        lines.append(f"  latency {setup}: p50 {p50:.3f} ms  {verdict}")
    return lines


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Plan:
    """The command line as a Plan; argparse exits 2 on a bad one."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="3 runs of fewer, shorter rows")
    parser.add_argument("--runs", type=int, help="runs of each row (default 5, quick 3)")
    parser.add_argument("--window", type=float, help="seconds each run measures (default 1)")
    parser.add_argument(
        "--backlog", type=int, default=3_000_000, help="items each run starts on (3,000,000)"
    )
    parser.add_argument("--processes", type=int_list, help="default 1,2,4 (quick 1,2)")
    parser.add_argument("--batches", type=int_list, help="default 1,10,100 (quick 10,100)")
    parser.add_argument(
        "--designs",
        default="classic,bare,goodsd,latency",
        help="which to measure, of classic,bare,goodsd,latency (default all)",
    )
    parser.add_argument(
        "--code",
        type=checkout,
        action="append",
        help="a checkout whose goodsd to run (repeat to compare versions in one run;"
        " default: this one)",
    )
    args = parser.parse_args(argv)
    designs = tuple(args.designs.split(","))
    unknown = set(designs) - {"classic", "bare", "goodsd", "latency"}
    if unknown:
        parser.error(f"unknown designs: {', '.join(sorted(unknown))}")
    runs = args.runs or (3 if args.quick else 5)
    window = args.window or (0.5 if args.quick else 1.0)
    if runs < 1 or window <= 0 or args.backlog < 1:
        parser.error("--runs, --window and --backlog must be positive")
    latency = ((1, 100),) if args.quick else ((1, 100), (4, 100))
    return Plan(
        runs=runs,
        window=window,
        warmup=0.2 if args.quick else 0.3,
        backlog=args.backlog,
        designs=designs,
        processes=args.processes or ((1, 2) if args.quick else (1, 2, 4)),
        batches=args.batches or ((10, 100) if args.quick else (1, 10, 100)),
        codes=tuple(args.code or (REPO_DIR,)),
        latency=latency if "latency" in designs else (),
        latency_samples=100 if args.quick else 300,
    )


def run_all(plan: Plan, server: LocalRedis, workdir: Path, results: Results) -> None:
    """Every throughput run, round by round, then every latency run."""
    if any(d in plan.designs for d in ("classic", "bare", "goodsd")):
        build_template(server, plan.backlog)
    for run, setup in rounds(plan):
        print(f"run {run + 1}/{plan.runs}: {setup} ...", file=sys.stderr, flush=True)
        results.add(setup, measure(setup, server, workdir, plan))
    for run in range(plan.runs):
        for setup in latency_setups(plan):
            print(f"run {run + 1}/{plan.runs}: latency {setup} ...", file=sys.stderr, flush=True)
            row = measure_latency(setup, server, workdir, plan.latency_samples)
            results.latency.setdefault(setup, []).append(row)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, then print everything measured (also after a failure); 0, or 1 on failure."""
    plan = parse_args(argv)
    results = Results()
    load_before = load_average()
    status = 0
    with LocalRedis() as server, tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp:
        header = describe_machine(server)
        try:
            run_all(plan, server, Path(tmp), results)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            status = 1
    lines = [
        *header,
        f"load average (1, 5, 15 min): {load_before} before, {load_average()} after",
        describe_plan(plan),
    ]
    if results.samples:
        lines += ["", *throughput_lines(results, plan.runs)]
    if results.latency:
        lines += ["", *latency_lines(results, plan.latency_samples)]
    if results.samples or results.latency:
        lines += ["", *goal_lines(results)]
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
