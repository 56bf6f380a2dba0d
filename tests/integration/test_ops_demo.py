"""goodsd demo: a private Redis and a real master with consumers, a live view, and nothing left
running after Ctrl-C. Runs with --producers 0 (the demo feeds the queue itself)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ops_cli import assert_one_line_error, goodsd
from support import wait_for


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_demo_runs_and_cleans_up(tmp_path):
    # Given the demo started from a shell, its view going to a file
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "goodsd", "demo", "--producers", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # When it has run for a while
        def config_path() -> str | None:
            found = re.search(r"goodsd status -c (\S+)", out_path.read_text())
            return found.group(1) if found else None

        config = wait_for(config_path, 15, "the demo's config path")
        workdir = str(Path(config).parent)

        def working() -> dict | None:
            result = goodsd(config, "status", "--json")
            view = json.loads(result.stdout) if result.returncode == 0 else None
            ok = view and view["totals"]["done"] > 0 and view["totals"]["failed"] > 0
            # (the demo feeds items before its master is ready: a consumer may still be starting)
            return view if ok and len(view["consumers"]) == 4 else None

        view = wait_for(working, 20, "items done and failures, four consumers up")
        # Then a master with four consumers works the queue, some items fail and are retried,
        # and the other commands work against the demo's Redis
        assert len(view["masters"]) == 1
        assert len(view["consumers"]) == 4
        assert goodsd(config, "push", "extra-good").returncode == 0
        wait_for(lambda: "latest log lines:" in out_path.read_text(), 10, "the live view")
        assert "masters: 1 live" in out_path.read_text()
        assert processes_mentioning(workdir)
        # When the user presses Ctrl-C
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    # Then redis, the master and its consumers are gone, and so is the temp dir
    assert out_path.read_text().rstrip().endswith("demo stopped; nothing left running.")
    assert processes_mentioning(workdir) == []
    assert not os.path.exists(workdir)


def test_demo_without_redis_server_says_how_to_get_it():
    result = subprocess.run(
        [sys.executable, "-m", "goodsd", "demo"],
        env={**os.environ, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert_one_line_error(
        result, 1, "redis-server was not found on PATH", "apt-get install redis-server"
    )
