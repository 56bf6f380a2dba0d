"""Hosts asked in turn where something is: Sentinel's primary, the Cluster node serving a slot.

A URL may name up to 64 hosts (goodsd.redisurl.MAX_NODES), and a host that is silent (a
firewall that drops packets, a process stopped with SIGSTOP) costs a whole timeout before the
next is asked. Asked all in one go, silent hosts would hold a caller for minutes: the master's
loop (its watchdog, reaping, a reload's check) included. So one lookup asks hosts only until
its budget is spent, and the hosts that failed go to the back of the line, so that the next
lookup, after the caller's growing delay, begins with hosts not yet tried. A one-shot command
has no next lookup: it gives an endless budget and asks every host.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# How long one lookup goes on asking further hosts, in seconds. The host asked last may still
# take its own timeouts (connect, then read) beyond it.
LOOKUP_BUDGET = 2.0


def within_budget(
    hosts: Sequence[T], budget: float = LOOKUP_BUDGET, clock: Callable[[], float] = time.monotonic
) -> Iterator[T]:
    """``hosts`` in order while ``budget`` seconds have not passed since the first was given;
    the first is always given. Seconds are ``clock``'s (monotonic)."""
    deadline = clock() + budget
    for index, host in enumerate(hosts):
        if index and clock() >= deadline:
            return
        yield host


def failed_to_back(hosts: Sequence[T], failed: Sequence[T]) -> list[T]:
    """``hosts`` with those in ``failed`` moved to the end, each part in its order. Compared by
    equality."""
    return [h for h in hosts if h not in failed] + [h for h in hosts if h in failed]
