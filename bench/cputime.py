"""CPU time of processes and of the whole machine, read from /proc (Linux only).

The benchmarks divide these by the items handled in a window to get CPU per item, and compare
what their own processes used with what the whole machine did, to show how much other load
was running meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# /proc/stat counts in clock ticks of this many per second (USER_HZ, 100 on Linux).
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """A process whose CPU time was asked for no longer exists."""


def process_seconds(pid: int) -> float:
    """Seconds the process ``pid`` has spent on a CPU so far, all its threads together.

    Read from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds, exact), not from the
    tick-counted ``/proc/<pid>/stat``, which is 10 ms coarse. A thread that ends between
    listing and reading counts as 0. Raises ProcessGone when ``pid`` has exited.
    """
    try:
        threads = list((PROC / str(pid) / "task").iterdir())
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} has exited") from None
    nanoseconds = 0
    for thread in threads:
        try:
            nanoseconds += int((thread / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue
    return nanoseconds / 1e9


def processes_seconds(pids: Iterable[int]) -> float:
    """Seconds on CPU of all of ``pids`` together; raises ProcessGone if one has exited."""
    return sum(process_seconds(pid) for pid in pids)


@dataclass(frozen=True)
class MachineCpu:
    """The whole machine's CPU time since boot, in seconds summed over all CPUs."""

    busy: float  # user, nice, system, irq and softirq: every process and the kernel
    steal: float  # time the hypervisor gave this VM's CPUs to someone else
    idle: float  # idle and iowait


def machine_seconds() -> MachineCpu:
    """The first line of /proc/stat (``cpu  user nice system idle iowait irq softirq steal
    ...``), in seconds. Guest time is already inside user time, so it is not added again."""
    fields = (PROC / "stat").read_text().splitlines()[0].split()
    user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return MachineCpu(
        busy=(user + nice + system + irq + softirq) / TICKS_PER_SECOND,
        steal=steal / TICKS_PER_SECOND,
        idle=(idle + iowait) / TICKS_PER_SECOND,
    )


def descendants(pid: int) -> list[int]:
    """The pids below ``pid``: its children, theirs, and so on (from
    ``/proc/<pid>/task/<tid>/children``). A process that exits meanwhile is left out with its
    subtree; [] when ``pid`` itself has exited."""
    found: list[int] = []
    try:
        threads = list((PROC / str(pid) / "task").iterdir())
    except FileNotFoundError:
        return found
    for thread in threads:
        try:
            children = [int(child) for child in (thread / "children").read_text().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found
