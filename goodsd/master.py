"""The master: one thread, one loop. It alone forks, reaps and handles the service's signals.

Signal handlers do nothing; ``signal.set_wakeup_fd`` writes each signal's number into a pipe,
and the loop, blocked in ``select`` on that pipe and on every child's event pipe, wakes at once
and dispatches to ``handle_<signal>``. The loop decides nothing itself; it carries out what its
parts decide:

- ``goodsd.children``: what to spawn and retire, what a child's exit leads to (pure);
- ``goodsd.reloader``: which roles a reload rolls, when it has proven itself, going back;
- ``goodsd.housekeeping``: whom to kill, whose leases to renew, what to requeue and blame,
  and the Redis calls for that, which never stall the loop;
- ``goodsd.reporting``: the STATUS= line, the masters registry entry, the metrics snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import secrets
import selectors
import signal
import time
from collections.abc import Callable

from goodsd import codestamp, hostinfo, logs, metrics, output, proctitle, reporting
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
    next_deadline,
    plan_exit,
    reconcile,
    roll_settled,
    roll_stuck,
)
from goodsd.config import Config, ConfigError
from goodsd.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from goodsd.hostinfo import signal_name
from goodsd.housekeeping import (
    LEFTOVER_RECHECK,
    RETRY_EVERY,
    Housekeeping,
    Requeue,
    lease_holders,
    leftovers,
    overdue_children,
    requeue_of,
)
from goodsd.notify import Notifier
from goodsd.ops.common import display_url
from goodsd.redisconn import PasswordError, password
from goodsd.reloader import Reloader
from goodsd.scoreboard import NO_READING, Scoreboard
from goodsd.stopsummary import StopSummary
from goodsd.store import Upkeep

log = logging.getLogger("goodsd.master")

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
# A master's registry entry not refreshed for this long is deleted by any other master.
MASTER_FORGET = 3600.0


def wanted_counts(config: Config, extra_consumers: int) -> dict[Role, int]:
    return {
        Role.CONSUMER: max(0, config.consumers.processes + extra_consumers),
        Role.PRODUCER: config.producer.processes,
    }


class Master:
    """The loop that owns the parts: it forks, reaps and handles signals, and carries out
    what ``Reloader`` (reload and rollback), ``Housekeeping`` (leases, requeues, liveness)
    and ``goodsd.reporting`` (STATUS=, registry, metrics) decide. ``clock`` is monotonic
    seconds; ``log_target`` is where this master and its children log."""

    def __init__(
        self,
        config: Config,
        notifier: Notifier,
        clock: Callable[[], float] = time.monotonic,
        log_target: str = logs.STDERR,
    ) -> None:
        self.config = config
        self.notifier = notifier
        self.clock = clock
        self.log_target = log_target
        self.children: list[Child] = []
        self.reloader = Reloader()
        self.redis = Housekeeping(clock)
        self.extra_consumers = 0  # SIGTTIN minus SIGTTOU since the last reload
        self.stopping = False
        self.ready_sent = False
        self.exit_code = EXIT_OK
        self.spawn_seq = 0  # children started so far: the next one's ``seq``
        self.rates = reporting.Rates()
        self.backlog: int | None = None  # the ready list's length at the last look
        self.restarts = 0  # children restarted after they exited, for metrics
        self.stop_summary: StopSummary | None = None  # what a stop under way did with items
        self.exporter: metrics.Exporter | None = None
        self.master_id = ""  # its entry in the masters registry: host-pid
        self.started_wall = 0.0
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.timers: dict[str, float] = {}  # name -> monotonic time its action is next due
        self.pidns = hostinfo.pid_namespace()
        # True until a search for this host's dead consumers has reached Redis.
        self.leftovers_unknown = True

    @property
    def queue(self) -> Upkeep:
        return self.redis.queue_for(self.config)

    @property
    def generation(self) -> dict[Role, int]:
        return self.reloader.generation

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
        self.kill_overdue(now)
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

    def handle_ttin(self) -> None:
        self.extra_consumers += 1
        log.info("SIGTTIN: one consumer more (%d wanted)", self.wanted()[Role.CONSUMER])
        self.manage_children()

    def handle_ttou(self) -> None:
        if self.wanted()[Role.CONSUMER] > 0:
            self.extra_consumers -= 1
        log.info("SIGTTOU: one consumer fewer (%d wanted)", self.wanted()[Role.CONSUMER])
        self.manage_children()

    # -- reload (decided by self.reloader) ------------------------------------------------

    def prepare(self, path: str) -> Config:
        """The new config, read and validated, with everything it needs that can fail early:
        its password, its Redis client (the URL read as the client will read it), the checks
        a start makes of that Redis when the redis settings or the queue change
        (``Housekeeping.check_reload``) and its metrics address. Raises whatever went
        wrong."""
        new = config_mod.load(path)
        for warning in new.warnings:
            log.warning("%s", warning)
        password(new.redis, os.environ)
        self.redis.queue_for(new)
        self.redis.check_reload(self.config, new)
        self.exporter = metrics.reconfigure(self.exporter, new)
        return new

    def refuse_reload(self, exc: Exception) -> None:
        """A new config that cannot run: keep the old one, say why in the log and STATUS=."""
        self.reloader.error = _reason(exc)
        expected = isinstance(exc, ConfigError | OSError | PasswordError)
        log.error(
            "reload rejected, keeping the running config: %s",
            self.reloader.error,
            exc_info=None if expected else exc,
        )
        if self.ready_sent:
            self.notifier.ready(self.status_text())

    def apply_config(self, new: Config) -> None:
        """Put a valid config in force: resize pools, roll roles whose settings changed."""
        old = self.config
        rolled = self.reloader.rolls(old, new, self.children)
        for role, why in rolled.items():
            log.info("%s: rolling %s children", why, role)
        # From here on nothing can fail half way: the new config is put in force whole.
        self.reloader.put_in_force(old, new, rolled, self.children, ready_sent=self.ready_sent)
        self.config = new
        self.extra_consumers = 0
        self.setup_logging(new)
        self.manage_children()
        self.maybe_ready()

    def setup_logging(self, config: Config) -> None:
        """The master's logging as ``config`` says; a failure (a syslog socket gone, say) keeps
        the logging as it was and is said, never raised: it must not end a reload."""
        try:
            logs.setup(
                config.logging.level, config.logging.format, "master", target=self.log_target
            )
        except (OSError, ValueError) as exc:
            log.error("cannot set up logging as configured (%s): logging goes on as before", exc)

    def reject_reload(self, reason: str) -> None:
        """The reloaded config's children cannot load their code, or crash before the reload
        proved itself: go back to the previous config (its children may still be serving, or
        start again)."""
        log.error("reload failed, going back to the previous config: %s", reason)
        self.config = self.reloader.roll_back(self.config, self.children, reason)
        self.setup_logging(self.config)
        self.manage_children()
        if self.reloader.pending:
            self.reloader.pending = False
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
        child.kill_reason, child.blamed = "", ()
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
            self.requeue(requeue_of(child, reading, text, self.config))
        supervisor = self.config.supervisor
        plan = plan_exit(
            child,
            code,
            now,
            ready_sent=self.ready_sent,
            can_roll_back=self.reloader.can_roll_back(child),
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

    # -- Redis housekeeping (decided by goodsd.housekeeping) -----------------------------

    def requeue(self, requeue: Requeue) -> None:
        """Requeue a gone consumer's items now, or once Redis takes it."""
        self.report_requeued(self.redis.requeue(requeue))

    def retry_requeues(self) -> None:
        self.report_requeued(self.redis.retry_requeues())

    def report_requeued(self, requeued: list[tuple[str, int]]) -> None:
        for identity, count in requeued:
            log.warning("requeued %d in-flight item(s) of %s", count, identity)
            if self.stop_summary is not None:
                self.stop_summary.requeued(identity, count)

    def kill_overdue(self, now: float) -> None:
        for child, reason, blamed in overdue_children(self.children, now):
            log.error("killing %s: %s", child.name, reason)
            child.kill_reason, child.blamed = reason, blamed
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

    def renew_leases(self) -> None:
        """Keep leases only for children that are alive and not hung."""
        if not self.redis.renew_leases(lease_holders(self.children, self.clock())):
            self.timers["leases"] = self.clock() + TICK  # again next tick, not a third lease on

    def requeue_leftovers(self) -> None:
        """Requeue what dead consumers hold: this host's at once, other hosts' once their lease
        is gone."""
        self.requeue_own_host()
        own = {c.identity for c in self.children if c.pid}  # alive: this master answers for them
        requeued = self.redis.do("lease check", lambda: self.queue.requeue_expired(own)) or {}
        for identity, count in requeued.items():
            log.warning("lease of %s expired: requeued %d item(s)", identity, count)

    def requeue_own_host(self) -> None:
        """After a crash of a previous master on this host, its consumers are gone but their
        leases may still run: requeue their items now instead of waiting."""
        registered = self.redis.do("search for leftovers", self.queue.views.registered)
        if registered is None:
            self.leftovers_unknown = True
            registered = {}
        elif self.leftovers_unknown:  # the first look that reached Redis: look again shortly,
            self.leftovers_unknown = False  # for children that were still dying at this one
            self.timers["leftover check"] = self.clock() + LEFTOVER_RECHECK
            self.timers.pop("leftovers", None)  # no longer due: the loop must not wake for it
        known = {c.identity for c in self.children} | self.redis.waiting()
        for identity in leftovers(
            registered, known, host=hostinfo.hostname(), pidns=self.pidns, alive=_alive
        ):
            self.redis.requeues.append(Requeue(identity, (), "", self.config))
        self.retry_requeues()

    def check_redis(self) -> bool:
        """The access check before the first READY=1 (``Housekeeping.check_access``); False
        when Redis refuses goodsd: the service then exits 78."""
        return self.redis.check_access(self.queue, self.config)

    def redis_ready(self) -> bool:
        """Whether Redis's permissions were checked, as the first READY=1 requires. While Redis
        is away the check is tried again every RETRY_EVERY; a refusal stops the service with
        exit code 78."""
        if self.redis.access_checked or not self.redis.access_check_due():
            return self.redis.access_checked
        if not self.check_redis():
            self.exit_code = EXIT_CONFIG
            self.begin_stop()
        return self.redis.access_checked

    # -- systemd and operators (made by goodsd.reporting) ---------------------------------

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
        reloader = self.reloader
        settled = roll_settled(self.children, wanted, self.generation)
        if settled and reloader.previous is not None:
            # Scoreboards are read only while a reload can still be undone.
            done = {c: c.board.read().done for c in self.children if c.board is not None}
            reloader.note_proofs(self.children, done)
        if reloader.pending and (settled or roll_stuck(self.children, self.generation)):
            reloader.pending = False
            log.info("reload complete: %s", self.status_text())
            self.notifier.ready(self.status_text())

    def refresh_status(self) -> None:
        self.rates.update(self.children, self.clock())
        self.read_backlog()
        self.notifier.status(self.status_text())
        self.publish_status()

    def publish_status(self) -> None:
        """Tell operators about this master: its registry entry (for `goodsd status`) and,
        with metrics on, a fresh snapshot for the exporter."""
        entry = reporting.master_entry(
            self.children,
            host=hostinfo.hostname(),
            pid=os.getpid(),
            started=self.started_wall,
            seen=time.time(),
        )
        self.redis.do(
            "masters registry", lambda: self.queue.beat_master(self.master_id, entry, MASTER_FORGET)
        )
        if self.exporter is None:
            return
        overview = self.redis.do("metrics overview", self.queue.views.overview)
        self.exporter.publish(
            reporting.metrics_snapshot(
                self.children,
                queue=self.config.queue,
                overview=overview,
                restarts=self.restarts,
                reload_ok=not self.reloader.error,
            )
        )

    def read_backlog(self) -> None:
        self.backlog = self.redis.do("backlog", self.queue.views.backlog)

    def status_text(self) -> str:
        """One line for STATUS=: see ``goodsd.reporting.status_text``."""
        seen = reporting.Situation(
            redis_url=display_url(self.config.redis.url),
            trouble=self.redis.outage.trouble,
            backlog=self.backlog,
            per_second=self.rates.per_second,
            reload_error=self.reloader.error,
        )
        return reporting.status_text(self.children, self.generation, self.clock(), seen)

    def close(self) -> None:
        self.redis.quiet_until = 0.0  # a last try at everything
        self.retry_requeues()
        if self.stop_summary is not None:
            log.info("%s", self.stop_summary.line(self.redis.waiting()))
        self.redis.do(
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
