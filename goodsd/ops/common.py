"""What every operator command shares: one error type for the CLI edge, the Redis connection,
and the few text-layout helpers the human views use."""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO
from urllib.parse import urlsplit

import redis

from goodsd.config import Config, secret_parameter
from goodsd.redisconn import Kind, PasswordError, classify, connect
from goodsd.store import Views


class OpsError(Exception):
    """A command cannot do its job; the CLI prints ``goodsd: <message>`` and exits 1."""


def open_queue(cfg: Config, name: str) -> Views:
    """A connection of its own, named so `CLIENT LIST` shows who is there. A command runs
    once: a Sentinel or Cluster lookup asks every host the URL names, not only those a
    daemon's time budget allows."""
    try:
        client = connect(cfg.redis, f"goodsd-{name}", queue=cfg.queue, lookup_budget=math.inf)
    except PasswordError as exc:
        raise OpsError(str(exc)) from None
    return Views(client, cfg.queue, cfg.redis.wait_replicas)


@contextlib.contextmanager
def redis_errors(cfg: Config) -> Iterator[None]:
    """Turn redis-py's exceptions into one line that names the server and, for Redis trouble
    (``classify``), its kind: "cannot reach redis at <url>: ...", "redis at <url>: out of
    memory (...)"."""
    try:
        yield
    except redis.RedisError as exc:
        where = display_url(cfg.redis.url)
        trouble = classify(exc)
        if trouble is None:
            raise OpsError(f"redis at {where}: {exc}") from None
        if trouble.kind is Kind.UNREACHABLE:
            raise OpsError(f"cannot reach redis at {where}: {exc}") from None
        raise OpsError(f"redis at {where}: {trouble.summary}") from None


def display_url(url: str) -> str:
    """A Redis URL to show (status, check, errors), with every secret replaced by ``***``: the
    whole user-info part (up to the last ``@`` of the host part, where urllib and redis-py end
    it), the value of each query parameter that holds a secret (see
    ``goodsd.config.secret_parameter``) and any fragment. Never raises: a URL urllib cannot
    split shows as its scheme only."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition("://")[0] + "://***"
    _, at, host = parts.netloc.rpartition("@")
    shown = f"{parts.scheme}://{'***@' if at else ''}{host}{parts.path}"
    if parts.query:
        shown += "?" + "&".join(_hide_secret(pair) for pair in parts.query.split("&"))
    if parts.fragment:  # redis-py cuts it off, so it may be the rest of a password
        shown += "#***"
    return shown


def _hide_secret(pair: str) -> str:
    name, _, _ = pair.partition("=")
    return f"{name}=***" if secret_parameter(name) else pair


# -- text layout ---------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A short human duration: 0.4s, 12s, 3m05s, 2h10m, 4d03h."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  "
) -> list[str]:
    """Aligned columns: numbers to the right, text to the left; the last column is not padded
    so long errors do not drag trailing spaces."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    out = []
    for line in cells:
        parts = []
        for i, cell in enumerate(line):
            last = i == len(line) - 1
            if numeric[i]:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if last else cell.ljust(widths[i]))
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(width - 3, 0)] + "..."


class Screen:
    """Shows successive frames: redrawn in place on a terminal, one after another otherwise
    (so a log file or a pipe gets every frame, readable)."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def width(self) -> int:
        return shutil.get_terminal_size((100, 40)).columns if self.tty else 10_000

    def show(self, text: str) -> None:
        if self.tty:
            lines = [clip(line, self.width()) for line in text.splitlines()]
            # home, draw, clear what an earlier, longer frame left below
            self.stream.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\n\x1b[J")
        else:
            self.stream.write(text.rstrip("\n") + "\n\n")
        self.stream.flush()

    def start(self) -> None:
        if self.tty:
            self.stream.write("\x1b[2J\x1b[?25l")  # clear once, hide the cursor

    def end(self) -> None:
        if self.tty:
            self.stream.write("\x1b[?25h")  # cursor back
            self.stream.flush()
