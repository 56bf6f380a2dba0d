"""bench/throughput.py prints figures anyone can reproduce: medians of several runs with their
range, the machine and its load, the software versions, and CPU per item of the workers and of
Redis, for goodsd, the classic design and the bare Lua loop (README "Benchmarks")."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
# A tiny run: every design, one process count and batch, two short windows each.
TINY = [
    "--quick",
    "--runs", "2",
    "--window", "0.1",
    "--processes", "1",
    "--batches", "100",
    "--backlog", "1000000",
    "--designs", "classic,bare,goodsd",
]  # fmt: skip
NUMBER = r"[\d,]+(?:\.\d+)?"


def load_cputime() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cputime", BENCH / "cputime.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run() -> str:
    """The output of one tiny run (it takes a few seconds), shared by the checks below."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def row(output: str, design: str) -> list[str]:
    """The table row of ``design`` (procs 1), split on whitespace."""
    for line in output.splitlines():
        fields = line.split()
        if fields[:2] == [design, "1"]:
            return fields
    raise AssertionError(f"no row for {design} in:\n{output}")


def test_says_where_and_with_what_it_ran(tiny_run: str) -> None:
    # Then the machine's CPUs (and those usable), its load before and after, and the versions
    # of Python, the Redis client and the server are printed with the figures
    assert re.search(rf"machine: {os.cpu_count()} CPUs \(\d+ usable", tiny_run), tiny_run
    assert re.search(rf"load average .*: {NUMBER} {NUMBER} {NUMBER} before, ", tiny_run)
    assert re.search(r"Python 3\.\d+\.\d+, redis-py \S+ .*redis-server \d+\.\d+", tiny_run)
    # And what was timed: runs, window, warm-up and backlog
    assert re.search(r"method: 2 runs of each row, .* 0\.1 s window", tiny_run), tiny_run


@pytest.mark.parametrize("design", ["classic", "bare", "goodsd"])
def test_every_row_has_a_median_its_range_and_cpu_per_item(tiny_run: str, design: str) -> None:
    # Given the row of one design
    fields = row(tiny_run, design)
    batch, rate, (low, high) = fields[2], fields[3], fields[4].strip("()").split("-")
    # Then it gives the median items/s within the range of its runs
    assert batch == ("-" if design == "classic" else "100")
    value = [float(x.replace(",", "")) for x in (rate, low, high)]
    assert 0 < value[1] <= value[0] <= value[2], fields
    # And the workers' and Redis's CPU microseconds per item, and the other load in CPUs
    workers, redis_us, other = (float(x) for x in (fields[-4], fields[-2], fields[-1]))
    assert workers > 0 and redis_us > 0 and other >= 0, fields


def test_goodsd_is_set_against_the_classic_design_and_the_bare_loop(tiny_run: str) -> None:
    # Then goodsd's row gives its ratio to classic and its fraction of the bare Lua loop
    fields = row(tiny_run, "goodsd")
    assert re.fullmatch(rf"{NUMBER}x", fields[5]), fields
    assert 0 < float(fields[6]) < 10, fields


def test_cpu_time_of_a_process_and_the_machine_grow_with_work() -> None:
    cputime = load_cputime()
    # Given readings of this process and of the machine
    process_before = cputime.process_seconds(os.getpid())
    machine_before = cputime.machine_seconds()
    # When this process burns CPU for a while
    while cputime.process_seconds(os.getpid()) - process_before < 0.05:
        sum(range(10_000))
    # Then the machine counted it too (in 10 ms ticks)
    assert cputime.machine_seconds().busy - machine_before.busy >= 0.02


def test_cpu_time_of_an_ended_process_is_an_error() -> None:
    cputime = load_cputime()
    # Given a process that has ended and been reaped
    child = subprocess.Popen(["true"])
    child.wait()
    # Then asking for its CPU time says so
    with pytest.raises(cputime.ProcessGone, match=str(child.pid)):
        cputime.process_seconds(child.pid)
