"""Logging to stderr: plain text, JSON lines, and journald priority prefixes when stderr is
the journal, so ``journalctl -p err`` works. Every line names the process that wrote it.

A daemon detached without a log file (``goodsd run --detach``) logs to syslog instead, since its
stderr is gone; the syslog daemon stamps time and priority itself."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Mapping

# Where logs go (``setup``'s target): stderr, or the local syslog socket.
STDERR = "stderr"
SYSLOG = "syslog"
SYSLOG_SOCKET = "/dev/log"

# logging level -> syslog priority, for journald's "<N>" line prefix
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_journal(environ: Mapping[str, str], stream: object = sys.stderr) -> bool:
    """True when stderr is the very stream systemd connected to the journal."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return bool(value) and f"{st.st_dev}" == device and f"{st.st_ino}" == inode


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


class TextFormatter(logging.Formatter):
    def __init__(self, proc: str, journal: bool, stamp: bool = True) -> None:
        super().__init__()
        self.proc = proc
        self.journal = journal
        self.stamp = stamp and not journal  # journald and syslog stamp their own time

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        line = f"{record.levelname.lower()} [{self.proc}] {message}"
        if self.journal:
            # a prefix per line keeps the lines of a traceback at their level
            prefix = f"<{priority(record.levelno)}>"
            return "\n".join(prefix + part for part in line.split("\n"))
        if not self.stamp:
            return line
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d} {line}"


class JsonFormatter(logging.Formatter):
    def __init__(self, proc: str, journal: bool) -> None:
        super().__init__()
        self.proc = proc
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "proc": self.proc,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = json.dumps(entry, ensure_ascii=False)
        return f"<{priority(record.levelno)}>{line}" if self.journal else line


def setup(
    level: str,
    fmt: str,
    proc: str,
    environ: Mapping[str, str] = os.environ,
    target: str = STDERR,
) -> None:
    """(Re)configure the root logger; called in the master and again in each child."""
    handler: logging.Handler
    if target == SYSLOG:
        handler = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.ident = f"goodsd[{os.getpid()}]: "
        text = TextFormatter(proc, journal=False, stamp=False)
        handler.setFormatter(JsonFormatter(proc, journal=False) if fmt == "json" else text)
    else:
        journal = under_journal(environ)
        formatter_cls = JsonFormatter if fmt == "json" else TextFormatter
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter_cls(proc, journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()  # e.g. the parent's syslog socket in a child, which opened its own
    root.addHandler(handler)
    root.setLevel(level.upper())
