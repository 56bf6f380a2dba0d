"""The master's child records and every decision about them, as pure functions of state and
``now``: what to spawn, what to retire, when to restart, whom to kill. No system calls here."""

from __future__ import annotations

import enum
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from goodsd.scoreboard import FLAG_FINISHED, Scoreboard

# Exit codes of a child (and of the master, where they mean the same).
EXIT_OK = 0  # clean stop, or a planned recycle (max_items): restart without backoff
EXIT_FAILURE = 1  # anything unexpected
EXIT_CONFIG = 78  # handler/source cannot be loaded: restarting cannot help (EX_CONFIG)

# A child that dies before reporting ready or within this many seconds is a failed start.
STABLE_AFTER = 5.0
# A child's current item may run this long past consumers.timeout before the master kills it;
# command handlers enforce the timeout themselves first.
TIMEOUT_GRACE = 5.0
# A ready child whose scoreboard heartbeat is older than this (while not in an item) is hung.
HEARTBEAT_MIN = 10.0
# A child that has not reported ready within this long is killed as a failed start.
START_TIMEOUT = 120.0


class State(enum.Enum):
    STARTING = "starting"  # forked, not yet connected with its handler loaded
    RUNNING = "running"  # reported ready
    BACKOFF = "backoff"  # no process: waiting for restart_at after failed starts
    STOPPING = "stopping"  # SIGTERM sent: finishing its current item
    FINISHED = "finished"  # a producer whose source is exhausted: no process, not restarted


# States without a process; and states that count as "done starting" for the role's slot.
IDLE = frozenset({State.BACKOFF, State.FINISHED})
SETTLED = frozenset({State.RUNNING, State.FINISHED})


@dataclass
class Child:
    """One supervised slot of a role; its process comes and goes across restarts."""

    role: str  # "consumer" or "producer"
    index: int  # slot number within the role, shown in logs and STATUS
    seq: int  # spawn order of the current process; surplus retires lowest first
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
    board: Scoreboard | None = None  # its shared liveness record
    events: int = -1  # read end of its event pipe, -1 when closed

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


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """``base`` after the first failure, doubling with each further one, never above ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 32))


def finished(child: Child, code: int | None, flags: int) -> bool:
    """A producer that exited 0 after marking its source exhausted: its work is done, so it
    is not restarted (any other exit of any child is)."""
    return child.role == "producer" and code == EXIT_OK and bool(flags & FLAG_FINISHED)


def failed_start(child: Child, now: float) -> bool:
    return not child.ready_at or now - child.started_at < STABLE_AFTER


def reconcile(
    children: Iterable[Child], wanted: dict[str, int], generation: dict[str, int]
) -> Plan:
    """Make "running" match "wanted" for each role.

    Children of an older generation stay until enough current ones run (new up before old go);
    surplus current children retire: those without a process first, then oldest first. A
    finished producer fills its slot: it is wanted, done, and must not be started again.
    """
    spawn: list[tuple[str, int]] = []
    retire: list[Child] = []
    active = [c for c in children if c.state is not State.STOPPING]
    for role, want in wanted.items():
        mine = [c for c in active if c.role == role]
        current = [c for c in mine if c.generation == generation[role]]
        outdated = [c for c in mine if c.generation != generation[role]]
        used = {c.index for c in mine}
        free = (i for i in range(len(mine) + want + 1) if i not in used)
        spawn.extend((role, next(free)) for _ in range(want - len(current)))
        surplus = sorted(current, key=lambda c: (c.state not in IDLE, c.seq))
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


def overdue(
    child: Child,
    heartbeat: float,
    busy_since: float,
    now: float,
    timeout: float | None,
    heartbeat_timeout: float,
) -> str:
    """Why ``child`` must be killed now, or "" when it is fine."""
    if child.state in IDLE or child.kill_reason:
        return ""
    if busy_since and timeout is not None and now - busy_since > timeout + TIMEOUT_GRACE:
        return f"item running for {now - busy_since:.1f}s, past timeout {timeout:g}s"
    if child.state is State.STARTING:
        if now - child.started_at > START_TIMEOUT:
            return f"not ready after {START_TIMEOUT:g}s"
        return ""
    if not busy_since and now - heartbeat > heartbeat_timeout:
        return f"no heartbeat for {now - heartbeat:.1f}s"
    return ""


def heartbeat_timeout(lease: float) -> float:
    return max(HEARTBEAT_MIN, lease / 2)


def describe_exit(status: int) -> tuple[str, int | None, int | None]:
    """(text, exit code, signal) of a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}", None, sig
    code = os.waitstatus_to_exitcode(status)
    return f"exited with status {code}", code, None
