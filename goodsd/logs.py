"""Logging to stderr: plain text, JSON lines, and journald priority prefixes when stderr is
the journal, so ``journalctl -p err`` works. Every line names the process that wrote it.

Log text carries what goodsd does not trust (items, handlers' errors, a command's stderr), so
the text format shows every control character escaped (``printable``): nothing logged can
start a line of its own, pose as another process's line, or send a terminal escape sequence.
A traceback keeps its own lines; an exception's message in it is escaped like any message.
JSON lines escape by construction.

A daemon detached without a log file (``goodsd run --detach``) logs to syslog instead, since its
stderr is gone; the syslog daemon stamps time and priority itself."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping
from types import TracebackType

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


# Control characters an ASCII line may hold; beyond ASCII, str.isprintable() decides.
_ASCII_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# How many characters of an item a log line shows.
ITEM_SHOWN = 80


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` as one line that is safe to show: every character that ``str.isprintable``
    refuses (C0 and C1 controls such as newline, carriage return, escape and the 8-bit CSI;
    DEL; line and paragraph separators; bidirectional overrides, which reorder what a terminal
    shows; lone surrogates) becomes a visible escape: ``\\n``, ``\\r``, ``\\t``, ``\\x1b``,
    ``\\u2028``. Everything else is kept as it is."""
    if text.isascii():
        return _ASCII_CONTROL.sub(lambda match: _escape(match.group()), text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def show_item(item: bytes, limit: int = ITEM_SHOWN) -> str:
    """An item's bytes as readable text for a log line: UTF-8 where it is, ``\\xff`` for bytes
    that are not, control characters escaped, clipped to ``limit`` characters."""
    head = item[: limit * 4]  # no character takes more than 4 bytes: enough, whatever the size
    text = printable(head.decode("utf-8", "backslashreplace"))
    if len(text) <= limit and len(head) == len(item):
        return text
    return text[: limit - 3] + "..."


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def safe_traceback(exc_info: ExcInfo) -> str:
    """A traceback whose lines are only its own: every line of the stack escaped on its own,
    and every exception's own text (``Type: message`` and notes, for the whole chain) escaped
    into one line, so a message cannot add lines to the log."""
    formatted = traceback.TracebackException(*exc_info)
    own_text = set()
    pending, seen = [formatted], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        own_text.update(current.format_exception_only())
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += getattr(current, "exceptions", None) or []
    lines: list[str] = []
    for chunk in formatted.format():
        if chunk in own_text:
            lines.append(printable(chunk.removesuffix("\n")))
        else:
            lines += [printable(line) for line in chunk.removesuffix("\n").split("\n")]
    return "\n".join(lines)


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
        message = printable(record.getMessage())
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + safe_traceback(record.exc_info)  # type: ignore[arg-type]
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
        # Lone surrogates (undecodable bytes in a str) become \\uXXXX escapes: still valid JSON,
        # and writable by any stream or the syslog handler.
        line = json.dumps(entry, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()
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
