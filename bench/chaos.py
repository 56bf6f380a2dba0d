"""A chaos run of goodsd: unique items pushed in a steady stream while faults hit every part.

Starts its own redis-server with AOF on (fsync on every write), a goodsd master supervised as
systemd would (restarted `--restart-sec` after it dies), and a pusher thread that pushes
`item-0` .. `item-<N-1>` exactly once each, retrying through Redis outages. The handler, a
module written to the run's temp dir, sleeps 1 to 5 ms and then appends the item to a file of
its own process; one item in `--fail-every` fails on its first attempt on purpose (a retry).
With `--concurrency K` every consumer has K items in flight: a plain `def` handler in K
threads, or with `--async` an `async def` one as asyncio tasks.

Faults come at random times (seeded): SIGKILL a consumer; SIGKILL the master (its children
die with it); SIGHUP with the pool resized, or with a new batch size (a roll); bursts of
SIGTTIN/SIGTTOU; SIGSTOP a consumer past the hang limit (the master must kill it); restart
redis-server (SIGTERM, a pause, start on the same AOF). Then the pushing stops, the queue is
drained and goodsd stopped, and the run prints items pushed, handled, lost, duplicated and
dead, and the faults by kind. Exit status 1 if an item was lost.

A duplicate is expected only after a kill: a killed consumer's items go back to the queue, and
those it had finished but whose ack was not yet written run again. One killed consumer accounts
for at most `batch` of them at K = 1, and with K slots for at most 2K + batch - 1: up to
K + batch - 1 outcomes waiting for their settle (written once `batch` of them wait, and one
wait for outcomes can bring in K), plus K running items, each of which may have written its
line before its outcome was taken in. The handler stamps each run with its time, so the last
run of a repeated item is the one whose ack went through: a duplicate with an earlier run by a
consumer no fault killed, or a killed consumer past that bound, is an anomaly.

The work dir (goodsd's logs `master-<n>.log`, the timeline `faults.log`, the handled files,
the AOF) is kept when anything looked wrong, or with `--keep`.

Not part of CI: a run takes `--duration` plus the drain, about three minutes by default.

Run: python bench/chaos.py [--duration S] [--items N] [--seed N] [--concurrency K] [--async]
     [--keep]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Runnable from a plain checkout: make the goodsd package importable without installing it.
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from goodsd.children import HEARTBEAT_MIN, TIMEOUT_GRACE  # noqa: E402
from goodsd.config import dump as dump_config  # noqa: E402
from goodsd.localredis import find_redis_server  # noqa: E402
from goodsd.ops.demo import start_master  # noqa: E402
from goodsd.store import DeadRecord, Views  # noqa: E402

QUEUE = "chaos"
# The master's log line for a child that reported ready: "consumer 2 (pid 1234) ready".
CHILD_READY = re.compile(r"\(pid (\d+)\) ready$", re.MULTILINE)
# The pusher's per-batch markers: a batch is in Redis exactly when its marker is.
MARKER_PREFIX = "chaos:pushed:"

LEASE = 10.0  # supervisor.lease, seconds: short, so the hang limit is HEARTBEAT_MIN
ITEM_TIMEOUT = 10.0  # consumers.timeout, seconds: a stopped busy worker dies as soon as an idle one
# When the master kills a stopped consumer: the hang limit, or the item timeout plus its grace.
HANG_LIMIT = max(HEARTBEAT_MIN, LEASE / 2, ITEM_TIMEOUT + TIMEOUT_GRACE)
HANG_MARGIN = 15.0  # seconds past HANG_LIMIT before a stopped consumer counts as not killed
BATCHES = (1, 5, 10, 20, 50)  # batch sizes a roll picks from

TICK = 0.05  # seconds between two rounds of the chaos loop
PUSH_TICK = 0.02  # seconds between two batches of the steady stream
PUSH_MAX_BATCH = 100  # items per push script call, when the pusher catches up after an outage
PUSH_RETRY = 0.1  # seconds between two tries of a batch while Redis is away
PUSH_GIVE_UP = 60.0  # seconds a batch may stay in doubt before the run fails
REDIS_CALL_TIMEOUT = 2.0  # seconds; every Redis call of this script gives up after it
READY_TIMEOUT = 60.0  # seconds for a (re)started master to log that it is ready
STOP_TIMEOUT = 45.0  # seconds for goodsd to stop on SIGTERM (graceful_timeout is 30 s)
REDIS_STOP_TIMEOUT = 10.0  # seconds for redis-server to exit on SIGTERM
REDIS_DOWNTIME = (0.2, 3.0)  # seconds a restarted redis-server stays away, uniform
TTY_BURST = (2, 6)  # signals in one SIGTTIN/SIGTTOU burst, uniform
PROCESSES_MAX = 6  # a resize picks 1 .. this many consumers

# Fault kinds, and how many of each one shuffled deck holds: every kind comes up once per deck.
KILL_CONSUMER = "consumer SIGKILL"
KILL_MASTER = "master SIGKILL"
RESIZE = "resize (SIGHUP, processes)"
ROLL = "roll (SIGHUP, batch)"
TTY_BURSTS = "SIGTTIN/SIGTTOU burst"
STOP_CONSUMER = "consumer SIGSTOP past hang limit"
RESTART_REDIS = "redis-server restart"
DECK = {
    KILL_CONSUMER: 4,
    KILL_MASTER: 1,
    RESIZE: 2,
    ROLL: 1,
    TTY_BURSTS: 2,
    STOP_CONSUMER: 1,
    RESTART_REDIS: 1,
}

# LPUSH one batch unless its marker exists, and count it in goodsd's fleet counters; 1 if it
# pushed, 0 if the batch was already in (a retry after a lost reply). One script: atomic, and
# with appendfsync always it is on disk before the reply.
# KEYS: ready list, the batch's marker, goodsd stats; ARGV: the items, oldest first
_PUSH_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX') then return 0 end
redis.call('LPUSH', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[3], 'pushed', #ARGV)
return 1
"""

# Items waiting anywhere: in the ready list, the retry set, any in-flight list. One script, so
# atomic: read one key at a time, an item given back from flight to the retry set between two
# reads was seen in neither, and an idle pool's consumers, blocked in claims when a stop comes,
# pass due retries around like that. (It reads in-flight keys it finds by SCAN, not in KEYS:
# fine on this script's own one server.)
# KEYS: ready list, retry set; ARGV: the pattern of the in-flight lists
_WAITING = """
local in_flight, cursor = 0, '0'
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do in_flight = in_flight + redis.call('LLEN', key) end
until cursor == '0'
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), in_flight}
"""

# The handler goodsd runs, written to the run's temp dir and found through `pythonpath`:
# `handle` for one item at a time or K threads, `handle_async` for asyncio tasks.
HANDLER = "chaos_handler:handle"
ASYNC_HANDLER = "chaos_handler:handle_async"
HANDLER_SOURCE = '''\
"""Chaos handler: 1 to 5 ms of work, then the item appended to this process's own file.

Safe for K threads at once: the file is opened once under a lock, and each item is one
os.write of one short line on an O_APPEND descriptor, which Linux appends whole at the end of
a regular file (the write holds the file's lock), so lines of several threads never interleave.
"""

import asyncio
import os
import random
import threading
import time

HANDLED_DIR = {handled!r}
FAILED_DIR = {failed!r}
FAIL_EVERY = {fail_every!r}

_out = -1  # this process's file, opened at its first item (after the fork)
_opening = threading.Lock()  # K threads may reach their first item at once: one opens the file


def handle(item: str) -> None:
    """Work in this thread, then finish the item."""
    time.sleep(random.uniform(0.001, 0.005))
    _finish(item)


async def handle_async(item: str) -> None:
    """Work as a task on the process's event loop, then finish the item."""
    await asyncio.sleep(random.uniform(0.001, 0.005))
    _finish(item)


def _finish(item: str) -> None:
    """Raise on a planned failure, else one line for the item, `<time.time()> <item>`: written
    after the work and before returning, so a line means the handler finished that item at
    least once, and its time orders the runs of a repeated item."""
    if _first_attempt_fails(item):
        raise RuntimeError("planned failure of a first attempt")
    os.write(_output(), f"{{time.time():.6f}} {{item}}\\n".encode())


def _output() -> int:
    """This process's file: `<master pid>-<pid>-<start>.log`, opened once."""
    global _out
    with _opening:
        if _out < 0:
            name = f"{{os.getppid()}}-{{os.getpid()}}-{{_start_time()}}.log"
            _out = os.open(os.path.join(HANDLED_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    return _out


def _start_time() -> str:
    """This process's start in clock ticks after boot: with the pid, it names the process."""
    with open("/proc/self/stat") as stat:
        return stat.read().rpartition(")")[2].split()[19]


def _first_attempt_fails(item: str) -> bool:
    """One item in FAIL_EVERY fails once: the first run to create its marker (O_EXCL: one
    wins, even among threads) raises."""
    number = item.rpartition("-")[2]
    if not FAIL_EVERY or not number.isdigit() or int(number) % FAIL_EVERY:
        return False
    try:
        os.close(os.open(os.path.join(FAILED_DIR, item), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True
'''


class BenchError(RuntimeError):
    """The run could not go on or could not be judged; the message says why."""


@dataclass(frozen=True)
class Plan:
    """What one chaos run does."""

    duration: float  # seconds of pushing and faults
    items: int  # unique items pushed, spread evenly over `duration`
    seed: int  # seeds the faults: their kinds, times and targets
    processes: int  # consumers.processes at the start and for the drain
    batch: int  # consumers.batch at the start and for the drain
    concurrency: int  # consumers.concurrency: items in flight per consumer process
    use_async: bool  # the `async def` handler (asyncio tasks) instead of the plain one
    fault_interval: float  # mean seconds between two faults (exponential)
    restart_sec: float  # like systemd's RestartSec=: pause before restarting a dead master
    fail_every: int  # one item in this many fails its first attempt (0: none)
    drain_timeout: float  # seconds the drain may take after the last push
    keep: bool  # keep the work dir (logs, handled files, AOF) even when nothing was lost


@dataclass(frozen=True)
class Proc:
    """One process, as /proc shows it."""

    pid: int
    ppid: int
    state: str  # one letter: R, S, T (stopped), Z (zombie), ...
    start: int  # clock ticks after boot: with `pid`, names a process across pid reuse


def read_proc(pid: int) -> Proc | None:
    """The process `pid`, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    fields = text[text.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]))


def children_of(ppid: int) -> list[Proc]:
    """The live (not zombie) children of `ppid`, by pid."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = read_proc(int(name))
            if proc is not None and proc.ppid == ppid and proc.state != "Z":
                found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def same_process_alive(proc: Proc) -> bool:
    """Whether `proc` still runs (a zombie has died; a new process on its pid is another)."""
    now = read_proc(proc.pid)
    return now is not None and now.start == proc.start and now.state != "Z"


def stamp(when: float) -> str:
    """`when` (time.time()) in local time to the millisecond, as goodsd's text logs show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) + f".{when % 1:.3f}"[2:]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every TICK seconds; raise BenchError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(TICK)


def client_for(url: str) -> redis.Redis:
    """A client whose calls fail fast and are never retried behind this script's back: a
    retried push script must be seen as one, and a wait must stay bounded."""
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_CALL_TIMEOUT,
        socket_connect_timeout=REDIS_CALL_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


# --- redis-server with AOF ----------------------------------------------------------------


class AofRedis:
    """A private redis-server on a unix socket (TCP off) that keeps an append-only file fsynced
    on every write, so a restart on the same directory loses nothing it acknowledged.

    goodsd.localredis.LocalRedis runs without persistence, hence this small sibling.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.url = f"unix://{self.socket_path}"
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start on the same directory (loading its AOF); return once it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            find_redis_server(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # Own session: a ^C in the terminal reaches this script only, which cleans up.
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        with client_for(self.url) as client:
            wait_for(lambda: self._answers(client), timeout, "redis-server to answer PING")

    def _answers(self, client: redis.Redis) -> bool:
        if not self.running:
            raise BenchError(f"redis-server exited while starting; see {self.log_path}")
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):  # BusyLoadingError: AOF loading
            return False

    def stop(self) -> bool:
        """SIGTERM (redis flushes its AOF and exits), SIGKILL if it lingers; False then."""
        if self.process is None:
            return True
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(REDIS_STOP_TIMEOUT)
            return True
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False
        finally:
            self.process = None


# --- the steady stream of unique items ------------------------------------------------------


class Pusher(threading.Thread):
    """Pushes `item-0` .. `item-<items-1>` evenly over `duration` seconds, each exactly once.

    Every batch goes through `_PUSH_ONCE` with its own marker, retried on connection errors
    until Redis answers: a batch whose reply was lost is either in (the retry returns 0) or
    pushed by the retry. So after the thread ends, `pushed` is exactly the items in Redis.
    """

    def __init__(self, url: str, queue: Views, items: int, duration: float) -> None:
        super().__init__(name="pusher", daemon=True)
        self.url = url
        self.keys = (queue.keys.ready, queue.keys.stats)
        self.items = items
        self.duration = duration
        self.stopping = threading.Event()
        self.pushed = 0  # items acknowledged: item-0 .. item-<pushed-1>
        self.batches = 0  # batches acknowledged, markers 0 .. batches-1
        self.errors = 0  # connection errors met while pushing
        self.found_in = 0  # batches whose reply was lost and whose retry found them pushed
        self.error: BaseException | None = None  # what ended the thread early

    def run(self) -> None:
        try:
            self.push_all()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def push_all(self) -> None:
        with client_for(self.url) as client:
            script = client.register_script(_PUSH_ONCE)
            started = time.monotonic()
            while self.pushed < self.items and not self.stopping.is_set():
                elapsed = time.monotonic() - started
                due = min(self.items, int(self.items * elapsed / self.duration) + 1)
                if due <= self.pushed:
                    self.stopping.wait(PUSH_TICK)
                    continue
                self.push_batch(script, min(PUSH_MAX_BATCH, due - self.pushed))

    def push_batch(self, script: Script, count: int) -> None:
        """Push the next `count` items; return once Redis has them, whatever goes wrong."""
        items = [f"item-{n}" for n in range(self.pushed, self.pushed + count)]
        keys = [self.keys[0], MARKER_PREFIX + str(self.batches), self.keys[1]]
        deadline = time.monotonic() + PUSH_GIVE_UP
        while True:
            try:
                if not script(keys=keys, args=items):
                    self.found_in += 1
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.errors += 1
                if time.monotonic() >= deadline:
                    raise BenchError(f"batch {self.batches} still in doubt: {exc}") from exc
                time.sleep(PUSH_RETRY)
        self.batches += 1
        self.pushed += count


# --- goodsd, supervised as systemd would ----------------------------------------------------


def goodsd_config(
    url: str, handler_dir: Path, plan: Plan, processes: int, batch: int
) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "queue": QUEUE,
        "pythonpath": [str(handler_dir)],
        "consumers": {
            "processes": processes,
            "handler": ASYNC_HANDLER if plan.use_async else HANDLER,
            "batch": batch,
            "concurrency": plan.concurrency,
            "timeout": f"{ITEM_TIMEOUT:g}s",
            "retries": 3,
            "retry_delay": "1s",
        },
        "supervisor": {"lease": f"{LEASE:g}s", "restart_delay": "1s", "restart_delay_max": "5s"},
        "logging": {"level": "info"},
    }


class Service:
    """The goodsd master as a systemd service with Restart=on-failure and RestartSec=: when it
    dies (it never stops cleanly during the faults) it is started again after `restart_sec`.
    Each run logs to its own file."""

    def __init__(self, workdir: Path, config_path: Path, restart_sec: float) -> None:
        self.workdir = workdir
        self.config_path = config_path
        self.restart_sec = restart_sec
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0  # masters started so far; run n logs to master-<n>.log
        self.killed: set[int] = set()  # pids of masters this script SIGKILLed
        self.unexpected: list[str] = []  # exits this script did not cause, described
        self.restart_at: float | None = None  # monotonic time of the next start, while down
        self.ready = False  # the current run has logged that all its consumers are ready

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs (not yet reaped), else None."""
        return self.process.pid if self.process and self.process.returncode is None else None

    def log_path(self, run: int) -> Path:
        return self.workdir / f"master-{run}.log"

    def start(self) -> None:
        self.runs += 1
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.getenv("PYTHONPATH")]))
        }
        self.process = start_master(self.config_path, self.log_path(self.runs), env)
        self.restart_at = None
        self.ready = False

    def poll(self) -> None:
        """Notice a dead master and schedule its restart; start it when that time comes."""
        now = time.monotonic()
        if self.process is not None and self.process.returncode is None:
            code = self.process.poll()
            if code is not None:
                if self.process.pid not in self.killed:
                    self.unexpected.append(
                        f"master pid {self.process.pid} exited with status {code}"
                        f" (see {self.log_path(self.runs)})"
                    )
                self.restart_at = now + self.restart_sec
        if self.restart_at is not None and now >= self.restart_at:
            self.start()

    def is_ready(self) -> bool:
        """The current master runs and has logged its `ready:` line (all consumers up), so
        it has its signal handlers: systemd too sends reloads only to a started service."""
        if self.pid is None:
            return False
        if not self.ready:
            self.ready = " ready: " in self.log_path(self.runs).read_text(errors="replace")
        return self.ready

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the master alone; its children get SIGKILL from the kernel (parent death)."""
        assert self.pid is not None
        self.killed.add(self.pid)
        self.signal(signal.SIGKILL)

    def ready_children(self) -> set[int]:
        """Pids of the current master's children that it logged as ready."""
        text = self.log_path(self.runs).read_text(errors="replace")
        return {int(pid) for pid in CHILD_READY.findall(text)}

    def consumers(self) -> list[Proc]:
        pid = self.pid
        return children_of(pid) if pid is not None else []

    def restart_now(self) -> None:
        """No more waiting for RestartSec: start a master now if none runs."""
        self.poll()
        if self.pid is None:
            self.start()

    def stop(self) -> str:
        """SIGTERM and wait for the graceful stop; return what went wrong, '' if nothing."""
        assert self.process is not None
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"goodsd did not stop within {STOP_TIMEOUT:g}s of SIGTERM"
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # Nothing left in its session: the clean case.
        else:
            return "goodsd left processes behind in its session; killed them"
        return f"goodsd stopped with status {code}" if code else ""

    def kill_group(self) -> None:
        """Leave nothing behind: SIGKILL the running master's whole session, if one runs."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()


# --- faults -------------------------------------------------------------------------------


@dataclass
class Stopped:
    """A consumer this script SIGSTOPped, waiting for its master to kill it as hung."""

    proc: Proc
    master: int  # pid of its master when it was stopped
    since: float  # monotonic time of the SIGSTOP


@dataclass
class Chaos:
    """Draws faults from a seeded, shuffled deck and injects them; counts what it did and
    writes each fault, with its time and target, to `timeline` (to read next to goodsd's logs)."""

    rng: random.Random
    plan: Plan
    service: Service
    server: AofRedis
    write_config: Callable[[int, int], None]  # (processes, batch) -> config file rewritten
    timeline: TextIO  # one line per fault or outcome, time stamped like goodsd's log
    processes: int  # consumers.processes in the config file now
    batch: int  # consumers.batch in the config file now
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    details: collections.Counter[str] = field(default_factory=collections.Counter)
    killed: set[tuple[int, int]] = field(default_factory=set)  # (pid, start) a fault killed
    stopped: list[Stopped] = field(default_factory=list)
    hang_kill_seconds: list[float] = field(default_factory=list)  # SIGSTOP -> gone
    redis_down_at: float | None = None  # monotonic time redis-server went down, while down
    redis_back_at: float = 0.0  # while redis-server is down: when to start it again
    redis_downtime: float = 0.0  # seconds redis-server was away, in total
    anomalies: list[str] = field(default_factory=list)
    deck: list[str] = field(default_factory=list)
    largest_batch: int = 0  # the largest consumers.batch any config file of the run had

    def __post_init__(self) -> None:
        self.largest_batch = self.batch

    def next_interval(self) -> float:
        return self.rng.expovariate(1 / self.plan.fault_interval)

    def note(self, text: str) -> None:
        self.timeline.write(f"{stamp(time.time())} {text}\n")
        self.timeline.flush()

    def inject_next(self) -> bool:
        """Inject the fault on top of the deck. When it cannot be done right now (no consumer
        is ready, the master is starting), put it at the bottom and return False."""
        if not self.deck:
            self.deck = [kind for kind, count in DECK.items() for _ in range(count)]
            self.rng.shuffle(self.deck)
        kind = self.deck.pop()
        done = FAULTS[kind](self)
        if done is None:
            self.deck.insert(0, kind)
            return False
        self.faults[kind] += 1
        self.note(f"{kind}: {done}")
        return True

    def running_consumers(self, ready_only: bool = False) -> list[Proc]:
        """The master's children, but for those this script stopped; with `ready_only`, only
        those that logged ready (a child stopped while starting is left to the start timeout,
        120 s, not to the hang limit)."""
        stopped = {s.proc.pid for s in self.stopped}
        ready = self.service.ready_children() if ready_only else None
        return [
            p
            for p in self.service.consumers()
            if p.pid not in stopped and (ready is None or p.pid in ready)
        ]

    # Each fault below returns what it did (for the timeline), or None when it cannot be done
    # right now.

    def kill_consumer(self) -> str | None:
        candidates = self.running_consumers()
        if not candidates:
            return None
        victim = self.rng.choice(candidates)
        self.killed.add((victim.pid, victim.start))
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        return f"pid {victim.pid}"

    def kill_master(self) -> str | None:
        pid = self.service.pid
        if pid is None:
            return None
        self.service.kill()
        return f"pid {pid}"

    def resize(self) -> str | None:
        if not self.service.is_ready():
            return None
        choices = [n for n in range(1, PROCESSES_MAX + 1) if n != self.processes]
        return self.reload(self.rng.choice(choices), self.batch)

    def roll(self) -> str | None:
        if not self.service.is_ready():
            return None
        return self.reload(self.processes, self.rng.choice([b for b in BATCHES if b != self.batch]))

    def reload(self, processes: int, batch: int) -> str:
        self.processes, self.batch = processes, batch
        self.largest_batch = max(self.largest_batch, batch)
        self.write_config(processes, batch)
        self.service.signal(signal.SIGHUP)
        return f"processes {processes}, batch {batch}"

    def tty_burst(self) -> str | None:
        if not self.service.is_ready():
            return None
        sent = []
        for _ in range(self.rng.randint(*TTY_BURST)):
            signum = self.rng.choice((signal.SIGTTIN, signal.SIGTTOU))
            sent.append(signal.Signals(signum).name)
            self.details[f"{sent[-1]} sent"] += 1
            self.service.signal(signum)
        return " ".join(sent)

    def stop_consumer(self) -> str | None:
        master = self.service.pid
        candidates = self.running_consumers(ready_only=True)
        if master is None or not candidates:
            return None
        victim = self.rng.choice(candidates)
        try:
            os.kill(victim.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return None
        self.killed.add((victim.pid, victim.start))
        self.stopped.append(Stopped(victim, master, time.monotonic()))
        return f"pid {victim.pid}"

    def restart_redis(self) -> str | None:
        if self.redis_down_at is not None:
            return None
        self.redis_down_at = time.monotonic()
        if not self.server.stop():
            self.anomalies.append("redis-server ignored SIGTERM; SIGKILLed it")
        pause = self.rng.uniform(*REDIS_DOWNTIME)
        self.redis_back_at = time.monotonic() + pause
        return f"stopped; back in {pause:.1f}s"

    def watch(self) -> None:
        """Bring redis-server back when its pause is over; follow stopped consumers."""
        now = time.monotonic()
        if self.redis_down_at is not None and now >= self.redis_back_at:
            self.bring_redis_back()
        for stop in list(self.stopped):
            if not same_process_alive(stop.proc):
                self.stopped.remove(stop)
                if stop.master in self.service.killed:
                    outcome = "stopped consumer died with its master"
                else:
                    outcome = "stopped consumer killed by the master"
                    self.hang_kill_seconds.append(now - stop.since)
                self.details[outcome] += 1
                self.note(f"{outcome}: pid {stop.proc.pid}, {now - stop.since:.1f}s after SIGSTOP")
            elif now - stop.since > HANG_LIMIT + HANG_MARGIN:
                self.resume(stop)
                self.anomalies.append(
                    f"consumer pid {stop.proc.pid} was still alive {now - stop.since:.0f}s after"
                    f" its SIGSTOP (hang limit {HANG_LIMIT:g}s); sent SIGCONT"
                )

    def bring_redis_back(self) -> None:
        """Start redis-server again on its AOF; it is back once it answers PING."""
        assert self.redis_down_at is not None
        self.server.start()
        self.redis_downtime += time.monotonic() - self.redis_down_at
        self.redis_down_at = None
        self.note("redis-server back")

    def resume(self, stop: Stopped) -> None:
        """SIGCONT a stopped consumer: it was not killed, so it is not a fault's victim."""
        self.stopped.remove(stop)
        self.killed.discard((stop.proc.pid, stop.proc.start))
        if same_process_alive(stop.proc):
            os.kill(stop.proc.pid, signal.SIGCONT)
        self.note(f"SIGCONT: pid {stop.proc.pid}")

    def calm_down(self) -> None:
        """End of the faults: Redis up, stopped consumers resumed, a master running."""
        self.note("end of the faults")
        if self.redis_down_at is not None:
            self.bring_redis_back()
        for stop in list(self.stopped):
            self.details["stopped consumer resumed when the faults ended"] += 1
            self.resume(stop)
        self.service.restart_now()


# fault kind -> the method that injects it
FAULTS: dict[str, Callable[[Chaos], str | None]] = {
    KILL_CONSUMER: Chaos.kill_consumer,
    KILL_MASTER: Chaos.kill_master,
    RESIZE: Chaos.resize,
    ROLL: Chaos.roll,
    TTY_BURSTS: Chaos.tty_burst,
    STOP_CONSUMER: Chaos.stop_consumer,
    RESTART_REDIS: Chaos.restart_redis,
}


# --- the reckoning ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One finished run of an item: who handled it, and when."""

    master: int  # the master's pid
    consumer: tuple[int, int]  # the consumer's (pid, start)
    at: float  # time.time() when the handler finished it

    @property
    def process(self) -> tuple[int, int, int]:
        """The consumer process: (master pid, pid, start)."""
        return (self.master, *self.consumer)


def read_handled(directory: Path) -> dict[str, list[Run]]:
    """Item -> every finished run of its handler, oldest first, from the files
    `<master>-<pid>-<start>.log` of lines `<time> <item>`."""
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    for path in directory.iterdir():
        master, pid, start = (int(part) for part in path.stem.split("-"))
        # Split on newlines only: str.splitlines would also split on \x1e and the like, which
        # an item handed over still wrapped in goodsd's retry envelope begins with.
        for line in path.read_bytes().split(b"\n")[:-1]:
            at, _, item = line.partition(b" ")
            runs[item.decode(errors="backslashreplace")].append(
                Run(master, (pid, start), float(at))
            )
    for item_runs in runs.values():
        item_runs.sort(key=lambda run: run.at)
    return runs


@dataclass(frozen=True)
class Tally:
    """What became of the pushed items."""

    pushed: int  # items the pusher had acknowledged: item-0 .. item-<pushed-1>
    handled: int  # pushed items handled at least once
    lost: list[str]  # pushed, never handled, not dead
    duplicated: int  # items handled more than once
    extra_runs: int  # runs beyond each item's first
    unexplained: dict[str, list[Run]]  # duplicated items with an earlier run not cut by a kill
    per_kill_bound: int  # most duplicates one killed consumer may account for (kill_bound)
    most_per_kill: int  # most duplicates one killed consumer accounted for
    past_bound: dict[tuple[int, int, int], int]  # Run.process -> its repeats, past the bound
    dead: list[str]  # items in the dead list
    strangers: list[str]  # handled, yet never pushed


def kill_bound(concurrency: int, batch: int) -> int:
    """The most items one killed consumer can have finished without their ack reaching Redis,
    so that they run again: the module docstring says why."""
    return batch if concurrency == 1 else 2 * concurrency + batch - 1


def tally(pushed: int, runs: dict[str, list[Run]], dead: list[str], chaos: Chaos) -> Tally:
    """Compare what was pushed with what was handled. The last run of a repeated item is the
    one whose ack went through; the repeat is explained when every earlier run was by a
    consumer a fault killed (SIGKILL, SIGSTOP) or one whose master was killed, and no killed
    consumer accounts for more repeats than `kill_bound` (with K slots a kill may repeat
    several items: those running and those whose acks were still to be written)."""
    items = [f"item-{n}" for n in range(pushed)]
    dead_set = set(dead)
    lost = [item for item in items if item not in runs and item not in dead_set]
    repeats = {item: runs[item] for item in items if len(runs.get(item, ())) > 1}
    unexplained = {}
    per_kill: collections.Counter[tuple[int, int, int]] = collections.Counter()
    for item, item_runs in repeats.items():
        earlier = item_runs[:-1]
        if all(r.consumer in chaos.killed or r.master in chaos.service.killed for r in earlier):
            per_kill.update(r.process for r in earlier)
        else:
            unexplained[item] = item_runs
    bound = kill_bound(chaos.plan.concurrency, chaos.largest_batch)
    pushed_set = set(items)
    return Tally(
        pushed=pushed,
        handled=sum(1 for item in items if item in runs),
        lost=lost,
        duplicated=len(repeats),
        extra_runs=sum(len(r) - 1 for r in repeats.values()),
        unexplained=unexplained,
        per_kill_bound=bound,
        most_per_kill=max(per_kill.values(), default=0),
        past_bound={run: count for run, count in per_kill.items() if count > bound},
        dead=dead,
        strangers=sorted(item for item in runs if item not in pushed_set),
    )


def waiting(queue: Views) -> tuple[int, int, int]:
    """Items in the ready list, the retry set and all in-flight lists, read in one atomic step
    (`_WAITING`). Reads the keys themselves, not goodsd's registry of consumers, which is part
    of what is under test."""
    counts = queue.client.eval(
        _WAITING, 2, queue.keys.ready, queue.keys.retry, queue.keys.inflight("*")
    )
    ready, retry, in_flight = (int(count) for count in counts)
    return ready, retry, in_flight


def drained(queue: Views) -> bool:
    """The ready list, the retry set and every in-flight list are empty."""
    return not any(waiting(queue))


def leftovers(queue: Views) -> str:
    """What is still in Redis, for a drain that timed out."""
    ready, retry, in_flight = waiting(queue)
    return f"ready {ready}, retry {retry}, in flight {in_flight}"


# --- the run ------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds spent in each phase."""

    faults: float = 0.0  # pushing and faults
    drain: float = 0.0  # from the last fault until the queue was empty
    stop: float = 0.0  # goodsd's graceful stop
    total: float = 0.0  # all of it, set-up included


def write_handler(workdir: Path, fail_every: int) -> None:
    """The handler module, and its directories `handled/` (one file per consumer process) and
    `failed/` (one marker per planned failure)."""
    handled, failed = workdir / "handled", workdir / "failed"
    handled.mkdir()
    failed.mkdir()
    source = HANDLER_SOURCE.format(handled=str(handled), failed=str(failed), fail_every=fail_every)
    (workdir / "chaos_handler.py").write_text(source)


def config_writer(workdir: Path, url: str, plan: Plan) -> tuple[Path, Callable[[int, int], None]]:
    """The config path and a function rewriting it atomically with (processes, batch): a
    master starting meanwhile reads the old file or the new one, never half of one."""
    path = workdir / "goodsd.yaml"

    def write(processes: int, batch: int) -> None:
        temp = path.with_suffix(".tmp")
        temp.write_text(dump_config(goodsd_config(url, workdir, plan, processes, batch)))
        os.replace(temp, path)

    return path, write


def inject_faults(chaos: Chaos, pusher: Pusher, plan: Plan) -> None:
    """Faults at random times until `duration` is over and every item is pushed."""
    started = time.monotonic()
    end = started + plan.duration
    next_fault = started + chaos.next_interval()
    while True:
        now = time.monotonic()
        if pusher.error is not None:
            raise BenchError(f"the pusher failed: {pusher.error!r}")
        if now >= end and not pusher.is_alive():
            return
        if now >= end + PUSH_GIVE_UP:
            raise BenchError(f"{pusher.pushed:,} of {plan.items:,} items pushed at the end")
        chaos.service.poll()
        chaos.watch()
        if next_fault <= now < end:
            injected = chaos.inject_next()
            next_fault = now + (chaos.next_interval() if injected else TICK)
        time.sleep(TICK)


def drain(chaos: Chaos, queue: Views, plan: Plan) -> None:
    """Faults over: one master with the starting config, until the queue is empty."""
    chaos.calm_down()

    def master_ready() -> bool:
        chaos.service.poll()
        return chaos.service.is_ready()

    wait_for(master_ready, READY_TIMEOUT, "goodsd to be ready after the faults")
    # A reload to the starting pool also undoes the SIGTTIN/SIGTTOU surplus.
    chaos.reload(plan.processes, plan.batch)

    def empty() -> bool:
        chaos.service.poll()
        return drained(queue)

    try:
        wait_for(empty, plan.drain_timeout, "the queue to drain")
    except BenchError as exc:
        chaos.anomalies.append(f"{exc}: {leftovers(queue)}")


def dead_items(queue: Views) -> tuple[list[str], list[str]]:
    """(items, `error` of each record) in the dead list, oldest first."""
    records = queue.client.lrange(queue.keys.dead, 0, -1)[::-1]
    dead = [DeadRecord.decode(raw) for raw in records]
    return [d.item.decode(errors="replace") for d in dead], [d.error or "" for d in dead]


def reckon(
    plan: Plan, chaos: Chaos, pusher: Pusher, queue: Views, workdir: Path, timing: Timing
) -> tuple[int, bool]:
    """Tally and print what became of the items once goodsd has stopped; see `run`."""
    dead, errors = dead_items(queue)
    result = tally(pusher.pushed, read_handled(workdir / "handled"), dead, chaos)
    markers = sum(1 for _ in queue.client.scan_iter(match=MARKER_PREFIX + "*", count=1000))
    if markers != pusher.batches:
        chaos.anomalies.append(
            f"{pusher.batches:,} batches acknowledged but {markers:,} markers in Redis"
        )
    if any(waiting(queue)):
        chaos.anomalies.append(
            f"still in Redis after goodsd stopped (unhandled, yet not lost): {leftovers(queue)}"
        )
    chaos.anomalies += chaos.service.unexpected
    planned = sum(1 for _ in (workdir / "failed").iterdir())
    anomalies = report(plan, result, chaos, pusher, queue.stats(), planned, errors, timing)
    return (1 if result.lost else 0), anomalies


def run(plan: Plan, workdir: Path) -> tuple[int, bool]:
    """One chaos run in `workdir`; prints its figures. Returns (exit status: 1 if an item was
    lost, else 0; whether anything else looked wrong)."""
    began = time.monotonic()
    timing = Timing()
    server = AofRedis(workdir / "redis")
    write_handler(workdir, plan.fail_every)
    config_path, write_config = config_writer(workdir, server.url, plan)
    write_config(plan.processes, plan.batch)
    service = Service(workdir, config_path, plan.restart_sec)
    pusher: Pusher | None = None
    with open(workdir / "faults.log", "w") as timeline:
        try:
            server.start()
            queue = Views(client_for(server.url), QUEUE)
            print(machine(queue.client))
            service.start()
            wait_for(service.is_ready, READY_TIMEOUT, f"goodsd to start; see {service.log_path(1)}")
            rng = random.Random(plan.seed)
            chaos = Chaos(
                rng, plan, service, server, write_config, timeline, plan.processes, plan.batch
            )
            pusher = Pusher(server.url, queue, plan.items, plan.duration)
            pusher.start()
            print(f"faults for {plan.duration:g}s (seed {plan.seed}) ...", file=sys.stderr)
            inject_faults(chaos, pusher, plan)
            timing.faults = time.monotonic() - began
            print("draining ...", file=sys.stderr)
            drain(chaos, queue, plan)
            timing.drain = time.monotonic() - began - timing.faults
            if problem := service.stop():
                chaos.anomalies.append(problem)
            timing.stop = time.monotonic() - began - timing.faults - timing.drain
            timing.total = time.monotonic() - began
            return reckon(plan, chaos, pusher, queue, workdir, timing)
        finally:
            if pusher is not None:
                pusher.stopping.set()
                pusher.join()
            service.kill_group()
            server.stop()


# --- reporting ----------------------------------------------------------------------------


def machine(client: redis.Redis) -> str:
    usable = len(os.sched_getaffinity(0))
    version = client.info("server")["redis_version"]
    return (
        f"machine: {os.cpu_count()} CPUs ({usable} usable), {platform.machine()},"
        f" Python {platform.python_version()}, redis-server {version} (AOF, appendfsync always)"
    )


def table(title: str, rows: Sequence[tuple[str, int, str]]) -> None:
    print(f"\n{title:<36} {'count':>8}")
    for name, count, note in rows:
        print(f"{name:<36} {count:>8,}  {note}".rstrip())


def unexplained_line(item: str, runs: list[Run]) -> str:
    who = ", ".join(
        f"pid {run.consumer[0]} (master {run.master}) at {stamp(run.at)}" for run in runs[:6]
    )
    return f"duplicate not explained by a kill: {item!r}, run by {who}"


def report(
    plan: Plan,
    result: Tally,
    chaos: Chaos,
    pusher: Pusher,
    stats: dict[str, int],
    planned: int,
    dead_errors: list[str],
    timing: Timing,
) -> bool:
    """Print the figures and every anomaly; True if there was one."""
    kind = "async def" if plan.use_async else "def"
    if plan.concurrency > 1:
        kind += ", asyncio tasks" if plan.use_async else ", threads"
    print(
        f"\nchaos run: seed {plan.seed}, {plan.duration:g}s of faults, {plan.items:,} items,"
        f" {plan.processes} consumers (batch {plan.batch}) at start, concurrency"
        f" {plan.concurrency} ({kind})"
    )
    explained = (
        f"{len(result.unexplained):,} not after a kill, see below"
        if result.unexplained
        else "all after kills"
    )
    explained += (
        f"; at most {result.most_per_kill:,} for one killed consumer"
        f" (bound {result.per_kill_bound:,})"
    )
    table(
        "items",
        [
            (
                "pushed",
                result.pushed,
                f"{pusher.batches:,} batches, {pusher.errors:,} push errors,"
                f" {pusher.found_in:,} retried batches found already in",
            ),
            ("handled (unique)", result.handled, ""),
            ("lost", len(result.lost), "pushed, never handled, not dead"),
            ("duplicated", result.duplicated, f"{result.extra_runs:,} extra runs; {explained}"),
            ("dead", len(result.dead), "none expected"),
            ("failed once on purpose", planned, f"goodsd retried {stats.get('retried', 0):,}"),
        ],
    )
    kinds = [(kind, chaos.faults[kind], "") for kind in DECK]
    table("faults", [*kinds, ("total", sum(chaos.faults.values()), "")])
    hang = max(chaos.hang_kill_seconds, default=0.0)
    details = [(name, count, "") for name, count in sorted(chaos.details.items())]
    details += [
        ("master restarts", chaos.service.runs - 1, f"RestartSec {plan.restart_sec:g}s"),
        ("redis-server seconds away", round(chaos.redis_downtime), ""),
        ("slowest hang kill, seconds", round(hang), f"limit {HANG_LIMIT:g}s"),
    ]
    table("fault details", details)
    print("\ngoodsd counters: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.items())))
    print(
        f"time: {timing.faults:.1f}s pushing with faults, {timing.drain:.1f}s drain,"
        f" {timing.stop:.1f}s stop; {timing.total:.1f}s in all"
    )
    problems = [
        *(f"lost: {item}" for item in result.lost[:20]),
        *(unexplained_line(item, runs) for item, runs in list(result.unexplained.items())[:20]),
        *(
            f"killed consumer pid {pid} (master {master}) accounts for {count:,} duplicates,"
            f" more than the {result.per_kill_bound:,} it can have finished without their acks"
            for (master, pid, _), count in result.past_bound.items()
        ),
        *(f"dead: {item!r}: {e}" for item, e in zip(result.dead[:20], dead_errors, strict=False)),
        *(f"handled but never pushed: {item!r}" for item in result.strangers[:20]),
        *chaos.anomalies,
    ]
    if problems:
        print("\nanomalies:")
        for problem in problems:
            print(f"  {problem}")
    return bool(problems)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--items", type=int, default=30_000, help="unique items (default 30000)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the faults (default 1)")
    parser.add_argument("--processes", type=int, default=4, help="consumers at start (4)")
    parser.add_argument("--batch", type=int, default=10, help="consumers.batch at start (10)")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="consumers.concurrency: items in flight (1)"
    )
    parser.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="an async def handler (asyncio tasks) instead of a plain def one (threads)",
    )
    parser.add_argument(
        "--fault-interval", type=float, default=2.0, help="mean seconds between faults (2)"
    )
    parser.add_argument(
        "--restart-sec", type=float, default=1.0, help="pause before a master restart (1)"
    )
    parser.add_argument(
        "--fail-every", type=int, default=50, help="1 item in N fails once on purpose (50; 0: none)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds the drain may take (120)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, AOF, files)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.items < 1 or args.fault_interval <= 0:
        parser.error("--duration, --items and --fault-interval must be positive")
    if not 1 <= args.processes <= PROCESSES_MAX or not 1 <= args.batch <= 10_000:
        parser.error(f"--processes must be 1 to {PROCESSES_MAX}, --batch 1 to 10000")
    if not 1 <= args.concurrency <= 10_000:
        parser.error("--concurrency must be 1 to 10000")
    return Plan(
        duration=args.duration,
        items=args.items,
        seed=args.seed,
        processes=args.processes,
        batch=args.batch,
        concurrency=args.concurrency,
        use_async=args.use_async,
        fault_interval=args.fault_interval,
        restart_sec=args.restart_sec,
        fail_every=args.fail_every,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
    )


def exit_on_term(signum: int, frame: object) -> None:
    """SIGTERM ends the run like ^C: through every `finally`, so nothing is left running."""
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_term)
    # In /tmp, not $TMPDIR: the redis socket path must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="goodsd-chaos-", dir="/tmp"))
    status, anomalies = 1, True
    try:
        status, anomalies = run(plan, workdir)
    except BenchError as exc:
        print(f"chaos run failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        status = 130  # ^C: everything it started is gone by now (run's `finally`)
    finally:
        if plan.keep or status or anomalies:
            print(f"work dir kept (master-<n>.log, handled/, redis/): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
