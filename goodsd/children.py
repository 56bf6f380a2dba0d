"""The master's child records and every decision about them, as pure functions of state and
``now``: what to spawn, what to retire, when to restart, whom to kill. No system calls here."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from goodsd.backoff import backoff_delay
from goodsd.config import Config
from goodsd.exits import EXIT_CONFIG, EXIT_OK
from goodsd.hostinfo import signal_name
from goodsd.scoreboard import FLAG_FINISHED, Scoreboard

# A child that dies before reporting ready or within this many seconds is a failed start.
STABLE_AFTER = 5.0
# A child's current item may run this long past consumers.timeout before the master kills it;
# command handlers enforce the timeout themselves first.
TIMEOUT_GRACE = 5.0
# A ready child whose scoreboard heartbeat is older than this (while not in an item) is hung.
# Longer than one Redis call of a child can block (its socket timeout, 10 s, plus the claim
# wait), so an unreachable Redis is never mistaken for a hang.
HEARTBEAT_MIN = 15.0
# A child that has not reported ready within this long is killed as a failed start.
START_TIMEOUT = 120.0
# A child a reload brought in that exits abnormally this many times in a row before the reload
# has proven itself (one of its children handled an item) undoes the reload: its settings or
# code are what break it, and the previous config worked.
ROLLBACK_AFTER = 3


class Role(enum.StrEnum):
    """What a child does; a StrEnum, so it reads as its name in logs, metrics and STATUS=."""

    CONSUMER = "consumer"  # claims items and runs the handler on them
    PRODUCER = "producer"  # pushes items from a source


class State(enum.Enum):
    STARTING = "starting"  # forked, not yet connected with its handler loaded
    RUNNING = "running"  # reported ready
    BACKOFF = "backoff"  # no process: waiting for restart_at after failed starts
    STOPPING = "stopping"  # SIGTERM sent: finishing its current item
    FINISHED = "finished"  # a producer whose source is exhausted: no process, not restarted


# Every move a child's state may make (a slot is created STARTING, before its first fork);
# ``Child.move_to`` refuses any other, so a bookkeeping slip fails loudly in tests.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset(
        {State.STARTING, State.RUNNING, State.STOPPING, State.BACKOFF, State.FINISHED}
    ),
    State.RUNNING: frozenset({State.STOPPING, State.BACKOFF, State.FINISHED}),
    State.BACKOFF: frozenset({State.STARTING, State.BACKOFF}),
    State.STOPPING: frozenset({State.STOPPING}),
    State.FINISHED: frozenset(),
}


class IllegalTransition(Exception):
    """A child was asked to move between two states no supervision path connects: a bug."""


# States without a process; and states that count as "done starting" for the role's slot.
IDLE = frozenset({State.BACKOFF, State.FINISHED})
SETTLED = frozenset({State.RUNNING, State.FINISHED})


@dataclass(eq=False)  # a record is itself: two slots never compare equal by value
class Child:
    """One supervised slot of a role; its process comes and goes across restarts."""

    role: Role  # what the child does
    index: int  # slot number within the role, shown in logs and STATUS
    seq: int  # spawn order of the current process; outdated children retire lowest first
    generation: int  # the role's config generation this child runs with
    state: State = State.STARTING
    pid: int = 0  # 0 while in BACKOFF
    identity: str = ""  # the consumer id it registers in Redis under
    started_at: float = 0.0  # monotonic time of the fork
    ready_at: float = 0.0  # monotonic time it reported ready, 0.0 before
    failures: int = 0  # consecutive failed starts; reset once a start is stable
    restart_at: float = 0.0  # BACKOFF: when to start again
    stop_deadline: float = 0.0  # STOPPING: when SIGKILL follows
    kill_reason: str = ""  # why the master SIGKILLed it, empty otherwise
    blamed: tuple[int, ...] = ()  # the items it was killed for (past their timeout)
    board: Scoreboard | None = None  # its shared liveness record
    events: int = -1  # read end of its event pipe, -1 when closed
    config: Config | None = None  # the snapshot its current process was started with
    last_error: str = ""  # what its process reported before failing (handler load error)
    code: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # files it loaded
    unread: bytes = b""  # the start of an event line from it not yet whole
    crashes: int = 0  # abnormal exits in a row while the reload that brought it is unproven

    def move_to(self, state: State) -> None:
        """The one way a child's state changes; raises IllegalTransition for a move that
        ``TRANSITIONS`` does not allow."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state

    @property
    def name(self) -> str:
        return (
            f"{self.role} {self.index} (pid {self.pid})"
            if self.pid
            else f"{self.role} {self.index}"
        )


@dataclass(frozen=True)
class Plan:
    """What one reconcile step wants done."""

    spawn: tuple[tuple[str, int], ...]  # (role, index) of new slots
    retire: tuple[Child, ...]  # children to stop (or drop, when in BACKOFF)


def finished(child: Child, code: int | None, flags: int) -> bool:
    """A producer that exited 0 after marking its source exhausted: its work is done, so it
    is not restarted (any other exit of any child is)."""
    return child.role == Role.PRODUCER and code == EXIT_OK and bool(flags & FLAG_FINISHED)


def failed_start(child: Child, now: float) -> bool:
    return not child.ready_at or now - child.started_at < STABLE_AFTER


def reconcile(
    children: Iterable[Child], wanted: dict[Role, int], generation: dict[Role, int]
) -> Plan:
    """Make "running" match "wanted" for each role.

    Children of an older generation stay until enough current ones run (new up before old go);
    surplus current children retire: those without a process first, then the highest slots
    first, so a shrunk pool keeps its slots 0..N-1 (spawn order is no guide: a restarted child
    is new in an old slot). A finished producer fills its slot: it is wanted, done, and must
    not be started again.
    """
    spawn: list[tuple[str, int]] = []
    retire: list[Child] = []
    children = list(children)
    active = [c for c in children if c.state is not State.STOPPING]
    for role, want in wanted.items():
        mine = [c for c in active if c.role == role]
        current = [c for c in mine if c.generation == generation[role]]
        outdated = [c for c in mine if c.generation != generation[role]]
        # A slot still held by a stopping child is not reused, so log lines stay unambiguous.
        used = {c.index for c in children if c.role == role}
        free = (i for i in range(len(used) + want + 1) if i not in used)
        spawn.extend((role, next(free)) for _ in range(want - len(current)))
        surplus = sorted(current, key=lambda c: (c.state not in IDLE, -c.index))
        retire.extend(surplus[: max(0, len(current) - want)])
        # Outdated children not serving go at once; serving ones as current ones become ready.
        serving_outdated = sorted(
            (c for c in outdated if c.state is State.RUNNING), key=lambda c: c.seq
        )
        retire.extend(c for c in outdated if c.state is not State.RUNNING)
        ready_current = sum(1 for c in current if c.state in SETTLED)
        excess = len(serving_outdated) + min(ready_current, want) - want
        retire.extend(serving_outdated[: max(0, excess)])
    return Plan(tuple(spawn), tuple(retire))


class Exit(enum.Enum):
    """What the master does about a child that exited."""

    GONE = "gone"  # it was stopping: forget it
    FATAL = "fatal"  # its handler cannot load before READY: the whole service exits 78
    ROLLBACK = "rollback"  # a reloaded config's child cannot load or keeps crashing: go back
    FINISH = "finish"  # a producer whose source is exhausted: keep its slot, never restart it
    RESTART = "restart"  # start it again after ``delay`` (BACKOFF)


@dataclass(frozen=True)
class ExitPlan:
    action: Exit
    failures: int = 0  # consecutive failed starts, counting this exit
    delay: float = 0.0  # how long to wait in BACKOFF before the restart
    crashes: int = 0  # a reload's unproven child: abnormal exits in a row, counting this one


def plan_exit(
    child: Child,
    code: int | None,
    now: float,
    *,
    ready_sent: bool,
    can_roll_back: bool,
    base: float,
    cap: float,
    flags: int = 0,
) -> ExitPlan:
    """Decide the fate of ``child`` whose process just exited with ``code`` (None: signal).

    A handler that cannot load is fatal before READY and undoes a reload after it; when there is
    nothing to undo (its module broke on disk under a running service) it is a failed start
    like any other, so it backs off instead of looping. A child a reload brought in that keeps
    crashing for any other reason before the reload has proven itself (``can_roll_back``: a
    crashing setup, a crash on its first items) undoes the reload after ROLLBACK_AFTER
    abnormal exits in a row.
    """
    if child.state is State.STOPPING:
        return ExitPlan(Exit.GONE)
    if finished(child, code, flags):
        return ExitPlan(Exit.FINISH)
    if code == EXIT_CONFIG and not child.ready_at:
        if not ready_sent:
            return ExitPlan(Exit.FATAL)
        if can_roll_back:
            return ExitPlan(Exit.ROLLBACK)
    if code == EXIT_OK and child.ready_at and not child.kill_reason:
        return ExitPlan(Exit.RESTART)  # a planned recycle (max_items)
    crashes = child.crashes + 1 if can_roll_back else 0
    if crashes >= ROLLBACK_AFTER:
        return ExitPlan(Exit.ROLLBACK, child.failures, crashes=crashes)
    if failed_start(child, now):
        failures = child.failures + 1
        return ExitPlan(Exit.RESTART, failures, backoff_delay(failures, base, cap), crashes)
    return ExitPlan(Exit.RESTART, crashes=crashes)


def all_running(children: Iterable[Child], wanted: dict[Role, int]) -> bool:
    """The initial READY: every wanted child has connected and loaded its handler (a producer
    that has already finished its source counts)."""
    children = list(children)
    return all(
        sum(1 for c in children if c.role == role and c.state in SETTLED) >= count
        for role, count in wanted.items()
    )


def roll_settled(
    children: Iterable[Child], wanted: dict[Role, int], generation: dict[Role, int]
) -> bool:
    """The children are exactly what the config asks for: no older generation left, nobody
    stopping, every wanted slot running. A reload is complete then."""
    children = list(children)
    if any(c.generation != generation[c.role] or c.state is State.STOPPING for c in children):
        return False
    return all(
        sum(1 for c in children if c.role == role and c.state in SETTLED) == count
        for role, count in wanted.items()
    )


def proven_roles(
    children: Iterable[Child],
    generation: dict[Role, int],
    previous_generation: dict[Role, int],
    done: dict[Child, int],
) -> set[Role]:
    """Roles whose children a reload brought in have proven themselves: one of them handled an
    item (``done``: each child's count of items done). Until then the reload can be undone,
    so new code that crashes on its first items sends the service back to the config that
    worked. A role the reload did not change, or with no such children, has nothing to prove.
    """
    children = list(children)
    unproven = set()
    for role, current in generation.items():
        if current == previous_generation.get(role):
            continue
        new = [c for c in children if c.role == role and c.generation == current]
        if new and not any(done.get(c, 0) > 0 for c in new):
            unproven.add(role)
    return set(generation) - unproven


def roll_stuck(children: Iterable[Child], generation: dict[Role, int]) -> bool:
    """A child of the current generation is backing off: a reload cannot complete soon, and
    holding ``systemctl reload`` would not help (the older children keep serving meanwhile)."""
    return any(c.state is State.BACKOFF and c.generation == generation[c.role] for c in children)


def next_deadline(children: Iterable[Child]) -> float | None:
    """The earliest moment a child needs the master: a restart after backoff or a stop
    deadline; the loop sleeps no longer than that."""
    times = [c.restart_at for c in children if c.state is State.BACKOFF] + [
        c.stop_deadline for c in children if c.state is State.STOPPING
    ]
    return min(times, default=None)


def overdue(
    child: Child,
    heartbeat: float,
    busy_since: float,
    now: float,
    timeout: float | None,
    heartbeat_timeout: float,
    waiting_on_redis: bool = False,
    beats_while_busy: bool = False,
) -> str:
    """Why ``child`` must be killed now, or "" when it is fine. A starting child that is
    waiting out a Redis outage (and heartbeats meanwhile) is no failed start: restarting it
    would not bring Redis back. A child that runs one item at a time heartbeats between items
    only, so its heartbeat is judged while it is idle; one that ``beats_while_busy`` (items in
    slots of their own, the heartbeat from its main loop) is judged always."""
    if child.state in IDLE or child.kill_reason:
        return ""
    if busy_since and timeout is not None and now - busy_since > timeout + TIMEOUT_GRACE:
        return f"item running for {now - busy_since:.1f}s, past timeout {timeout:g}s"
    if child.state is State.STARTING:
        if waiting_on_redis and now - heartbeat <= heartbeat_timeout:
            return ""
        if now - child.started_at > START_TIMEOUT:
            return f"not ready after {START_TIMEOUT:g}s"
        return ""
    if (beats_while_busy or not busy_since) and now - heartbeat > heartbeat_timeout:
        return f"no heartbeat for {now - heartbeat:.1f}s"
    return ""


def keeps_lease(
    child: Child,
    heartbeat: float,
    busy_since: float,
    now: float,
    timeout: float | None,
    heartbeat_timeout: float,
    beats_while_busy: bool = False,
) -> bool:
    """Whether the master renews ``child``'s lease: only while it serves and ``overdue`` finds
    nothing to kill it for, so a hung child never holds its items for good."""
    if child.state not in (State.RUNNING, State.STOPPING) or not child.pid or child.kill_reason:
        return False
    return not overdue(
        child,
        heartbeat,
        busy_since,
        now,
        timeout,
        heartbeat_timeout,
        beats_while_busy=beats_while_busy,
    )


def heartbeat_timeout(lease: float) -> float:
    return max(HEARTBEAT_MIN, lease / 2)


def describe_exit(status: int) -> tuple[str, int | None, int | None]:
    """(text, exit code, signal) of a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal_name(sig)}", None, sig
    code = os.waitstatus_to_exitcode(status)
    return f"exited with status {code}", code, None
