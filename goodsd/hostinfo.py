"""Facts about processes on this host (is a pid still that process, what is a signal called),
and the one way goodsd ties a process to its parent's life.

A process of goodsd dies with its parent through the parent-death signal. Two cases, one rule
each: a child goodsd forks to run Python sets it itself (``set_parent_death_signal``), then
checks that its parent still runs; a command goodsd starts gets it from util-linux's
``setpriv`` (``parent_death_command``), so nothing runs between fork and exec but the C code
of ``subprocess``, which is what makes starting commands from a threaded process safe.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Looked up once, at import: never in a freshly forked child.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


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
    dies (even SIGKILL): no orphan goes on working unsupervised. Raises OSError if the kernel
    refuses. The parent may have died already: check ``os.getppid()`` after this."""
    if _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def parent_death_command(argv: Sequence[str], signum: int) -> list[str]:
    """``argv`` made to receive ``signum`` when the thread that starts it dies, however it dies.

    It runs through ``setpriv --pdeathsig``, which sets the signal and then execs ``argv`` in
    its own place (same pid, same parent, same process group), so the command needs no
    ``preexec_fn`` (unsafe in a process with threads). The thread that starts the command must
    outlive it: the kernel ties the signal to that thread, not to its process. A parent that
    dies between the fork and setpriv's prctl (about a millisecond) leaves the command running.
    Raises FileNotFoundError when setpriv (util-linux) is not installed."""
    return [_setpriv(), "--pdeathsig", signal_name(signum), "--", *argv]


# The util-linux program that starts commands with a parent-death signal.
SETPRIV = "setpriv"


def _setpriv() -> str:
    path = shutil.which(SETPRIV)
    if path is None:
        raise FileNotFoundError(
            errno.ENOENT, "setpriv (util-linux) not found; goodsd needs it to run commands"
        )
    return path


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; ``signal 99`` for a number Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def pid_namespace() -> str:
    """This process's pid namespace and boot: pids can be judged alive or dead only by a
    process that shares both."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""
