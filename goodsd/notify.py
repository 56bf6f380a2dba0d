"""sd_notify for the master only: takes NOTIFY_SOCKET out of the environment so that children
(and the commands they run) can never speak for the service. Harmless outside systemd."""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

import sdnotify

# Longest the master waits to hand one message to systemd.
SEND_TIMEOUT = 0.25


class Notifier:
    """Sends READY / RELOADING / STOPPING / STATUS / WATCHDOG messages to systemd."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        if self._notifier is not None and self._notifier.socket is not None:
            # A reader that falls behind fills the datagram queue (10 messages by default),
            # and a blocking send would then freeze the master's loop: wait a little, then
            # drop the message (sdnotify swallows the timeout).
            self._notifier.socket.settimeout(SEND_TIMEOUT)
        environ.pop("NOTIFY_SOCKET", None)
        self.watchdog_interval = watchdog_interval(environ, os.getpid())
        environ.pop("WATCHDOG_USEC", None)
        environ.pop("WATCHDOG_PID", None)

    def send(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def forget(self) -> None:
        """In a forked child: close the inherited socket without a word, so that only the
        master ever speaks for the service."""
        sock = self._notifier.socket if self._notifier is not None else None
        if sock is not None:
            sock.close()
        self._notifier = None

    def ready(self, status: str) -> None:
        self.send("READY=1", status_line(status))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", status_line("reloading"))

    def stopping(self) -> None:
        self.send("STOPPING=1", status_line("stopping"))

    def status(self, text: str) -> None:
        self.send(status_line(text))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def status_line(text: str) -> str:
    """STATUS= must be one line, and ASCII: the notify library drops a whole message it cannot
    encode, which would lose the READY=1 riding with it."""
    line = " ".join(text.split())
    return "STATUS=" + line.encode("ascii", "backslashreplace").decode("ascii")


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Half of WATCHDOG_USEC in seconds, when the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC")
    owner = environ.get("WATCHDOG_PID")
    if not usec or (owner and owner != str(pid)):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
