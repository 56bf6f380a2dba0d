"""How fast `goodsd push` loads a file of one million lines, against its own private Redis.

Runs the real command (`python -m goodsd push -c CONFIG < FILE`), so the figure includes the
interpreter's start. For scale it also times one LPUSH round trip per item, the way a simple
producer loop does it.

With ``--long-line``, it pushes files of one single line each instead (sizes in MB, 10**6
bytes; default 10, 50 and 200) and prints each push's time and peak resident memory, to show
that time grows linearly with the line and memory stays near one copy of it. With ``--pipe``
the file reaches the command through a pipe (`cat FILE | goodsd push`), which hands it over in
pieces of 64 KiB rather than 1 MiB.

    .venv/bin/python bench/push.py [--lines N] [--pipe]
    .venv/bin/python bench/push.py --long-line [MB ...] [--pipe]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from goodsd.localredis import LocalRedis

BASELINE_ITEMS = 50_000
LONG_LINE_MB = [10.0, 50.0, 200.0]
# The long lines are written to their files in pieces of this many bytes.
WRITE_PIECE = 1 << 20
# The lengths of the items in a list, measured inside Redis. The bench never holds a long item
# itself: a child's peak RSS, as wait4 reports it, starts from its parent's (fork copies the
# parent's memory map, and exec keeps the figure), so a large bench would inflate the push's.
ITEM_LENGTHS = """
local lengths = {}
for i, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do lengths[i] = #item end
return lengths
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument(
        "--long-line", type=float, nargs="*", metavar="MB", help="push one line of each size"
    )
    parser.add_argument("--pipe", action="store_true", help="stdin from a pipe, not the file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp, LocalRedis() as server:
        config = Path(tmp) / "goodsd.yaml"
        config.write_text(
            f"redis: {{url: '{server.url}'}}\nqueue: bench\nconsumers: {{processes: 0}}\n"
        )
        client = server.client()
        if args.long_line is None:
            many_lines(Path(tmp), config, client, args.lines, args.pipe)
        else:
            for size_mb in args.long_line or LONG_LINE_MB:
                long_line(Path(tmp), config, client, int(size_mb * 1e6), args.pipe)
    return 0


def many_lines(tmp: Path, config: Path, client: redis.Redis, lines: int, pipe: bool) -> None:
    """A file of ``lines`` short lines, then the same count (scaled) by one LPUSH per item."""
    items = tmp / "items.txt"
    items.write_text("".join(f"good{i}\n" for i in range(lines)))
    status, elapsed, _ = run_push(config, items, pipe)
    assert status == 0, f"goodsd push exited {status}"
    assert client.llen("bench") == lines
    size = items.stat().st_size / 1e6
    print(
        f"goodsd push: {lines:,} lines ({size:.1f} MB) in {elapsed:.2f}s"
        f" = {lines / elapsed:,.0f} items/s"
    )

    client.delete("bench")
    started = time.perf_counter()
    for i in range(BASELINE_ITEMS):
        client.lpush("bench", f"good{i}")
    baseline = BASELINE_ITEMS / (time.perf_counter() - started)
    print(f"one LPUSH per item (for scale): {baseline:,.0f} items/s")


def long_line(tmp: Path, config: Path, client: redis.Redis, size: int, pipe: bool) -> None:
    """One line of ``size`` bytes (and its newline): time, peak RSS, and whether it went in."""
    items = tmp / "line.txt"
    piece = bytes(range(33, 127)) * (WRITE_PIECE // 94 + 1)
    with open(items, "wb") as out:
        for start in range(0, size, WRITE_PIECE):
            out.write(piece[: min(WRITE_PIECE, size - start)])
        out.write(b"\n")
    status, elapsed, peak = run_push(config, items, pipe)
    lengths = client.eval(ITEM_LENGTHS, 1, "bench")
    client.delete("bench")
    if status == 0:
        assert lengths == [size], f"the items in Redis are not the line: lengths {lengths}"
        outcome = "pushed"
    else:
        assert lengths == [], "a refused line is in Redis"
        outcome = f"exit {status}, not pushed"
    print(
        f"goodsd push of one {size / 1e6:,.1f} MB line: {elapsed:.2f}s,"
        f" peak RSS {peak / 1e6:,.0f} MB ({outcome}{', through a pipe' if pipe else ''})"
    )
    items.unlink()


def run_push(config: Path, items: Path, pipe: bool) -> tuple[int, float, int]:
    """Run `goodsd push < items` (or `cat items | goodsd push`) to the end: its exit status,
    its wall time in seconds and its peak resident set size in bytes (from wait4, so only that
    process counts)."""
    with open(items, "rb") as file:
        started = time.perf_counter()
        cat = subprocess.Popen(["cat"], stdin=file, stdout=subprocess.PIPE) if pipe else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "goodsd", "push", "-c", str(config)],
            stdin=cat.stdout if cat else file,
            stdout=subprocess.DEVNULL,
        )
        if cat:
            cat.stdout.close()  # type: ignore[union-attr]  # push holds the read end now
        _, wait_status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        if cat:
            cat.wait()
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return proc.returncode, elapsed, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


if __name__ == "__main__":
    sys.exit(main())
