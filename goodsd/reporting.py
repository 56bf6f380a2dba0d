"""What a master tells operators: the STATUS= line, its entry in the masters registry (read by
``goodsd status``) and the snapshot the metrics exporter serves. Pure: each is made from the
children, their scoreboards and what the master knows of Redis; the master sends them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from goodsd import __version__, metrics
from goodsd.children import Child, Role, State
from goodsd.redisconn import Trouble, waiting_on
from goodsd.scoreboard import FLAG_PAUSED, FLAG_STANDBY
from goodsd.store import MasterEntry, Overview


@dataclass
class Rates:
    """Items/s over the last status interval, from the children's scoreboard counters."""

    last_total: int = 0
    last_time: float = 0.0
    retired_total: int = 0  # counts of children that are gone, so totals never go back
    per_second: float = 0.0

    def update(self, children: Iterable[Child], now: float) -> None:
        """Take the consumers' counters (items done and failed) at ``now`` (monotonic s)."""
        total = self.retired_total
        for child in children:
            if child.board is not None and child.role == Role.CONSUMER:
                reading = child.board.read()
                total += reading.done + reading.failed
        if self.last_time and now > self.last_time:
            self.per_second = max(0.0, (total - self.last_total) / (now - self.last_time))
        self.last_total, self.last_time = total, now


@dataclass(frozen=True)
class Situation:
    """What a master knows beside its children, for the STATUS= line."""

    redis_url: str  # shown (without secrets) while the master's own Redis calls fail
    trouble: Trouble | None  # the master's own trouble with Redis, if any
    backlog: int | None  # the ready list's length, None when unknown
    per_second: float  # items/s handled lately
    reload_error: str  # why the last reload failed, "" when it did not


def status_text(children: list[Child], roles: Iterable[Role], now: float, seen: Situation) -> str:
    """One line: children by role and state, backlog, rate, producer paused, last error.
    ``now`` is monotonic seconds (for the time to the next restart)."""
    parts = []
    for role in roles:
        mine = [c for c in children if c.role == role]
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
    if seen.trouble is not None:
        parts.append(f"waiting for redis at {seen.redis_url}: {seen.trouble.summary}")
    elif waits := children_waiting(children):
        parts.append(f"waiting for redis ({', '.join(waits)})")
    if seen.backlog is not None or seen.trouble is None:
        parts.append(f"backlog {seen.backlog if seen.backlog is not None else '?'}")
    parts.append(f"{seen.per_second:.0f} items/s")
    if seen.reload_error:
        parts.append(f"last reload failed: {seen.reload_error}")
    return "; ".join(parts)


def children_waiting(children: Iterable[Child]) -> list[str]:
    """The kinds of Redis trouble the children wait out, from their scoreboards."""
    kinds = {waiting_on(c.board.read().flags) for c in children if c.board}
    return sorted(kind.label for kind in kinds if kind is not None)


def master_entry(
    children: Iterable[Child], *, host: str, pid: int, started: float, seen: float
) -> MasterEntry:
    """This master's entry in the masters registry: who it is (``started`` and ``seen`` are
    wall-clock seconds), how many of its children run, by role, and how many items each of
    its consumers runs now (from their scoreboards)."""
    children = list(children)
    items = {
        c.identity: len(c.board.read().running)
        for c in children
        if c.role == Role.CONSUMER and c.board is not None and c.identity
    }

    def running(role: Role) -> int:
        return sum(1 for c in children if c.role == role and c.state is State.RUNNING)

    return MasterEntry(
        host=host,
        pid=pid,
        started=round(started, 3),
        seen=round(seen, 3),
        version=__version__,
        consumers=running(Role.CONSUMER),
        producers=running(Role.PRODUCER),
        running=items,
    )


def metrics_snapshot(
    children: Iterable[Child],
    *,
    queue: str,
    overview: Overview | None,
    restarts: int,
    reload_ok: bool,
) -> metrics.Snapshot:
    """What the exporter serves until the next one: the queue's ``overview`` (None when Redis
    did not answer), children by role and state, restarts, whether a producer is paused."""
    counts = {(role, state.value): 0 for role in Role for state in State}
    paused = False
    for child in children:
        counts[(child.role, child.state.value)] += 1
        if child.role == Role.PRODUCER and child.board is not None:
            paused = paused or bool(child.board.read().flags & FLAG_PAUSED)
    return metrics.Snapshot(
        queue=queue,
        overview=overview,
        children=tuple((role, state, n) for (role, state), n in counts.items()),
        restarts=restarts,
        producer_paused=paused,
        reload_ok=reload_ok,
    )
