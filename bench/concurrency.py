"""Items in flight per consumer process: goodsd at `consumers.concurrency` K, side by side with
Dramatiq and arq, on handlers that wait rather than compute.

Starts its own redis-server (unix socket) and measures, in one run, for each sleep (1 and
10 ms) and each K (1, 10, 100, 1000), with 2 worker processes for every design:
- goodsd threads: `python -m goodsd run`, default config but for `processes`, the handler
  (a plain `def` that calls `time.sleep`) and `consumers.concurrency: K` (left out at K=1, the
  default, so that row runs today's code path);
- goodsd async: the same with an `async def` handler that awaits `asyncio.sleep`;
  `consumers.concurrency` is set at every K, K=1 too, since a goodsd without concurrency
  would not await the handler at all;
- dramatiq: the `dramatiq` command with `--processes 2` and its default 8 threads per process,
  its default middleware, the `time.sleep` handler;
- arq: 2 `arq` worker processes, the `asyncio.sleep` handler, `max_jobs` = K for each K of 10
  and above (arq's default is 10) and `poll_delay` 1 ms (its default, 0.5 s, pauses between
  reads of the queue; with 1 ms handlers the workers would mostly idle); in full mode also
  `arq-defaults`, `max_jobs` 10 and `poll_delay` 0.5 s, as arq comes.
The handlers are bench/sleep_handlers.py, the same functions for every design. By default
(`--count queue`) they only sleep, and each design is counted its own way (goodsd: its `done`
counter, acked items; Dramatiq: messages its ack deletes; arq: jobs it takes off its queue when
they have run). `--count incr` adds one `INCR` of a Redis counter after each sleep, an
identical count for all read from one place; that round trip costs more CPU than the sleep
(about 70 us per item here), so it measures the counter as much as the design. A goodsd that
does not know `consumers.concurrency` exits 78 on such a config; its rows print "n/a (no
concurrency support)" and the rest run on.

The peers run in their own virtualenv, bench/.peers-venv, created on first use with the pinned
versions in PEER_PACKAGES (never dependencies of goodsd), against the same redis-server, each
in its own database: goodsd uses db 0 (its backlog template db 1), Dramatiq db 2 (template db
3), arq db 4.

What is timed. Each run starts on a backlog written beforehand (goodsd and Dramatiq: a copy of
a prepared one, enqueued once through Dramatiq's own API for Dramatiq; arq: written before each
run in arq's job format), sized to outlast the run, starts the design's processes and waits
until all are up (goodsd: every consumer registered; the peers: each worker process counted
itself up), lets them warm up, and then measures a fixed window: items counted, and CPU time
from /proc of the design's processes (all of them, the goodsd master and Dramatiq's parent
too), of redis-server and of the whole machine. Starting and stopping are outside the window.
Each row runs `--runs` times, in rounds (every row once per round), so load that comes and
goes on a shared machine hits them all alike; a row shows the median and the range, and its
ratio to goodsd's threads row at K=1 with the same sleep (today's design, one item at a time).

Run: python bench/concurrency.py [--quick] [--runs N] [--window S] [--sleeps 1,10]
         [--k 1,10,100,1000] [--count incr|queue] [--designs goodsd,dramatiq,arq]
         [--code DIR ...]
`--quick` (1 ms only, K 1 and 100, 3 short runs) takes under 2 minutes, full mode under 15.
`--code DIR` (repeatable) runs the goodsd of other checkouts in the same rounds: with today's
main as one of them, the K=1 goal (within 5% of today) is checked.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Runnable from a plain checkout: make the goodsd package importable without installing it.
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from benchlib import (  # noqa: E402
    READY_TIMEOUT,
    STOP_TIMEOUT,
    BenchError,
    DaemonExited,
    GoodsdPool,
    WaitTimeout,
    checkout,
    code_label,
    describe_machine,
    int_list,
    load_average,
    spread,
    wait_for,
)
from cputime import (  # noqa: E402
    MachineCpu,
    ProcessGone,
    descendants,
    machine_seconds,
    processes_seconds,
)
from sleep_handlers import COUNTER, READY  # noqa: E402

from goodsd.exits import EXIT_CONFIG  # noqa: E402
from goodsd.localredis import LocalRedis  # noqa: E402

PROCESSES = 2  # worker processes of every design
DRAMATIQ_THREADS = 8  # Dramatiq's default worker threads per process
ARQ_DEFAULT_MAX_JOBS = 10
ARQ_DEFAULT_POLL_DELAY = 0.5  # seconds
ARQ_POLL_DELAY = 0.001  # seconds; what the arq rows use but arq-defaults

PEERS_VENV = BENCH_DIR / ".peers-venv"
PEER_PACKAGES = ("dramatiq[redis]==2.2.1", "arq==0.28.0")
PEERS_STAMP = PEERS_VENV / "bench-packages.txt"  # PEER_PACKAGES as last installed
PEER_INSTALL_TIMEOUT = 600.0  # seconds

QUEUE = "bench"  # goodsd's queue
GOODSD_DB, GOODSD_TEMPLATE_DB = 0, 1
DRAMATIQ_DB, DRAMATIQ_TEMPLATE_DB = 2, 3
ARQ_DB = 4
TEMPLATE = "bench:template"  # goodsd's prepared backlog, in GOODSD_TEMPLATE_DB
DRAMATIQ_KEYS = ("dramatiq:default", "dramatiq:default.msgs")  # its queue: ids, messages
ARQ_QUEUE = "arq:queue"

PUSH_CHUNK = 1_000  # items per LPUSH while building goodsd's template
# A backlog holds the items a row could handle, at most, in this many seconds (its processes
# times K over the sleep), so it outlasts start-up, warm-up and window...
BACKLOG_SECONDS = 6.0
# ...but no more than this per design: what a run can be handed without a long wait (goodsd:
# a COPY; Dramatiq: enqueued once, ~5,000 a second; arq: written before every run). The peers
# stay far below these rates; a run that empties its backlog fails and says so.
BACKLOG_CAP = {"goodsd": 1_000_000, "dramatiq": 40_000, "arq": 20_000}

NO_CONCURRENCY = "n/a (no concurrency support)"
# What the table's header says of each way of counting (--count).
COUNTING = {
    "incr": "every handler sleeps, then INCRs one Redis counter (identical work for every"
    " design), which is what is counted",
    "queue": "every handler only sleeps; counted from each design's own bookkeeping (goodsd:"
    " its done counter; Dramatiq: messages deleted at their ack; arq: jobs taken off its queue"
    " when run)",
}
GOAL_THREADS_1MS = 20_000  # items/s, 1 ms handler, K=100
GOAL_ASYNC_1MS = 25_000  # items/s, 1 ms handler, K=100
GOAL_ASYNC_10MS = 25_000  # items/s, 10 ms handler, K=1000
GOAL_K1_SHARE = 0.95  # K=1 against today's code, same sleep
# A window is flagged when the rest of the machine kept this many cores busy meanwhile.
BUSY_OTHERS = 0.2


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    runs: int  # measurements of each row
    window: float  # seconds each measurement lasts
    warmup: float  # seconds between all processes being up and the window opening
    sleeps: tuple[int, ...]  # handler sleeps, in ms
    ks: tuple[int, ...]  # goodsd's consumers.concurrency values; arq's max_jobs (>= 10)
    designs: tuple[str, ...]  # of "goodsd", "dramatiq", "arq"
    codes: tuple[Path, ...]  # checkouts whose goodsd to run, side by side
    count: str  # "incr": the handlers' counter; "queue": each design's own bookkeeping
    arq_defaults: bool  # add arq as it comes (max_jobs 10, poll_delay 0.5 s)


@dataclass(frozen=True)
class Setup:
    """One row of the table."""

    design: str  # a goodsd label ("goodsd" or "goodsd:<checkout>"), "dramatiq", "arq",
    #              or "arq-defaults"
    kind: str  # "threads" (time.sleep) or "async" (asyncio.sleep)
    sleep_ms: int
    k: int  # goodsd: consumers.concurrency; dramatiq: threads; arq: max_jobs (per process)
    code: Path | None = None  # the checkout whose goodsd runs; goodsd rows only
    count: str = "queue"  # how items are counted: "queue" or "incr" (see --count)

    def __str__(self) -> str:
        return f"{self.design} {self.kind} {self.sleep_ms}ms K={self.k}"

    @property
    def family(self) -> str:
        """ "goodsd", "dramatiq" or "arq": whose processes run the row."""
        if self.code is not None:
            return "goodsd"
        return "arq" if self.design.startswith("arq") else self.design

    @property
    def handler(self) -> str:
        """The handler's name in bench/sleep_handlers.py (and in the peers' modules)."""
        prefix = "async_" if self.kind == "async" else ""
        only = "_only" if self.count == "queue" else ""
        return f"{prefix}sleep{only}_{self.sleep_ms}ms"

    @property
    def sets_concurrency(self) -> bool:
        """Whether goodsd's config carries consumers.concurrency (see the module docstring)."""
        return self.code is not None and (self.kind == "async" or self.k > 1)

    @property
    def backlog(self) -> int:
        """Items this row's runs start on: see BACKLOG_SECONDS."""
        most = PROCESSES * self.k * 1000 / self.sleep_ms * BACKLOG_SECONDS
        return min(BACKLOG_CAP[self.family], math.ceil(most))


@dataclass(frozen=True)
class Reading:
    """Counters at one moment of a run; two of them make a Sample."""

    at: float  # perf_counter seconds
    handled: int  # items handled so far (or that plus a constant: only differences count)
    design: float  # CPU seconds of the design's processes
    redis: float  # CPU seconds of redis-server
    own: float  # CPU seconds of this bench process
    machine: MachineCpu


@dataclass(frozen=True)
class Sample:
    """One run's window: items per second, CPU microseconds per item, other load in cores."""

    items_per_second: float
    design_us: float  # CPU of the design's processes per item
    redis_us: float  # redis-server CPU per item
    other_cores: float  # CPUs kept busy by everything else on the machine, steal included

    @classmethod
    def between(cls, start: Reading, end: Reading) -> Sample:
        seconds = end.at - start.at
        items = end.handled - start.handled
        if items <= 0:
            raise BenchError("no item was handled during the window")
        ours = sum(getattr(end, f) - getattr(start, f) for f in ("design", "redis", "own"))
        busy = end.machine.busy - start.machine.busy + end.machine.steal - start.machine.steal
        return cls(
            items_per_second=items / seconds,
            design_us=(end.design - start.design) / items * 1e6,
            redis_us=(end.redis - start.redis) / items * 1e6,
            # /proc/stat counts in 10 ms ticks, so a quiet machine can come out a hair below 0.
            other_cores=max(0.0, (busy - ours) / seconds),
        )


@dataclass
class Results:
    """Samples by setup, in table order; and the rows that could not run, with why."""

    samples: dict[Setup, list[Sample]] = field(default_factory=dict)
    failed: dict[Setup, str] = field(default_factory=dict)

    def median_rate(self, setup: Setup) -> float | None:
        samples = self.samples.get(setup)
        return statistics.median(s.items_per_second for s in samples) if samples else None


class NoConcurrency(BenchError):
    """The goodsd under test rejects `consumers.concurrency` (a config error, exit 78)."""


# --- the peers' virtualenv ------------------------------------------------------------------


def peer_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def ensure_peers_venv() -> None:
    """Create bench/.peers-venv and install PEER_PACKAGES into it, unless it already holds
    them; BenchError with pip's output when that fails."""
    wanted = "\n".join(PEER_PACKAGES) + "\n"
    if peer_python().exists() and PEERS_STAMP.exists() and PEERS_STAMP.read_text() == wanted:
        return
    print(f"installing {', '.join(PEER_PACKAGES)} into {PEERS_VENV} ...", file=sys.stderr)
    steps = [[str(peer_python()), "-m", "pip", "install", "-q", *PEER_PACKAGES]]
    if not peer_python().exists():
        steps.insert(0, [sys.executable, "-m", "venv", str(PEERS_VENV)])
    for argv in steps:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PEER_INSTALL_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    PEERS_STAMP.write_text(wanted)


def peer_versions() -> str:
    """The peers' installed versions, and their Redis client's, as one line."""
    script = (
        "import importlib.metadata as m\n"
        "names = ('dramatiq', 'arq', 'redis', 'hiredis')\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in names))\n"
    )
    done = subprocess.run(
        [str(peer_python()), "-c", script], capture_output=True, text=True, check=False
    )
    versions = done.stdout.strip() or f"unknown ({done.stderr.strip()})"
    return f"peers ({PEERS_VENV.relative_to(REPO_DIR)}): {versions}"


def peer_env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a peer's process: its counter (and broker) database, and this
    directory on the path for its module and the handlers."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(BENCH_COUNTER_URL=url, PYTHONPATH=str(BENCH_DIR), **(extra or {}))
    return env


def run_peer_script(argv: list[str], url: str) -> None:
    """Run ``argv`` (a peer module and its arguments) with the peers' python."""
    done = subprocess.run(
        [str(peer_python()), *argv],
        cwd=BENCH_DIR,
        env=peer_env(url),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


# --- backlogs -------------------------------------------------------------------------------


def db_url(server: LocalRedis, db: int) -> str:
    return f"{server.url}?db={db}"


@dataclass
class Backlogs:
    """Prepares each run's backlog; the templates are built on first use and kept."""

    server: LocalRedis
    goodsd_items: int = 0  # items in goodsd's template
    dramatiq_items: dict[str, int] = field(default_factory=dict)  # by actor

    def prepare(self, setup: Setup) -> None:
        """An empty database for ``setup``'s design holding only its full backlog."""
        family = setup.family
        if family == "goodsd":
            self.goodsd(setup.backlog)
        elif family == "dramatiq":
            self.dramatiq(setup.handler, setup.backlog)
        else:
            self.server.client(db=ARQ_DB).flushdb()
            run_peer_script(
                ["peer_arq.py", setup.handler, str(setup.backlog)], db_url(self.server, ARQ_DB)
            )

    def goodsd(self, items: int) -> None:
        """`good0`, `good1`, ... copied from a template list (COPY takes milliseconds)."""
        template = self.server.client(db=GOODSD_TEMPLATE_DB)
        if self.goodsd_items < items:
            template.delete(TEMPLATE)
            pipe = template.pipeline(transaction=False)
            for start in range(0, items, PUSH_CHUNK):
                chunk = range(start, min(start + PUSH_CHUNK, items))
                pipe.lpush(TEMPLATE, *(f"good{i}" for i in chunk))
                if len(pipe) >= 100:
                    pipe.execute()
            pipe.execute()
            self.goodsd_items = items
        self.server.client(db=GOODSD_DB).flushdb()
        template.copy(TEMPLATE, QUEUE, destination_db=str(GOODSD_DB))

    def dramatiq(self, actor: str, items: int) -> None:
        """Dramatiq's queue keys, copied from a template enqueued once per actor through
        Dramatiq's own API and kept under the names ``template:<actor>:<key>``."""
        template = self.server.client(db=DRAMATIQ_TEMPLATE_DB)
        if self.dramatiq_items.get(actor, 0) < items:
            print(f"enqueueing {items:,} Dramatiq messages for {actor} ...", file=sys.stderr)
            for key in DRAMATIQ_KEYS:
                template.delete(key, f"template:{actor}:{key}")
            run_peer_script(
                ["peer_dramatiq.py", actor, str(items)],
                db_url(self.server, DRAMATIQ_TEMPLATE_DB),
            )
            for key in DRAMATIQ_KEYS:
                template.rename(key, f"template:{actor}:{key}")
            self.dramatiq_items[actor] = items
        self.server.client(db=DRAMATIQ_DB).flushdb()
        for key in DRAMATIQ_KEYS:
            template.copy(f"template:{actor}:{key}", key, destination_db=str(DRAMATIQ_DB))


# --- the designs ----------------------------------------------------------------------------


class Pool:
    """A design's running processes, as one run sees them: ``roots`` are the processes this
    bench started (each in its own session, output to ``log_path``), ``counter`` the design's
    database, holding the handlers' counter. Each design says how much of its backlog is left
    (``remaining``) and how many items it has finished by its own bookkeeping (``finished``,
    for --count queue).
    """

    def __init__(self, setup: Setup, counter: redis.Redis, log_path: Path) -> None:
        self.setup = setup
        self.counter = counter
        self.log_path = log_path
        self.roots: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        """Start one peer command from the peers' virtualenv."""
        with self.log_path.open("ab") as log:
            root = subprocess.Popen(
                [str(PEERS_VENV / "bin" / argv[0]), *argv[1:]],
                cwd=BENCH_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.roots.append(root)

    def wait_ready(self) -> None:
        """Wait until every worker process has counted itself up (the peers' start hooks)."""

        def up() -> bool:
            self.check_alive()
            return int(self.counter.get(READY) or 0) >= PROCESSES

        try:
            wait_for(up, READY_TIMEOUT, f"{PROCESSES} {self.setup.family} workers to start")
        except WaitTimeout as exc:
            raise BenchError(f"{exc}\n{self.log_tail()}") from None

    def check_alive(self) -> None:
        for root in self.roots:
            if root.poll() is not None:
                raise BenchError(
                    f"{self.setup}: a process exited with status {root.returncode}\n"
                    + self.log_tail()
                )

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    def handled(self) -> int:
        """Items handled so far, counted as the row's ``count`` says."""
        self.check_alive()
        if self.setup.count == "incr":
            return int(self.counter.get(COUNTER) or 0)
        return self.finished()

    def pids(self) -> list[int]:
        """Every process of the design: what this bench started, and all below them."""
        pids = [root.pid for root in self.roots]
        return pids + [child for pid in pids for child in descendants(pid)]

    def remaining(self) -> int:
        raise NotImplementedError

    def finished(self) -> int:
        raise NotImplementedError

    def stop(self) -> list[str]:
        """SIGTERM, wait, then SIGKILL what is left in the sessions. The peers' exit statuses
        are not judged: arq, for one, exits 1 when stopped with jobs in flight."""
        problems: list[str] = []
        for root in self.roots:
            if root.poll() is None:
                root.send_signal(signal.SIGTERM)
        for root in self.roots:
            try:
                root.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"a process did not stop within {STOP_TIMEOUT:g}s of SIGTERM")
            try:
                os.killpg(root.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # Nothing left in its session: the clean case.
            else:
                problems.append("processes were left behind in its session; killed them")
            root.wait()
        return problems


class DramatiqPool(Pool):
    """`dramatiq peer_dramatiq --processes 2 --threads 8`: one parent, two worker processes."""

    def __init__(self, setup: Setup, server: LocalRedis, workdir: Path) -> None:
        super().__init__(setup, server.client(db=DRAMATIQ_DB), workdir / "dramatiq.log")
        argv = ["dramatiq", "peer_dramatiq", "--processes", str(PROCESSES)]
        self.start([*argv, "--threads", str(setup.k)], peer_env(db_url(server, DRAMATIQ_DB)))

    def remaining(self) -> int:
        return self.counter.llen(DRAMATIQ_KEYS[0])

    def finished(self) -> int:
        """Less the messages still held: Dramatiq deletes a message from its hash at the ack.
        Negative, but only differences between two readings are used."""
        return -self.counter.hlen(DRAMATIQ_KEYS[1])


class ArqPool(Pool):
    """Two `arq peer_arq.WorkerSettings` processes (arq runs one worker per command)."""

    def __init__(self, setup: Setup, server: LocalRedis, workdir: Path) -> None:
        super().__init__(setup, server.client(db=ARQ_DB), workdir / "arq.log")
        poll = ARQ_DEFAULT_POLL_DELAY if setup.design == "arq-defaults" else ARQ_POLL_DELAY
        env = peer_env(
            db_url(server, ARQ_DB),
            {"BENCH_ARQ_MAX_JOBS": str(setup.k), "BENCH_ARQ_POLL_DELAY": repr(poll)},
        )
        for _ in range(PROCESSES):
            self.start(["arq", "peer_arq.WorkerSettings"], env)

    def remaining(self) -> int:
        return self.counter.zcard(ARQ_QUEUE)

    def finished(self) -> int:
        """Less the jobs still queued: arq takes a job off its queue when the job has run.
        Negative, but only differences between two readings are used."""
        return -self.counter.zcard(ARQ_QUEUE)


class GoodsdRun(Pool):
    """`python -m goodsd run` of ``setup.code`` on the sleep handlers; NoConcurrency when that
    goodsd rejects `consumers.concurrency`."""

    def __init__(self, setup: Setup, server: LocalRedis, workdir: Path) -> None:
        assert setup.code is not None
        name = f"{setup.design}-{setup.handler}-k{setup.k}".replace(":", "-")
        super().__init__(setup, server.client(db=GOODSD_DB), workdir / f"{name}.log")
        consumers: dict[str, Any] = {
            "processes": PROCESSES,
            "handler": f"sleep_handlers:{setup.handler}",
        }
        if setup.sets_concurrency:
            consumers["concurrency"] = setup.k
        config = {
            "redis": {"url": server.url},
            "queue": QUEUE,
            "pythonpath": [str(BENCH_DIR)],
            "consumers": consumers,
            "logging": {"level": "warning"},
        }
        env = {"BENCH_COUNTER_URL": server.url}
        self.daemon = GoodsdPool(workdir, name, setup.code, config, server.url, env)
        self.roots.append(self.daemon.process)

    def wait_ready(self) -> None:
        try:
            self.daemon.wait_ready()
        except DaemonExited as exc:
            if exc.status == EXIT_CONFIG and "concurrency" in exc.log:
                raise NoConcurrency(NO_CONCURRENCY) from None
            raise

    def check_alive(self) -> None:
        self.daemon.check_alive()

    def remaining(self) -> int:
        return self.counter.llen(QUEUE)

    def finished(self) -> int:
        """goodsd's ``done`` counter: items acked."""
        return self.daemon.handled()

    def stop(self) -> list[str]:
        return self.daemon.stop()


def start_pool(setup: Setup, server: LocalRedis, workdir: Path) -> Pool:
    family = setup.family
    if family == "goodsd":
        return GoodsdRun(setup, server, workdir)
    if family == "dramatiq":
        return DramatiqPool(setup, server, workdir)
    return ArqPool(setup, server, workdir)


# --- one measurement ------------------------------------------------------------------------


def read(pool: Pool, pids: list[int], server_pid: int) -> Reading:
    """The counters now. CPU first and the item count last, the same at both ends."""
    machine = machine_seconds()
    design = processes_seconds(pids)
    redis_cpu = processes_seconds([server_pid])
    own = time.process_time()
    return Reading(time.perf_counter(), pool.handled(), design, redis_cpu, own, machine)


def measure(
    setup: Setup, server: LocalRedis, backlogs: Backlogs, workdir: Path, plan: Plan
) -> Sample:
    """One run of ``setup``: start on a full backlog, warm up, measure one window, stop."""
    backlogs.prepare(setup)
    server_pid = server.pid
    assert server_pid is not None
    pool = start_pool(setup, server, workdir)
    problems: list[str] = []
    try:
        pool.wait_ready()
        time.sleep(plan.warmup)  # the measurement's warm-up, not a wait for an event
        pids = pool.pids()
        start = read(pool, pids, server_pid)
        time.sleep(plan.window)  # the measuring window itself
        end = read(pool, pids, server_pid)
        if pool.remaining() == 0:
            raise BenchError(f"{setup}: the backlog of {setup.backlog:,} ran dry")
    except ProcessGone as exc:
        raise BenchError(f"{setup}: a worker exited during the window ({exc})") from None
    finally:
        problems = pool.stop()
    for problem in problems:
        print(f"  warning ({setup}): {problem}", file=sys.stderr)
    return Sample.between(start, end)


# --- what runs, and in which order ----------------------------------------------------------


def setups(plan: Plan) -> list[Setup]:
    """Every row, by sleep: goodsd threads then async by K (each checkout), Dramatiq, arq."""
    rows: list[Setup] = []
    for sleep in plan.sleeps:
        if "goodsd" in plan.designs:
            for kind in ("threads", "async"):
                for k in plan.ks:
                    rows += [
                        Setup(code_label(code, plan.codes), kind, sleep, k, code, plan.count)
                        for code in plan.codes
                    ]
        if "dramatiq" in plan.designs:
            rows.append(Setup("dramatiq", "threads", sleep, DRAMATIQ_THREADS, count=plan.count))
        if "arq" in plan.designs:
            rows += [
                Setup("arq", "async", sleep, k, count=plan.count)
                for k in plan.ks
                if k >= ARQ_DEFAULT_MAX_JOBS
            ]
            if plan.arq_defaults:
                rows.append(
                    Setup("arq-defaults", "async", sleep, ARQ_DEFAULT_MAX_JOBS, count=plan.count)
                )
    return rows


def rounds(plan: Plan) -> Iterator[tuple[int, Setup]]:
    """(round, setup): every setup once per round, so slow spells spread over all of them."""
    for run in range(plan.runs):
        for setup in setups(plan):
            yield run, setup


def run_all(plan: Plan, server: LocalRedis, workdir: Path, results: Results) -> None:
    """Every run, round by round. A row that cannot run (no concurrency support, a failure)
    is recorded once and left out of the later rounds; so are all the peers' rows when their
    virtualenv cannot be made."""
    backlogs = Backlogs(server)
    no_concurrency: set[Path] = set()  # checkouts known to reject consumers.concurrency
    for run, setup in rounds(plan):
        if setup in results.failed:
            continue
        if setup.code in no_concurrency and setup.sets_concurrency:
            results.failed[setup] = NO_CONCURRENCY
            continue
        print(f"run {run + 1}/{plan.runs}: {setup} ...", file=sys.stderr, flush=True)
        try:
            sample = measure(setup, server, backlogs, workdir, plan)
        except NoConcurrency:
            assert setup.code is not None
            no_concurrency.add(setup.code)
            results.failed[setup] = NO_CONCURRENCY
        except (BenchError, subprocess.SubprocessError, redis.RedisError) as exc:
            print(f"  failed: {exc}", file=sys.stderr)
            results.failed[setup] = f"failed: {str(exc).splitlines()[0]}"
        else:
            results.samples.setdefault(setup, []).append(sample)


# --- reporting ------------------------------------------------------------------------------


def baseline(results: Results, setup: Setup, plan: Plan) -> float | None:
    """goodsd's threads K=1 median with the same sleep: the row's own checkout for goodsd
    rows, the first checkout for the peers."""
    code = setup.code or plan.codes[0]
    base = Setup(code_label(code, plan.codes), "threads", setup.sleep_ms, 1, code, plan.count)
    return results.median_rate(base)


def table_lines(results: Results, plan: Plan) -> list[str]:
    """The table: one row per setup, in table order, with its header and notes."""
    rows = [s for s in setups(plan) if s in results.samples or s in results.failed]
    width = max(len("design"), *(len(s.design) for s in rows))
    lines = [
        f"items/s: median of {plan.runs} runs (min-max), {PROCESSES} worker processes each; "
        + COUNTING[plan.count],
        f"{'design':{width}} {'handler':>7} {'sleep':>5} {'K':>5} {'items/s':>9}"
        f" {'(min-max)':>17} {'vs K=1':>7} {'cpu us':>7} {'redis':>6} {'other':>6}",
    ]
    for setup in rows:
        head = f"{setup.design:{width}} {setup.kind:>7} {setup.sleep_ms:>3}ms {setup.k:>5}"
        if setup not in results.samples:
            lines.append(f"{head} {results.failed[setup]}")
            continue
        samples = results.samples[setup]

        def median(field: str, samples: list[Sample] = samples) -> float:
            return statistics.median(getattr(s, field) for s in samples)

        rate = median("items_per_second")
        base = baseline(results, setup, plan)
        ratio = f"{rate / base:.2f}" if base else "-"
        rates = "(" + spread([s.items_per_second for s in samples]) + ")"
        short = (
            f"  ({len(samples)} runs; then {results.failed[setup]})"
            if setup in results.failed
            else ""
        )
        lines.append(
            f"{head} {rate:>9,.0f} {rates:>17} {ratio:>7} {median('design_us'):>7.0f}"
            f" {median('redis_us'):>6.1f} {median('other_cores'):>6.2f}{short}"
        )
    lines += [
        "K: goodsd consumers.concurrency (threads rows at K=1: key left out, today's path);"
        f" dramatiq: threads per process; arq: max_jobs, with poll_delay {ARQ_POLL_DELAY:g} s",
        f"  (arq-defaults: max_jobs {ARQ_DEFAULT_MAX_JOBS}, poll_delay"
        f" {ARQ_DEFAULT_POLL_DELAY:g} s, as arq comes)",
        "vs K=1: median over goodsd's threads K=1 median with the same sleep (the same"
        " checkout's; the first checkout's for the peers)",
        "cpu us, redis: CPU microseconds per item of all the design's processes and of"
        " redis-server, from /proc; other: CPUs kept busy meanwhile by everything else on the"
        " machine (hypervisor steal included)",
    ]
    others = [s.other_cores for samples in results.samples.values() for s in samples]
    if others:
        busy = sum(1 for cores in others if cores > BUSY_OTHERS)
        lines.append(
            f"other load over all {len(others)} windows: median {statistics.median(others):.2f},"
            f" max {max(others):.2f} CPUs; above {BUSY_OTHERS:g} in {busy}"
            + ("; a quieter machine gives higher items/s" if busy else "")
        )
    return lines


def goal_lines(results: Results, plan: Plan) -> list[str]:
    """Whether the medians meet the feature's goals on this 2-core machine."""
    lines = [
        f"goals (2-core machine): 1 ms, K=100: async >= {GOAL_ASYNC_1MS:,}, threads >="
        f" {GOAL_THREADS_1MS:,} items/s; 10 ms, K=1000 async >= {GOAL_ASYNC_10MS:,} items/s;"
        f" K=1 within {100 - GOAL_K1_SHARE * 100:g}% of today"
    ]
    goals = (("threads", 1, 100, GOAL_THREADS_1MS), ("async", 1, 100, GOAL_ASYNC_1MS))
    goals += (("async", 10, 1000, GOAL_ASYNC_10MS),)
    for code in plan.codes:
        label = code_label(code, plan.codes)
        for kind, sleep, k, goal in goals:
            setup = Setup(label, kind, sleep, k, code, plan.count)
            rate = results.median_rate(setup)
            if rate is not None:
                verdict = "met" if rate >= goal else "NOT met"
                lines.append(f"  {setup}: {rate:,.0f} items/s  {verdict}")
            elif setup in results.failed:
                lines.append(f"  {setup}: {results.failed[setup]}")
    today = plan.codes[0]
    for code in plan.codes[1:]:
        for sleep in plan.sleeps:
            ours = results.median_rate(
                Setup(code_label(code, plan.codes), "threads", sleep, 1, code, plan.count)
            )
            theirs = results.median_rate(
                Setup(code_label(today, plan.codes), "threads", sleep, 1, today, plan.count)
            )
            if ours and theirs:
                share = ours / theirs
                verdict = "met" if share >= GOAL_K1_SHARE else "NOT met"
                lines.append(
                    f"  K=1 {sleep}ms, {code.name} vs {today.name}: {share:.3f}  {verdict}"
                )
    if len(plan.codes) == 1:
        lines.append("  K=1 vs today: give --code DIR twice (today's main first) to compare")
    if plan.count == "incr":
        lines.append(
            "  (each item here also costs an INCR round trip in the handler; --count queue"
            " measures the sleep alone)"
        )
    return lines


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Plan:
    """The command line as a Plan; argparse exits 2 on a bad one."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--quick", action="store_true", help="3 short runs of 1 ms rows at K 1 and 100"
    )
    parser.add_argument("--runs", type=int, help="runs of each row (default 5, quick 3)")
    parser.add_argument(
        "--window", type=float, help="seconds each run measures (default 2, quick 1)"
    )
    parser.add_argument("--sleeps", type=int_list, help="handler sleeps in ms (default 1,10)")
    parser.add_argument(
        "--k", type=int_list, help="concurrency values (default 1,10,100,1000; quick 1,100)"
    )
    parser.add_argument(
        "--count",
        choices=sorted(COUNTING),
        default="queue",
        help="queue: handlers only sleep, items are counted from each design's own bookkeeping"
        " (default); incr: handlers INCR a counter after the sleep",
    )
    parser.add_argument(
        "--designs",
        default="goodsd,dramatiq,arq",
        help="which to measure, of goodsd,dramatiq,arq (default all)",
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
    unknown = set(designs) - {"goodsd", "dramatiq", "arq"}
    if unknown:
        parser.error(f"unknown designs: {', '.join(sorted(unknown))}")
    runs = args.runs or (3 if args.quick else 5)
    window = args.window or (1.0 if args.quick else 2.0)
    if runs < 1 or window <= 0:
        parser.error("--runs and --window must be positive")
    return Plan(
        runs=runs,
        window=window,
        warmup=0.3 if args.quick else 0.5,
        sleeps=args.sleeps or ((1,) if args.quick else (1, 10)),
        ks=args.k or ((1, 100) if args.quick else (1, 10, 100, 1000)),
        designs=designs,
        codes=tuple(args.code or (REPO_DIR,)),
        count=args.count,
        arq_defaults=not args.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, then print everything measured (also after a failure); 0, or 1 when a row
    failed (rows without concurrency support do not count)."""
    plan = parse_args(argv)
    results = Results()
    load_before = load_average()
    peers = ""
    if {"dramatiq", "arq"} & set(plan.designs):
        try:
            ensure_peers_venv()
            peers = peer_versions()
        except (BenchError, subprocess.SubprocessError) as exc:
            print(f"the peers cannot run: {exc}", file=sys.stderr)
            peers = f"peers: cannot run ({str(exc).splitlines()[0]})"
            results.failed.update(
                {s: "failed: no peers' virtualenv" for s in setups(plan) if s.code is None}
            )
    with LocalRedis() as server, tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp:
        header = describe_machine(server)
        try:
            run_all(plan, server, Path(tmp), results)
        except KeyboardInterrupt:
            print("interrupted; what was measured so far:", file=sys.stderr)
    lines = [
        *header,
        *([peers] if peers else []),
        f"load average (1, 5, 15 min): {load_before} before, {load_average()} after",
        f"method: {plan.runs} runs of each row, in rounds; a run measures a {plan.window:g} s"
        f" window, {plan.warmup:g} s after all its processes are up, on a backlog sized to"
        " outlast it",
        "",
        *table_lines(results, plan),
        "",
        *goal_lines(results, plan),
    ]
    print("\n".join(lines))
    failed = any(reason != NO_CONCURRENCY for reason in results.failed.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
