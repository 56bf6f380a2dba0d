"""Facts about processes on this host, used to tell a live consumer from a recycled pid."""

from __future__ import annotations

import ctypes
import os
import socket

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def hostname() -> str:
    return socket.gethostname()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    None when no such process runs (or only its zombie). Together with the pid it names one
    process for good. Other errors (no permission, no file descriptors) raise: they say
    nothing about the process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def process_alive(pid: int, start: int | None) -> bool:
    """True while that very process runs; also when it cannot be told (better to leave its
    items to the lease than to requeue what a live process is working on)."""
    if start is None:
        return False
    try:
        return process_start(pid) == start
    except OSError:
        return True


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies, however the parent
    dies (even SIGKILL): no orphan goes on working unsupervised."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def pid_namespace() -> str:
    """This process's pid namespace and boot: pids can be judged alive or dead only by a
    process that shares both."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""
