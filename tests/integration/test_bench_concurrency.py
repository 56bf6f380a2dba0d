"""bench/concurrency.py runs goodsd's rows on any goodsd, with or without
`consumers.concurrency`: a goodsd that rejects the key gets "n/a" rows, not a failed run; the
rows it can run print a median, its range, the ratio to K=1 and CPU per item. The peers'
rows need their own virtualenv (installed from the network), so they are left out here."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_for

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
# A tiny run: goodsd only, 1 ms handlers, K 1 and 10, one short window each.
TINY = ["--designs", "goodsd", "--runs", "1", "--window", "0.2", "--sleeps", "1", "--k", "1,10"]
NUMBER = r"[\d,]+(?:\.\d+)?"


@pytest.fixture(scope="module")
def tiny_run() -> str:
    """The output of one tiny run (it takes a few seconds), shared by the checks below."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "concurrency.py"), *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def row(output: str, kind: str, k: int) -> str:
    """The table row of goodsd with handler ``kind`` at K=``k``, 1 ms sleep."""
    for line in output.splitlines():
        if line.split()[:4] == ["goodsd", kind, "1ms", str(k)]:
            return line
    raise AssertionError(f"no row for goodsd {kind} K={k} in:\n{output}")


def test_says_where_what_and_how_it_counted(tiny_run: str) -> None:
    # Then the machine, its load before and after and the method are printed with the figures
    assert re.search(rf"machine: {os.cpu_count()} CPUs \(\d+ usable", tiny_run), tiny_run
    assert re.search(rf"load average .*: {NUMBER} {NUMBER} {NUMBER} before, ", tiny_run)
    assert re.search(r"method: 1 runs of each row, .* 0\.2 s window", tiny_run), tiny_run
    # And the header says every design does the same work, each counted by its own records
    assert "every handler only sleeps; counted from each design's own bookkeeping" in tiny_run


def test_k1_threads_row_has_a_median_its_range_and_cpu_per_item(tiny_run: str) -> None:
    # Given today's row: a plain handler, no concurrency key
    fields = row(tiny_run, "threads", 1).split()
    rate, (low, high), ratio = fields[4], fields[5].strip("()").split("-"), fields[6]
    # Then it gives the median items/s within the range of its runs, and is its own baseline
    value = [float(x.replace(",", "")) for x in (rate, low, high)]
    assert 0 < value[1] <= value[0] <= value[2], fields
    assert ratio == "1.00", fields
    # And CPU microseconds per item of goodsd's processes and of Redis, and the other load
    design_us, redis_us, other = (float(x) for x in fields[7:10])
    assert design_us > 0 and redis_us > 0 and other >= 0, fields


@pytest.mark.parametrize(("kind", "k"), [("threads", 10), ("async", 1), ("async", 10)])
def test_rows_that_set_concurrency_run_or_say_why_not(tiny_run: str, kind: str, k: int) -> None:
    # Given a row whose config carries consumers.concurrency
    line = row(tiny_run, kind, k)
    # Then it either has figures (a goodsd with concurrency) or says it has none
    assert "n/a (no concurrency support)" in line or re.search(
        rf"\s{NUMBER}\s+\({NUMBER}-{NUMBER}\)\s+{NUMBER}\s", line
    ), line


def test_descendants_are_found_below_a_process() -> None:
    spec = importlib.util.spec_from_file_location("bench_cputime", BENCH / "cputime.py")
    assert spec is not None and spec.loader is not None
    cputime = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cputime  # dataclasses look their module up there
    spec.loader.exec_module(cputime)
    # Given a shell whose child has a child of its own
    shell = subprocess.Popen(["sh", "-c", "sh -c 'sleep 60 & wait' & wait"], start_new_session=True)
    try:
        # Then both are found below the shell, and nothing is below a process without children
        def below() -> list[int]:
            pids = cputime.descendants(shell.pid)
            return pids if len(pids) == 2 else []

        found = wait_for(below, what="the shell's child and grandchild")
        assert shell.pid not in found
        assert cputime.descendants(found[-1]) == []
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    # And an ended process has none
    assert cputime.descendants(shell.pid) == []


def test_slot_memory_prints_a_cost_per_slot_for_threads_and_tasks() -> None:
    # When bench/slot_memory.py runs a small measurement
    done = subprocess.run(
        [sys.executable, str(BENCH / "slot_memory.py"), "--slots", "50", "--runs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Then it prints KiB per slot, resident and address space, for each kind
    for kind in ("threads", "tasks"):
        assert re.search(
            rf"^\| {kind} \| -?{NUMBER} \(.+\) \| -?{NUMBER} \(.+\) \|$", done.stdout, re.M
        ), done.stdout
