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
     [--redis server|cluster|replicas [--wait-replicas N]]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
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

from cputime import MachineCpu, ProcessGone, machine_seconds, processes_seconds  # noqa: E402

from goodsd.config import RedisConfig  # noqa: E402
from goodsd.config import dump as dump_config  # noqa: E402
from goodsd.handlers import noop  # noqa: E402
from goodsd.localredis import LocalCluster, LocalRedis, LocalSentinels  # noqa: E402
from goodsd.redisconn import connect  # noqa: E402
from goodsd.store import Views  # noqa: E402

QUEUE = "bench"  # the ready list every design consumes, and goodsd's queue name
TEMPLATE = "bench:template"  # the prepared backlog, in TEMPLATE_DB; copied to db 0 per run
TEMPLATE_DB = 1
LATENCY_LIST = "bench:latency"

PUSH_CHUNK = 1_000  # items per LPUSH while building the template
POLL = 0.005  # seconds between polls while waiting for something
READY_TIMEOUT = 30.0  # seconds for a design's processes to come up
STOP_TIMEOUT = 45.0  # seconds for goodsd to stop on SIGTERM (graceful_timeout is 30 s)
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
    redis: str = "server"  # "server", "cluster" (queue on a node of 3), "replicas" (2 of them)
    wait_replicas: tuple[int, ...] = (0,)  # goodsd's redis.wait_replicas, each a row


@dataclass(frozen=True)
class Setup:
    """One row of the throughput table."""

    design: str  # "classic", "bare" or a goodsd label ("goodsd", or "goodsd:<checkout>")
    processes: int
    batch: int | None  # None for classic, which takes one item per round trip
    code: Path | None = None  # the checkout whose goodsd runs; goodsd rows only
    wait_replicas: int = 0  # goodsd's redis.wait_replicas

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


class BenchError(RuntimeError):
    """A run did not finish or misbehaved; the message says which and why."""


class WaitTimeout(BenchError):
    """Something expected did not happen in time."""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every POLL seconds; raise WaitTimeout naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


class BenchRedis:
    """Where a bench runs: ``url`` is goodsd's ``redis.url``; ``node`` the server that holds
    the queue (its CPU is counted). On one server the backlog is kept in TEMPLATE_DB; a
    cluster node has only db 0, so there it is a key of the queue's slot, kept across runs."""

    def __init__(self, url: str, node: LocalRedis, cluster: bool) -> None:
        self.url = url
        self.node = node
        self.cluster = cluster
        self.template = "{" + QUEUE + "}:template" if cluster else TEMPLATE
        self.template_db = 0 if cluster else TEMPLATE_DB

    @property
    def pid(self) -> int | None:
        return self.node.pid

    def client(self, **kwargs: object) -> redis.Redis:
        """A client of the node holding the queue."""
        return self.node.client(**kwargs)


@contextlib.contextmanager
def bench_redis(kind: str) -> Iterator[BenchRedis]:
    """One private redis-server (``server``); a cluster of 3 with the queue on one of its
    nodes (``cluster``); or a primary with 2 replicas (``replicas``, for wait_replicas)."""
    if kind == "cluster":
        with LocalCluster(3) as cluster:
            yield BenchRedis(cluster.url, cluster.serving(QUEUE), cluster=True)
    elif kind == "replicas":
        with LocalSentinels(2, 1) as group:
            primary = group.primary()
            yield BenchRedis(primary.url, primary, cluster=False)
    else:
        with LocalRedis() as server:
            yield BenchRedis(server.url, server, cluster=False)


def build_template(server: BenchRedis, items: int) -> None:
    """The backlog every run starts on, built once: `good0`, `good1`, ... (see BenchRedis)."""
    r = server.client(db=server.template_db)
    r.delete(server.template)
    pipe = r.pipeline(transaction=False)
    for start in range(0, items, PUSH_CHUNK):
        chunk = (f"good{i}" for i in range(start, min(start + PUSH_CHUNK, items)))
        pipe.lpush(server.template, *chunk)
        if len(pipe) >= 100:
            pipe.execute()
    pipe.execute()


def fresh_backlog(server: BenchRedis) -> None:
    """An empty db 0 holding only a full backlog; COPY takes milliseconds even for millions."""
    if server.cluster:
        r = server.client()
        others = [key for key in r.scan_iter(count=1000) if key != server.template.encode()]
        if others:
            r.delete(*others)
        r.copy(server.template, QUEUE)
        return
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


class GoodsdPool:
    """One `python -m goodsd run` in its own session, output to a log file, run from the
    checkout ``code`` (its goodsd package, and its directory as the working directory, since
    ``python -m`` puts that first on the path)."""

    def __init__(
        self, workdir: Path, name: str, code: Path, config: dict[str, Any], redis_url: str
    ) -> None:
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(dump_config(config))
        self.processes = config["consumers"]["processes"]
        self.queue = Views(connect(RedisConfig(redis_url), "bench", queue=QUEUE), QUEUE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
        env["BENCH_REDIS_URL"] = redis_url
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "goodsd", "run", "-c", str(self.config_path)],
                cwd=code,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        """Fail at once, with its log, if the daemon has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"goodsd exited with status {code}\n{self.log_tail()}")

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
            problems.append(f"no-op items failed: stats {stats}")
        return problems

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


def goodsd_config(
    url: str, processes: int, batch: int, handler: str, wait_replicas: int = 0
) -> dict[str, Any]:
    """A goodsd config as YAML data: defaults but for the queue, processes, batch, handler
    (and redis.wait_replicas, when set)."""
    return {
        "redis": {"url": url, **({"wait_replicas": wait_replicas} if wait_replicas else {})},
        "queue": QUEUE,
        "pythonpath": [str(BENCH_DIR)],
        "consumers": {"processes": processes, "batch": batch, "handler": handler},
        "logging": {"level": "warning"},
    }


def start_pool(setup: Setup, server: BenchRedis, workdir: Path, plan: Plan) -> Pool:
    """Start the processes of ``setup``: forked loops for classic and bare, else goodsd."""
    if setup.code is None:
        return ForkedPool(setup, server.url)
    assert setup.batch is not None
    config = goodsd_config(
        server.url, setup.processes, setup.batch, "goodsd.handlers:noop", setup.wait_replicas
    )
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


def measure(setup: Setup, server: BenchRedis, workdir: Path, plan: Plan) -> Sample:
    """One run of ``setup``: start on a full backlog, warm up, measure one window, stop."""
    fresh_backlog(server)
    server_pid = server.pid
    assert server_pid is not None
    pool = start_pool(setup, server, workdir, plan)
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
    setup: Setup, server: BenchRedis, workdir: Path, samples: int
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


def code_label(code: Path, codes: Sequence[Path], wait_replicas: int = 0) -> str:
    """``goodsd`` for this checkout alone; ``goodsd:<dir name>`` when checkouts are compared;
    `` wait N`` after it for ``redis.wait_replicas: N``."""
    label = "goodsd" if codes == (REPO_DIR,) else f"goodsd:{code.name}"
    return f"{label} wait {wait_replicas}" if wait_replicas else label


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
                    Setup(code_label(code, plan.codes, wait), processes, batch, code, wait)
                    for code in plan.codes
                    for wait in plan.wait_replicas
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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as printed."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def describe_machine(server: BenchRedis, plan: Plan) -> list[str]:
    """Lines naming the machine (CPUs, model, kernel) and the software versions."""
    version = server.client().info("server")["redis_version"]
    usable = len(os.sched_getaffinity(0))
    return [
        f"machine: {os.cpu_count()} CPUs ({usable} usable by this process), {cpu_model()},"
        f" Linux {platform.release()}",
        f"software: Python {platform.python_version()}, {client_library()},"
        f" redis-server {version} {REDIS_KINDS[plan.redis]}"
        + (
            f"; redis.wait_replicas {', '.join(map(str, plan.wait_replicas))}"
            if plan.wait_replicas != (0,)
            else ""
        ),
    ]


def client_library() -> str:
    """redis-py's version, and hiredis's: without it, redis-py parses replies in Python,
    which costs every design dearly per item."""
    described = f"redis-py {importlib.metadata.version('redis')}"
    try:
        return f"{described} (hiredis {importlib.metadata.version('hiredis')})"
    except importlib.metadata.PackageNotFoundError:
        return f"{described} WITHOUT hiredis (replies parsed in Python: slower)"


# What each --redis stands for, as the header says it.
REDIS_KINDS = {
    "server": "on a unix socket",
    "cluster": "on TCP, the queue on one node of a 3-node cluster (redis+cluster://)",
    "replicas": "on TCP, a primary with 2 replicas",
}


def describe_plan(plan: Plan) -> str:
    """One line saying what each run timed."""
    return (
        f"method: {plan.runs} runs of each row, in rounds; a run measures a {plan.window:g} s"
        f" window, {plan.warmup:g} s after all its processes are up, on a backlog of"
        f" {plan.backlog:,} items"
    )


def spread(values: Sequence[float]) -> str:
    """``min-max`` of ``values``, with thousands separators."""
    return f"{min(values):,.0f}-{max(values):,.0f}"


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


def wait_list(text: str) -> tuple[int, ...]:
    """``--wait-replicas`` argument: "0,1" -> (0, 1); each 0 or more."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"each number must be at least 0: {text!r}")
    return values


def checkout(text: str) -> Path:
    """``--code`` argument: the resolved path of a goodsd checkout."""
    path = Path(text).resolve()
    if not (path / "goodsd" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: not a checkout of goodsd (no goodsd/__main__.py)"
        )
    return path


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
        "--redis",
        choices=sorted(REDIS_KINDS),
        default="server",
        help="server (default): one on a unix socket; cluster: the queue on a node of a"
        " 3-node cluster; replicas: a primary with 2 replicas (goodsd rows only, but for"
        " server)",
    )
    parser.add_argument(
        "--wait-replicas",
        type=wait_list,
        default=(0,),
        metavar="N[,N...]",
        help="goodsd's redis.wait_replicas, each a row (with --redis replicas; default 0)",
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
    if args.redis != "server" and set(designs) != {"goodsd"}:
        parser.error("--redis cluster and replicas measure goodsd only: add --designs goodsd")
    if args.wait_replicas != (0,) and args.redis != "replicas":
        parser.error("--wait-replicas needs --redis replicas")
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
        redis=args.redis,
        wait_replicas=args.wait_replicas,
    )


def run_all(plan: Plan, server: BenchRedis, workdir: Path, results: Results) -> None:
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
    with (
        bench_redis(plan.redis) as server,
        tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp,
    ):
        header = describe_machine(server, plan)
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
