"""Memory per slot of a consumer at `consumers.concurrency` K: what one more item in flight
costs a worker process, for thread slots (a plain `def` handler) and task slots (an
`async def` handler).

Each measurement runs in a fresh Python process: it makes the scoreboard and, for tasks, the
event loop serving in its thread, reads its resident memory (VmRSS) and address space (VmSize)
from /proc/self/status, then starts `--slots` items in goodsd's own slots (goodsd.slots), each
handler waiting (a thread on an Event, a task in `asyncio.sleep`) so that every slot is busy
at once, waits until all are, and reads them again. The difference divided by the slots is the
cost of a slot with a trivial handler; whatever a handler keeps per item comes on top. Each
kind runs `--runs` times; the median and the range are printed.

Run: python bench/slot_memory.py [--slots N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Runnable from a plain checkout: make the goodsd package importable without installing it.
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

from goodsd.eventloop import EventLoop  # noqa: E402
from goodsd.forkguard import ForkGuard  # noqa: E402
from goodsd.scoreboard import Scoreboard  # noqa: E402
from goodsd.slots import Outcome, TaskSlots, ThreadSlots  # noqa: E402
from goodsd.store import Delivery  # noqa: E402

KINDS = ("threads", "tasks")
START_TIMEOUT = 60.0  # seconds for every slot to be busy
KIB = 1024


def memory() -> tuple[int, int]:
    """(resident, address space) of this process in bytes, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmSize"):
            fields[name] = int(value.split()[0]) * KIB  # the kernel writes "<n> kB"
    return fields["VmRSS"], fields["VmSize"]


def measure(kind: str, slots: int) -> tuple[float, float]:
    """In this process: (resident, address space) bytes per busy slot of ``kind``."""
    board, guard = Scoreboard(slots), ForkGuard()
    started = 0  # items whose handler runs; counted under ``lock`` (threads) or on the loop
    lock = threading.Lock()

    def report(outcomes: list[Outcome]) -> None:
        raise AssertionError(f"no item may end while measured: {outcomes}")

    def wait_in_thread(raw: bytes) -> None:
        nonlocal started
        with lock:
            started += 1
        threading.Event().wait()

    async def wait_in_task(raw: bytes) -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(3600)

    event_loop = EventLoop(3600.0)
    if kind == "tasks":
        event_loop.serve()  # the loop and its thread are there at any K: not a slot's cost
    before = memory()
    made: ThreadSlots | TaskSlots
    if kind == "threads":
        made = ThreadSlots(slots, wait_in_thread, board, guard, report)
    else:
        made = TaskSlots(slots, wait_in_task, event_loop, board, guard, report)
    made.start([Delivery(b"%d" % n, b"%d" % n, None) for n in range(slots)])
    deadline = time.monotonic() + START_TIMEOUT
    while started < slots:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {started} of {slots} {kind} started in {START_TIMEOUT:g}s")
        time.sleep(0.01)
    after = memory()
    return (after[0] - before[0]) / slots, (after[1] - before[1]) / slots


def run_child(kind: str, slots: int) -> tuple[float, float]:
    """``measure`` in a fresh interpreter (what one run leaves behind must not count in the
    next)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--slots", str(slots)],
        capture_output=True,
        text=True,
        check=True,
        timeout=START_TIMEOUT * 2,
    )
    resident, space = json.loads(done.stdout)
    return resident, space


def spread(values: Sequence[float]) -> str:
    """Median (range) of byte counts, in KiB."""
    low, high = min(values) / KIB, max(values) / KIB
    return f"{statistics.median(values) / KIB:.1f} ({low:.1f}-{high:.1f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--slots", type=int, default=1000, help="busy slots (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default 5)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.slots)))
        sys.stdout.flush()
        os._exit(0)  # the slots wait for ever: end without waiting for them
    print(f"Python {sys.version.split()[0]}; {args.slots} busy slots, {args.runs} runs each")
    print("| KiB per slot, median (range) | resident | address space |")
    print("|---|---|---|")
    for kind in KINDS:
        runs = [run_child(kind, args.slots) for _ in range(args.runs)]
        resident = spread([run[0] for run in runs])
        space = spread([run[1] for run in runs])
        print(f"| {kind} | {resident} | {space} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
