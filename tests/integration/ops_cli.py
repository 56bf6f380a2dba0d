"""Running the operator commands as a user does: `python -m goodsd ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def goodsd(
    config: Path | str | None, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one command to the end; output captured as text."""
    argv = [sys.executable, "-m", "goodsd", *args]
    if config is not None:
        argv += ["-c", str(config)]
    done = subprocess.run(
        argv,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "GOODSD_CONFIG"},
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    """Failed with ``code`` and one line `goodsd: ...` naming ``parts``; no traceback."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("goodsd: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
