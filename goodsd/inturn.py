"""Hosts asked in turn where something is: Sentinel's primary, the Cluster node serving a slot.

A URL may name up to 64 hosts (goodsd.redisurl.MAX_NODES), and a host that is silent (a
firewall that drops packets, a process stopped with SIGSTOP) costs a whole timeout before the
next is asked. Asked all in one go, silent hosts would hold a caller for minutes: the master's
loop (its watchdog, reaping, a reload's check) included. So one lookup by a daemon's process
asks hosts only until its budget is spent, and ``AskingOrder`` puts the hosts that failed
last, so that the next lookup, after the caller's growing delay, begins with hosts not yet
tried. A one-shot command has no next lookup: it gives an endless budget and asks every host.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# How long a host asked may take to connect, and then to answer, in seconds.
LOOKUP_TIMEOUT = 2.0
# How long one lookup goes on asking further hosts, in seconds: room for one silent host (one
# timeout, when its name gives one address) and the next, so that a single silent host never
# fails a lookup. The host asked last may take its own timeouts beyond it.
LOOKUP_BUDGET = 2 * LOOKUP_TIMEOUT


def within_budget(
    hosts: Sequence[T], budget: float, clock: Callable[[], float] = time.monotonic
) -> Iterator[T]:
    """``hosts`` in order while ``budget`` seconds have not passed since the first was given;
    the first is always given. Seconds are ``clock``'s (monotonic)."""
    deadline = clock() + budget
    for index, host in enumerate(hosts):
        if index and clock() >= deadline:
            return
        yield host


class AskingOrder(Generic[T]):
    """The order to ask hosts in: those not known to be silent first, in the order given, then
    those that were, the one silent longest ago first. Only silence (a timeout, a refused or
    broken connection) costs a lookup time: a host that answers anything, even "no primary",
    is no reason to ask it later. Hosts compare by equality. Not thread-safe: its owner
    serialises lookups."""

    def __init__(self) -> None:
        self.failed: list[T] = []  # the hosts that were silent, the oldest first

    def of(self, hosts: Sequence[T]) -> list[T]:
        """``hosts`` in the order to ask them (forgetting hosts no longer among them)."""
        self.failed = [h for h in self.failed if h in hosts]
        return [h for h in hosts if h not in self.failed] + self.failed

    def note_failure(self, host: T) -> None:
        """``host`` did not answer: ask it after the others."""
        if host in self.failed:
            self.failed.remove(host)
        self.failed.append(host)

    def note_answer(self, host: T) -> None:
        """``host`` answered: it is no longer known to be silent."""
        if host in self.failed:
            self.failed.remove(host)
