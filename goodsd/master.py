"""The master: one thread, one loop. It alone forks, reaps and handles the service's signals.

Signal handlers do nothing; ``signal.set_wakeup_fd`` writes each signal's number into a pipe,
and the loop, blocked in ``select`` on that pipe and on every child's event pipe, wakes at once
and dispatches to ``handle_<signal>``. Decisions come from ``goodsd.children`` (pure); this
module carries them out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import secrets
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis

from goodsd import __version__, codestamp, hostinfo, logs, metrics, output, proctitle
from goodsd import config as config_mod
from goodsd.backoff import backoff_delay
from goodsd.child import child_main, consumer_identity
from goodsd.children import (
    IDLE,
    Child,
    Exit,
    ExitPlan,
    Role,
    State,
    all_running,
    describe_exit,
    heartbeat_timeout,
    keeps_lease,
    next_deadline,
    overdue,
    plan_exit,
    proven_roles,
    reconcile,
    roll_settled,
    roll_stuck,
)
from goodsd.config import Config, ConfigError, RedisConfig
from goodsd.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from goodsd.hostinfo import signal_name
from goodsd.notify import Notifier
from goodsd.ops.common import display_url
from goodsd.redisconn import (
    Outage,
    PasswordError,
    classify,
    connect,
    password,
    refusal,
    refused_commands,
    waiting_on,
)
from goodsd.scoreboard import FLAG_PAUSED, FLAG_STANDBY, NO_READING, Scoreboard
from goodsd.stopsummary import StopSummary
from goodsd.store import (
    MasterEntry,
    Overview,
    RetryPolicy,
    Upkeep,
)

log = logging.getLogger("goodsd.master")
T = TypeVar("T")

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
# Signals whose repeats within one wake-up need handling once: a reap takes every exited child,
# a reload reads the file as it is now.
ONCE_PER_WAKEUP = frozenset({signal.SIGCHLD, signal.SIGHUP})
# Signals a child leaves to the master: systemd or a terminal may send them to the whole group.
CHILD_IGNORED = (signal.SIGHUP, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU)
# Longest the loop sleeps without an event: the resolution of liveness checks.
TICK = 0.5
# How often STATUS= is refreshed (and the backlog read from Redis).
STATUS_EVERY = 2.0
# How often the master tries again what Redis did not answer: requeues, the access check.
RETRY_EVERY = 1.0
# The first search for leftovers of a crashed run is repeated this soon after start, to catch
# its children that were still dying at the first look.
LEFTOVER_RECHECK = 1.0
# The master's Redis calls are all short; a frozen server must not stall its loop for long.
MASTER_SOCKET_TIMEOUT = 2.0
# Any trouble with Redis, as seen by the master: log it, carry on, try again later.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)
# After a failed Redis call the master skips its other Redis housekeeping this long.
REDIS_PAUSE = 1.0
# A master's registry entry not refreshed for this long is deleted by any other master.
MASTER_FORGET = 3600.0


def role_settings(config: Config, role: Role) -> tuple[object, ...]:
    """What a child of ``role`` was started with; a change means rolling its children."""
    common = (
        config.redis,
        config.queue,
        config.pythonpath,
        config.logging,
        config.supervisor.lease,
    )
    if role == Role.CONSUMER:
        return (*common, dataclasses.replace(config.consumers, processes=0))
    return (*common, dataclasses.replace(config.producer, processes=0))


def wanted_counts(config: Config, extra_consumers: int) -> dict[Role, int]:
    return {
        Role.CONSUMER: max(0, config.consumers.processes + extra_consumers),
        Role.PRODUCER: config.producer.processes,
    }


@dataclass
class Rates:
    """Items/s over the last status interval, from the children's scoreboard counters."""

    last_total: int = 0
    last_time: float = 0.0
    retired_total: int = 0  # counts of children that are gone, so totals never go back
    per_second: float = 0.0

    def update(self, total: int, now: float) -> None:
        if self.last_time and now > self.last_time:
            self.per_second = max(0.0, (total - self.last_total) / (now - self.last_time))
        self.last_total, self.last_time = total, now


@dataclass
class Requeue:
    """In-flight items of a gone consumer still to be requeued (Redis may be away)."""

    identity: str  # the consumer id whose in-flight list is to be emptied
    current: int | None  # position of the item it was running when it died, if its fault
    error: str  # recorded as that item's failure
    config: Config  # the config it ran with: which Redis, which queue, how many retries
    attempts: int = 0  # failed tries so far, to log the first one only


@dataclass
class Master:
    config: Config
    notifier: Notifier
    clock: Callable[[], float] = time.monotonic
    log_target: str = logs.STDERR  # where this master and its children log
    children: list[Child] = field(default_factory=list)
    generation: dict[Role, int] = field(default_factory=lambda: dict.fromkeys(Role, 1))
    extra_consumers: int = 0  # SIGTTIN minus SIGTTOU since the last reload
    stopping: bool = False
    ready_sent: bool = False
    reload_pending: bool = False  # a READY=1 is owed for a reload
    reload_error: str = ""
    exit_code: int = EXIT_OK
    spawn_seq: int = 0
    requeues: list[Requeue] = field(default_factory=list)
    rates: Rates = field(default_factory=Rates)
    backlog: int | None = None
    restarts: int = 0  # children restarted after they exited, for metrics
    stop_summary: StopSummary | None = None  # what the stop under way did with items in hand

    def __post_init__(self) -> None:
        self.exporter: metrics.Exporter | None = None
        self.master_id = ""  # its entry in the masters registry: host-pid
        self.started_wall = 0.0
        # The config and generations to go back to while a reload's roll is not settled.
        self.previous: Config | None = None
        self.previous_generation: dict[Role, int] = {}
        self.generation_seq = max(self.generation.values())
        self.queues: dict[tuple[RedisConfig, str], Upkeep] = {}
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.timers: dict[str, float] = {}
        self.redis_quiet_until = 0.0  # monotonic time until which Redis housekeeping waits
        self.redis_outage = Outage()  # the master's own trouble with Redis, if any
        self.access_checked = False  # Redis was found to allow every command goodsd needs
        self.access_check_at = 0.0  # monotonic time of the next check while Redis is away
        self.pidns = hostinfo.pid_namespace()
        # True until a search for this host's dead consumers has reached Redis.
        self.leftovers_unknown = True
        # role -> the latest generation of it whose children proved themselves after a reload
        self.proven: dict[Role, int] = {}

    @property
    def queue(self) -> Upkeep:
        return self.queue_for(self.config)

    def queue_for(self, config: Config) -> Upkeep:
        """The master's client for the queue a config names (children of an older config may
        still hold items of another queue or server)."""
        key = (config.redis, config.queue)
        if key not in self.queues:
            client = connect(config.redis, "goodsd-master", socket_timeout=MASTER_SOCKET_TIMEOUT)
            self.queues[key] = Upkeep(client, config.queue)
        return self.queues[key]

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        proctitle.set_title(proctitle.master_title(self.config.path))
        for warning in self.config.warnings:
            log.warning("%s", warning)
        try:
            password(self.config.redis, os.environ)
        except PasswordError as exc:
            log.critical("%s", exc)
            return EXIT_CONFIG
        raise_fd_limit()
        if not self.check_redis():
            return EXIT_CONFIG
        self.exporter = metrics.reconfigure(None, self.config)  # ConfigError: exit 78
        self.master_id = f"{hostinfo.hostname()}-{os.getpid()}"
        self.started_wall = time.time()
        self.install_signals()
        self.requeue_own_host()
        self.read_backlog()
        log.info(
            "goodsd master %d starting: queue %r, %d consumer(s)",
            os.getpid(),
            self.config.queue,
            self.config.consumers.processes,
        )
        self.manage_children()
        self.maybe_ready()
        while self.children or not self.stopping:
            self.wait_for_events()
            self.tick()
        self.close()
        log.info("goodsd master %d stopped", os.getpid())
        return self.exit_code

    def wait_for_events(self) -> None:
        """Block until a signal, a child's message or the next deadline, whichever is first."""
        now = self.clock()
        deadlines = list(self.timers.values())
        if (child_deadline := next_deadline(self.children)) is not None:
            deadlines.append(child_deadline)
        timeout = max(0.0, min([TICK, *(t - now for t in deadlines)]))
        for key, _ in self.selector.select(timeout):
            if key.fd == self.wake_r:
                self.dispatch_signals()
            elif key.data.events == key.fd:  # not closed by an earlier event of this wake-up
                self.read_child_events(key.data)

    def dispatch_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for signum in signals_to_handle(data):
            getattr(self, "handle_" + signal_name(signum)[3:].lower())()

    def tick(self) -> None:
        now = self.clock()
        self.reap()
        self.enforce_liveness(now)
        self.kill_overdue_stoppers(now)
        self.manage_children()
        self.every("leases", self.config.supervisor.lease / 3, self.renew_leases)
        self.every("leftover check", self.config.supervisor.lease / 2, self.requeue_leftovers)
        self.every("requeue", RETRY_EVERY, self.retry_requeues)
        if self.leftovers_unknown:  # Redis was away at the last look: look again soon
            self.every("leftovers", RETRY_EVERY, self.requeue_own_host)
        else:
            self.timers.pop("leftovers", None)  # a timer left behind would wake the loop at once
        self.every("status", STATUS_EVERY, self.refresh_status)
        if self.notifier.watchdog_interval:
            self.every("watchdog", self.notifier.watchdog_interval, self.notifier.watchdog)
        self.maybe_ready()

    def every(self, name: str, interval: float, action: Callable[[], None]) -> None:
        now = self.clock()
        if now >= self.timers.get(name, 0.0):
            self.timers[name] = now + interval
            action()

    # -- signals ------------------------------------------------------------------------

    def install_signals(self) -> None:
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _record_only)

    def handle_term(self) -> None:
        if self.stopping:
            self.kill_all("stop requested twice")
            return
        log.info(
            "stopping: waiting up to %gs for current items", self.config.supervisor.graceful_timeout
        )
        self.notifier.stopping()
        self.begin_stop()

    handle_int = handle_term

    def begin_stop(self) -> None:
        self.stopping = True
        self.stop_summary = StopSummary.begin(self.children)
        for child in list(self.children):
            self.retire(child)

    def handle_chld(self) -> None:
        self.reap()

    def handle_hup(self) -> None:
        """Reload. Nothing in it may take the master down: any failure while reading,
        validating or preparing the new config rejects it, and one while putting it in force
        goes back to the config before; the old config keeps running either way."""
        if self.stopping:
            return
        if self.ready_sent:
            self.notifier.reloading()
        path = self.config.path
        log.info("reloading %s", path)
        try:
            new = self.prepare(path)
        except Exception as exc:
            self.refuse_reload(exc)
            return
        before = self.config
        try:
            self.apply_config(new)
        except Exception as exc:
            log.exception("reload failed while applying the new config")
            if self.config is before:  # nothing was changed yet: keep the running config
                self.refuse_reload(exc)
            else:
                self.reject_reload(f"cannot apply the new config: {_reason(exc)}")

    def prepare(self, path: str) -> Config:
        """The new config, read and validated, with everything it needs that can fail early:
        its password, its Redis client (built, not connected: the URL read as the client will
        read it) and its metrics address. Raises whatever went wrong."""
        new = config_mod.load(path)
        for warning in new.warnings:
            log.warning("%s", warning)
        password(new.redis, os.environ)
        self.queue_for(new)
        self.exporter = metrics.reconfigure(self.exporter, new)
        return new

    def refuse_reload(self, exc: Exception) -> None:
        """A new config that cannot run: keep the old one, say why in the log and STATUS=."""
        self.reload_error = _reason(exc)
        expected = isinstance(exc, ConfigError | OSError | PasswordError)
        log.error(
            "reload rejected, keeping the running config: %s",
            self.reload_error,
            exc_info=None if expected else exc,
        )
        if self.ready_sent:
            self.notifier.ready(self.status_text())

    def handle_ttin(self) -> None:
        self.extra_consumers += 1
        log.info("SIGTTIN: one consumer more (%d wanted)", self.wanted()[Role.CONSUMER])
        self.manage_children()

    def handle_ttou(self) -> None:
        if self.wanted()[Role.CONSUMER] > 0:
            self.extra_consumers -= 1
        log.info("SIGTTOU: one consumer fewer (%d wanted)", self.wanted()[Role.CONSUMER])
        self.manage_children()

    # -- reload -------------------------------------------------------------------------

    def apply_config(self, new: Config) -> None:
        """Put a valid config in force: resize pools, roll roles whose settings changed."""
        old = self.config
        rolled = [role for role in self.generation if self.must_roll(role, old, new)]
        # From here on nothing can fail half way: the new config is put in force whole.
        if self.previous is None:  # the first reload of a roll: the state to go back to
            self.previous = old
            self.previous_generation = dict(self.generation)
        for role in rolled:
            self.generation_seq += 1
            self.generation[role] = self.generation_seq
        self.keep_finished(old, new)
        self.config = new
        self.extra_consumers = 0
        self.reload_error = ""
        self.setup_logging(new)
        self.reload_pending = self.ready_sent
        self.manage_children()
        self.maybe_ready()

    def must_roll(self, role: str, old: Config, new: Config) -> bool:
        """Whether the role's children must roll for ``new``: a setting they run with changed,
        or code they loaded changed on disk; says which in the log."""
        if role_settings(old, role) != role_settings(new, role):
            log.info("%s settings changed: rolling %s children", role, role)
            return True
        changed_code = self.changed_code(role)
        if changed_code:
            shown = ", ".join(changed_code[:3]) + (", ..." if len(changed_code) > 3 else "")
            log.info("%s code changed on disk (%s): rolling %s children", role, shown, role)
            return True
        return False

    def setup_logging(self, config: Config) -> None:
        """The master's logging as ``config`` says; a failure (a syslog socket gone, say) keeps
        the logging as it was and is said, never raised: it must not end a reload."""
        try:
            logs.setup(
                config.logging.level, config.logging.format, "master", target=self.log_target
            )
        except (OSError, ValueError) as exc:
            log.error("cannot set up logging as configured (%s): logging goes on as before", exc)

    def changed_code(self, role: str) -> list[str]:
        """Files of code that the role's current children loaded and that changed on disk
        since (see goodsd.codestamp); they all load the same code, so one manifest is checked
        once."""
        seen: set[str] = set()
        changed: list[str] = []
        for child in self.children:
            if child.role != role or child.generation != self.generation[role]:
                continue
            todo = {p: s for p, s in child.code.items() if p not in seen}
            seen.update(todo)
            changed += codestamp.changed(todo)
        return changed

    def keep_finished(self, old: Config, new: Config) -> None:
        """Producers whose source is exhausted stay finished across a change that keeps their
        source (e.g. new watermarks), so a finite source is not run again; a new source runs."""
        same = (old.queue, old.producer.source, old.producer.command) == (
            new.queue,
            new.producer.source,
            new.producer.command,
        )
        for child in self.children:
            if same and child.role == Role.PRODUCER and child.state is State.FINISHED:
                child.generation = self.generation[Role.PRODUCER]

    def can_roll_back(self, child: Child) -> bool:
        """Whether ``child`` runs settings a reload brought in, which undoing it would drop,
        and that reload has not proven itself yet (see ``proven_roles``)."""
        return (
            self.previous is not None
            and child.generation == self.generation[child.role]
            and child.generation != self.previous_generation.get(child.role)
            and self.proven.get(child.role) != child.generation
        )

    def reload_proven(self) -> bool:
        """Every role a reload changed has proven itself; the readings of this moment are
        noted, for a proof is kept once seen (a child that handled items may crash later)."""
        done = {c: c.board.read().done for c in self.children if c.board is not None}
        for role in proven_roles(self.children, self.generation, self.previous_generation, done):
            self.proven[role] = self.generation[role]
        return all(self.proven.get(role) == gen for role, gen in self.generation.items())

    def reject_reload(self, reason: str) -> None:
        """The reloaded config's children cannot load their code, or crash before the reload
        proved itself: go back to the previous config (its children may still be serving, or
        start again)."""
        assert self.previous is not None
        log.error("reload failed, going back to the previous config: %s", reason)
        rejected, self.config = self.config, self.previous
        self.generation = dict(self.previous_generation)
        self.keep_finished(rejected, self.config)
        self.previous = None
        self.reload_error = reason
        self.setup_logging(self.config)
        self.manage_children()
        if self.reload_pending:
            self.reload_pending = False
            self.notifier.ready(self.status_text())

    # -- children -----------------------------------------------------------------------

    def wanted(self) -> dict[Role, int]:
        if self.stopping:
            return dict.fromkeys(self.generation, 0)
        return wanted_counts(self.config, self.extra_consumers)

    def manage_children(self) -> None:
        """The one reconciler: spawn and retire until running matches wanted."""
        plan = reconcile(self.children, self.wanted(), self.generation)
        for child in plan.retire:
            self.retire(child)
        for role, index in plan.spawn:
            child = Child(role=role, index=index, seq=0, generation=self.generation[role])
            self.children.append(child)
            self.spawn(child)
        now = self.clock()
        for child in self.children:
            if child.state is State.BACKOFF and now >= child.restart_at and not self.stopping:
                self.spawn(child)  # BACKOFF -> STARTING

    def retire(self, child: Child) -> None:
        if child.state in IDLE:
            self.children.remove(child)
            return
        if child.state is State.STOPPING:
            return
        log.info("stopping %s", child.name)
        child.move_to(State.STOPPING)  # STARTING/RUNNING -> STOPPING
        child.stop_deadline = self.clock() + self.config.supervisor.graceful_timeout
        _kill(child.pid, signal.SIGTERM)

    def spawn(self, child: Child) -> None:
        self.spawn_seq += 1
        child.seq = self.spawn_seq
        child.generation = self.generation[child.role]
        child.config = self.config
        token = secrets.token_hex(3)
        master_pid = os.getpid()
        try:
            child.board = Scoreboard(
                self.config.consumers.concurrency if child.role == Role.CONSUMER else 1
            )
            events_r, events_w = os.pipe()
        except OSError as exc:
            self.spawn_failed(child, exc)
            return
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(events_r)
            os.close(events_w)
            self.spawn_failed(child, exc)
            return
        if pid == 0:
            code = EXIT_FAILURE
            try:
                os.close(events_r)
                self.forget_in_child()
                code = child_main(self.config, child, events_w, token, master_pid, self.log_target)
            finally:
                try:
                    output.flush_everything()
                finally:
                    os._exit(code)
        os.close(events_w)
        os.set_blocking(events_r, False)
        child.pid = pid
        child.identity = consumer_identity(pid, token)
        child.move_to(State.STARTING)  # (new)/BACKOFF -> STARTING
        child.started_at = self.clock()
        child.ready_at = 0.0
        child.kill_reason = ""
        child.last_error = ""
        child.code, child.unread = {}, b""
        child.events = events_r
        self.selector.register(events_r, selectors.EVENT_READ, child)
        log.info("started %s", child.name)

    def spawn_failed(self, child: Child, exc: OSError) -> None:
        """No process could be made (a task limit, memory): back off like a failed start
        instead of letting the error take the master down."""
        if child.board is not None:
            child.board.close()
            child.board = None
        supervisor = self.config.supervisor
        child.failures += 1
        delay = backoff_delay(
            child.failures, supervisor.restart_delay, supervisor.restart_delay_max
        )
        child.move_to(State.BACKOFF)  # (new)/BACKOFF -> BACKOFF
        child.pid = 0
        child.restart_at = self.clock() + delay
        log.error("cannot start %s: %s; trying again in %.1fs", child.name, exc, delay)

    def forget_in_child(self) -> None:
        """In a fresh child: drop the master's signal plumbing, file descriptors and its line
        to systemd."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN if signum in CHILD_IGNORED else signal.SIG_DFL)
        self.notifier.forget()
        self.selector.close()
        if self.exporter is not None:
            self.exporter.close_in_child()
        for fd in (self.wake_r, self.wake_w, *(c.events for c in self.children)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def read_child_events(self, child: Child) -> None:
        if self.drain_events(child) == b"":
            self.close_events(child)
        self.manage_children()
        self.maybe_ready()

    def drain_events(self, child: Child) -> bytes | None:
        """Handle what the child wrote to its event pipe. Returns what was read: b"" once the
        pipe is closed, None when nothing waits (a process it forked may hold the pipe open)."""
        try:
            data = os.read(child.events, 65536)
        except BlockingIOError:
            return None
        *lines, child.unread = (child.unread + data).split(b"\n")
        for line in lines:
            kind, _, detail = line.decode("utf-8", "replace").partition(" ")
            if kind == "ready" and child.state is State.STARTING:
                child.move_to(State.RUNNING)  # STARTING -> RUNNING
                child.ready_at = self.clock()
                log.info("%s ready", child.name)
            elif kind == "code":
                child.code = codestamp.decode(detail)
            elif kind == "error":
                child.last_error = detail
        return data

    def close_events(self, child: Child) -> None:
        if child.events >= 0:
            self.selector.unregister(child.events)
            os.close(child.events)
            child.events = -1

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children if c.pid == pid), None)
            if child is not None:
                self.child_exited(child, status)

    def child_exited(self, child: Child, status: int) -> None:
        """Take in a child's last state, requeue what it held, then carry out the plan
        for its slot (``plan_exit``)."""
        now = self.clock()
        text, code, sig = describe_exit(status)
        if child.events >= 0:
            while self.drain_events(child):  # its last words may still be in the pipe
                pass
            self.close_events(child)
        reading = child.board.read() if child.board else NO_READING
        if child.board:
            child.board.close()
            child.board = None
        if child.role == Role.CONSUMER:  # a producer's counter is its pushes, not items handled
            self.rates.retired_total += reading.done + reading.failed
            if self.stop_summary is not None:
                self.stop_summary.consumer_exited(child.identity, reading)
            self.queue_requeue(child, reading.busy_since, reading.item, text)
        supervisor = self.config.supervisor
        plan = plan_exit(
            child,
            code,
            now,
            ready_sent=self.ready_sent,
            can_roll_back=self.can_roll_back(child),
            base=supervisor.restart_delay,
            cap=supervisor.restart_delay_max,
            flags=reading.flags,
        )
        if (
            child.role == Role.PRODUCER
            and code == EXIT_OK
            and plan.action in (Exit.FINISH, Exit.GONE)
        ):
            log.info(
                "%s %d finished: pushed %d items (pid %d)",
                child.role,
                child.index,
                reading.done,
                child.pid,
            )
        if plan.action is Exit.FINISH:
            self.finish(child)
        elif plan.action is Exit.GONE:
            level = logging.WARNING if sig == signal.SIGKILL else logging.INFO
            log.log(level, "%s %s", child.name, text)
            self.children.remove(child)
        elif plan.action in (Exit.FATAL, Exit.ROLLBACK):
            self.load_failed(child, plan, text)
        else:
            self.restart_later(child, plan, text, code, sig, now)

    def finish(self, child: Child) -> None:
        """A producer whose source is exhausted keeps its slot and is never started again."""
        child.move_to(State.FINISHED)  # RUNNING -> FINISHED
        child.pid = 0
        self.manage_children()
        self.maybe_ready()

    def load_failed(self, child: Child, plan: ExitPlan, text: str) -> None:
        """A child could not load its handler or source (or, after a reload, kept failing to
        start): fatal before READY, and undoes the reload that brought its settings after it."""
        log.error("%s %s", child.name, text)
        self.children.remove(child)
        if plan.crashes:
            reason = f"{child.role} crashed {plan.crashes} times in a row ({text})"
        else:
            reason = f"{child.role} {child.last_error or 'cannot start (see above)'}"
        if plan.action is Exit.ROLLBACK:
            self.reject_reload(reason)
            return
        if self.exit_code != EXIT_CONFIG:
            log.critical("%s; exiting", reason)
        self.exit_code = EXIT_CONFIG
        if not self.stopping:
            self.begin_stop()

    def restart_later(
        self,
        child: Child,
        plan: ExitPlan,
        text: str,
        code: int | None,
        sig: int | None,
        now: float,
    ) -> None:
        """Log the exit by its cause and put the slot in backoff until its restart."""
        if child.kill_reason:
            log.error("%s %s (%s)", child.name, text, child.kill_reason)
        elif sig == signal.SIGKILL:
            log.error("%s %s (out of memory?)", child.name, text)
        elif code == EXIT_OK:
            log.info("%s %s", child.name, text)
        else:
            log.error("%s %s", child.name, text)
        child.failures = plan.failures
        child.crashes = plan.crashes
        child.move_to(State.BACKOFF)  # RUNNING/STARTING -> BACKOFF
        child.pid = 0
        self.restarts += 1
        child.restart_at = now + plan.delay
        if plan.delay:
            log.warning(
                "%s failed to start %d time(s) in a row; restarting in %.1fs",
                child.name,
                child.failures,
                plan.delay,
            )
        self.manage_children()
        self.maybe_ready()

    def queue_requeue(self, child: Child, busy_since: float, position: int, how: str) -> None:
        current = position if busy_since and position >= 0 else None
        if child.kill_reason:
            error = f"worker killed: {child.kill_reason}"
        else:
            error = f"worker {how} while running this item"
        if child.state is State.STOPPING and not child.kill_reason:
            current = None  # a stop, not the item's fault
        self.requeues.append(Requeue(child.identity, current, error, child.config or self.config))
        self.retry_requeues()

    def retry_requeues(self) -> None:
        remaining: list[Requeue] = []
        for rec in self.requeues:
            if self.clock() < self.redis_quiet_until:
                remaining.append(rec)
                continue
            try:
                consumers = rec.config.consumers
                count = self.queue_for(rec.config).requeue(
                    rec.identity,
                    running=() if rec.current is None else (rec.current,),
                    error=rec.error,
                    policy=RetryPolicy(consumers.retries, consumers.retry_delay),
                )
            except REDIS_ERRORS as exc:
                self.redis_quiet_until = self.clock() + REDIS_PAUSE
                rec.attempts += 1
                if rec.attempts == 1:
                    log.warning("cannot requeue items of %s yet: %s", rec.identity, exc)
                remaining.append(rec)
                continue
            if count:
                log.warning("requeued %d in-flight item(s) of %s", count, rec.identity)
                if self.stop_summary is not None:
                    self.stop_summary.requeued(rec.identity, count)
        self.requeues = remaining

    def enforce_liveness(self, now: float) -> None:
        for child in self.children:
            if child.board is None or not child.pid or child.config is None:
                continue
            reading = child.board.read()
            reason = overdue(
                child,
                reading.heartbeat,
                reading.busy_since,
                now,
                child.config.consumers.timeout if child.role == Role.CONSUMER else None,
                heartbeat_timeout(child.config.supervisor.lease),
                waiting_on_redis=waiting_on(reading.flags) is not None,
            )
            if reason:
                log.error("killing %s: %s", child.name, reason)
                child.kill_reason = reason
                _kill(child.pid, signal.SIGKILL)

    def kill_overdue_stoppers(self, now: float) -> None:
        for child in self.children:
            if child.state is State.STOPPING and now >= child.stop_deadline:
                log.warning(
                    "%s did not stop within %gs: killing it",
                    child.name,
                    self.config.supervisor.graceful_timeout,
                )
                _kill(child.pid, signal.SIGKILL)
                child.stop_deadline = float("inf")

    def kill_all(self, why: str) -> None:
        log.warning("%s: killing every child now", why)
        for child in list(self.children):
            if child.state in IDLE:
                self.children.remove(child)
                continue
            _kill(child.pid, signal.SIGKILL)
            child.move_to(State.STOPPING)  # -> STOPPING, already killed
            child.stop_deadline = float("inf")

    # -- Redis housekeeping --------------------------------------------------------------

    def renew_leases(self) -> None:
        """Keep leases only for children that are alive and not hung."""
        now = self.clock()
        live: dict[tuple[RedisConfig, str], tuple[Config, list[str]]] = {}
        for child in self.children:
            cfg = child.config
            if child.role != Role.CONSUMER or child.board is None or cfg is None:
                continue
            heartbeat, busy_since, *_ = child.board.read()
            limit = heartbeat_timeout(cfg.supervisor.lease)
            if keeps_lease(child, heartbeat, busy_since, now, cfg.consumers.timeout, limit):
                live.setdefault((cfg.redis, cfg.queue), (cfg, []))[1].append(child.identity)
        for cfg, identities in live.values():
            queue, lease = self.queue_for(cfg), cfg.supervisor.lease
            renewed = self.redis_do(
                "lease renewal", lambda q=queue, i=identities, t=lease: q.renew_leases(i, t)
            )
            if renewed is None:  # failed or skipped: try again next tick, not a third lease on
                self.timers["leases"] = now + TICK

    def requeue_leftovers(self) -> None:
        """Requeue what dead consumers hold: this host's at once, other hosts' once their lease
        is gone."""
        self.requeue_own_host()
        own = {c.identity for c in self.children if c.pid}  # alive: this master answers for them
        requeued = self.redis_do("lease check", lambda: self.queue.requeue_expired(own)) or {}
        for identity, count in requeued.items():
            log.warning("lease of %s expired: requeued %d item(s)", identity, count)

    def requeue_own_host(self) -> None:
        """After a crash of a previous master on this host, its consumers are gone but their
        leases may still run: requeue their items now instead of waiting."""
        host = hostinfo.hostname()
        known = {c.identity for c in self.children} | {r.identity for r in self.requeues}
        registered = self.redis_do("search for leftovers", self.queue.views.registered)
        if registered is None:
            self.leftovers_unknown = True
            registered = {}
        elif self.leftovers_unknown:  # the first look that reached Redis: look again shortly,
            self.leftovers_unknown = False  # for children that were still dying at this one
            self.timers["leftover check"] = self.clock() + LEFTOVER_RECHECK
            self.timers.pop("leftovers", None)  # no longer due: the loop must not wake for it
        for identity, info in registered.items():
            if info.host != host or identity in known:
                continue
            if info.pidns != self.pidns:
                continue  # pids of another namespace or boot cannot be judged: the lease decides
            if _alive(info.master_pid, info.master_start) or _alive(info.pid, info.proc_start):
                continue  # its own master answers for it (and blames what it was running)
            self.requeues.append(Requeue(identity, None, "", self.config))
        self.retry_requeues()

    def check_redis(self) -> bool:
        """Before the first READY=1: check that Redis lets goodsd run every command it needs
        (``refused_commands``), and warn about settings that can lose items. A Redis that does
        not answer yet is no refusal: ``redis_ready`` checks again until it does. Returns
        False when Redis refuses goodsd (its login, an ACL permission, its socket): logged
        here, and the service exits 78."""
        now = self.clock()
        try:
            refused = refused_commands(self.queue)
        except REDIS_ERRORS as exc:
            trouble = classify(exc)
            if trouble is None:  # an answer the check did not expect: do not hold up the start
                log.warning("cannot check redis permissions: %s", exc)
                self.access_checked = True
                return True
            if trouble.kind.fatal:
                log.critical("%s; exiting", refusal(trouble))
                return False
            self.redis_outage.failed(trouble, now, "access check")
            self.redis_quiet_until = now + REDIS_PAUSE  # (a silent server: see redis_do)
            return True
        if refused:
            user = self.queue.client.connection_pool.connection_kwargs.get("username")
            log.critical(
                "redis refuses commands goodsd needs (add them to the ACL of redis user %r): "
                "%s; exiting",
                user or "default",
                ", ".join(refused),
            )
            return False
        self.redis_outage.succeeded(now, "access check")
        self.access_checked = True
        self.warn_about_settings()
        return True

    def redis_ready(self) -> bool:
        """Whether Redis's permissions were checked, as the first READY=1 requires. While Redis
        is away the check is tried again every RETRY_EVERY; a refusal stops the service with
        exit code 78."""
        now = self.clock()
        if self.access_checked or now < max(self.access_check_at, self.redis_quiet_until):
            return self.access_checked
        self.access_check_at = now + RETRY_EVERY
        if not self.check_redis():
            self.exit_code = EXIT_CONFIG
            self.begin_stop()
        return self.access_checked

    def warn_about_settings(self) -> None:
        """Warn about a Redis too old for goodsd, or one that may evict items."""
        try:
            info = self.queue.client.info("server")
        except REDIS_ERRORS as exc:  # INFO may be refused to goodsd's user
            log.debug("cannot read the redis version: %s", exc)
            return
        try:
            policy = self.queue.client.config_get("maxmemory-policy").get("maxmemory-policy")
        except REDIS_ERRORS as exc:  # CONFIG may be disabled on managed servers
            log.debug("cannot read redis settings: %s", exc)
            policy = None
        version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
        if version < (6, 2):
            log.error(
                "redis %s is too old: goodsd needs 6.2 or later (BLMOVE)", info.get("redis_version")
            )
        if policy and policy != "noeviction":
            log.warning(
                "redis maxmemory-policy is %s: items may be evicted; use noeviction", policy
            )

    # -- systemd ------------------------------------------------------------------------

    def maybe_ready(self) -> None:
        """READY=1 once the wanted children all run; after a reload, once the roll is over
        (or stuck in backoff while the older children serve)."""
        if self.stopping:
            return
        wanted = self.wanted()
        if not self.ready_sent:
            if all_running(self.children, wanted) and self.redis_ready():
                self.ready_sent = True
                log.info("ready: %s", self.status_text())
                self.notifier.ready(self.status_text())
            return
        settled = roll_settled(self.children, wanted, self.generation)
        if settled and self.previous is not None and self.reload_proven():
            self.previous = None  # nothing left to go back to
        if self.reload_pending and (settled or roll_stuck(self.children, self.generation)):
            self.reload_pending = False
            log.info("reload complete: %s", self.status_text())
            self.notifier.ready(self.status_text())

    def refresh_status(self) -> None:
        total = self.rates.retired_total
        for child in self.children:
            if child.board is not None and child.role == Role.CONSUMER:
                reading = child.board.read()
                total += reading.done + reading.failed
        self.rates.update(total, self.clock())
        self.read_backlog()
        self.notifier.status(self.status_text())
        self.publish_status()

    def publish_status(self) -> None:
        """Tell operators about this master: its registry entry (for `goodsd status`) and,
        with metrics on, a fresh snapshot for the exporter."""
        running = {
            role: sum(1 for c in self.children if c.role == role and c.state is State.RUNNING)
            for role in self.generation
        }
        info = MasterEntry(
            host=hostinfo.hostname(),
            pid=os.getpid(),
            started=round(self.started_wall, 3),
            seen=round(time.time(), 3),
            version=__version__,
            consumers=running[Role.CONSUMER],
            producers=running[Role.PRODUCER],
        )
        self.redis_do(
            "masters registry", lambda: self.queue.beat_master(self.master_id, info, MASTER_FORGET)
        )
        overview = (
            self.redis_do("metrics overview", self.queue.views.overview) if self.exporter else None
        )
        if self.exporter is not None:
            self.exporter.publish(self.metrics_snapshot(overview))

    def metrics_snapshot(self, overview: Overview | None) -> metrics.Snapshot:
        counts = {(role, state.value): 0 for role in self.generation for state in State}
        paused = False
        for child in self.children:
            counts[(child.role, child.state.value)] += 1
            if child.role == Role.PRODUCER and child.board is not None:
                paused = paused or bool(child.board.read().flags & FLAG_PAUSED)
        return metrics.Snapshot(
            queue=self.config.queue,
            overview=overview,
            children=tuple((role, state, n) for (role, state), n in counts.items()),
            restarts=self.restarts,
            producer_paused=paused,
            reload_ok=not self.reload_error,
        )

    def read_backlog(self) -> None:
        self.backlog = self.redis_do("backlog", self.queue.views.backlog)

    def redis_do(self, what: str, action: Callable[[], T]) -> T | None:
        """One Redis call of the master's housekeeping; None when it failed or was skipped.
        After a failure the next calls are skipped for REDIS_PAUSE: against a silent server
        each would wait out its timeout, and the loop (signals, watchdog) must not stall."""
        now = self.clock()
        if now < self.redis_quiet_until:
            return None
        try:
            result = action()
        except REDIS_ERRORS as exc:
            self.redis_quiet_until = now + REDIS_PAUSE
            log.debug("%s skipped: %s", what, exc)
            if (trouble := classify(exc)) is not None:
                self.redis_outage.failed(trouble, now, what)  # said once, and in STATUS=
            return None
        self.redis_outage.succeeded(now, what)
        return result

    def status_text(self) -> str:
        """One line: children by role and state, backlog, rate, producer paused, last error."""
        now = self.clock()
        parts = []
        for role in self.generation:
            mine = [c for c in self.children if c.role == role]
            if not mine and role != Role.CONSUMER:
                continue
            counts = [(s, sum(1 for c in mine if c.state is s)) for s in State]
            detail = ", ".join(f"{n} {s.value}" for s, n in counts if n) or "none"
            waits = [c.restart_at - now for c in mine if c.state is State.BACKOFF]
            if waits:
                detail += f" (next restart in {max(0.0, min(waits)):.1f}s)"
            parts.append(f"{role}s: {detail}")
            flags = [c.board.read().flags for c in mine if c.board]
            if role == Role.PRODUCER and flags:
                if any(f & FLAG_PAUSED for f in flags):
                    parts.append("producer paused")
                elif all(f & FLAG_STANDBY for f in flags):
                    parts.append("producer standby (another instance holds the lock)")
                else:
                    parts.append("producer pushing")
        trouble = self.redis_outage.trouble
        if trouble is not None:
            where = display_url(self.config.redis.url)
            parts.append(f"waiting for redis at {where}: {trouble.summary}")
        elif waits := self.children_waiting():
            parts.append(f"waiting for redis ({', '.join(waits)})")
        if self.backlog is not None or trouble is None:
            parts.append(f"backlog {self.backlog if self.backlog is not None else '?'}")
        parts.append(f"{self.rates.per_second:.0f} items/s")
        if self.reload_error:
            parts.append(f"last reload failed: {self.reload_error}")
        return "; ".join(parts)

    def children_waiting(self) -> list[str]:
        """The kinds of Redis trouble the children wait out, from their scoreboards."""
        kinds = {waiting_on(c.board.read().flags) for c in self.children if c.board}
        return sorted(kind.label for kind in kinds if kind is not None)

    def close(self) -> None:
        self.redis_quiet_until = 0.0  # a last try at everything
        self.retry_requeues()
        if self.stop_summary is not None:
            log.info("%s", self.stop_summary.line(rec.identity for rec in self.requeues))
        self.redis_do(
            "leaving the masters registry", lambda: self.queue.forget_master(self.master_id)
        )
        if self.exporter is not None:
            self.exporter.stop()
        self.notifier.status("stopped")
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one: the master holds an event pipe per
    child (and metrics connections), and systemd's default soft limit of 1024 is too low for a
    large pool. Its selector is epoll, so descriptors above 1024 are fine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def signals_to_handle(data: bytes) -> list[int]:
    """The signals read from the wake-up pipe (one byte each, in arrival order) to handle:
    every one counts (five TTINs are five more consumers), but one reap, or one re-read of the
    file, covers a burst of CHLD or HUP."""
    seen: set[int] = set()
    out: list[int] = []
    for signum in data:
        if signum in ONCE_PER_WAKEUP and signum in seen:
            continue
        seen.add(signum)
        out.append(signum)
    return out


def _reason(exc: BaseException) -> str:
    """An exception as one line for the log and STATUS=: a config error as it reads, anything
    else with its type."""
    if isinstance(exc, ConfigError | PasswordError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _alive(pid: int | None, start: int | None) -> bool:
    """Whether the process a registration names (by pid and start time) still runs."""
    return pid is not None and hostinfo.process_alive(pid, start)


def _record_only(signum: int, frame: object) -> None:
    """The wakeup fd already carries the signal number to the loop."""


def _kill(pid: int, signum: int) -> None:
    if pid <= 0:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # not ours any more: log, never take the master down
        log.error("cannot signal pid %d: %s", pid, exc)
