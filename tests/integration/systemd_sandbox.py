"""A systemd sandbox for end-to-end tests: tests/systemd/sandbox.sh boots this machine's systemd
in namespaces, and Sandbox runs commands in it (systemctl, journalctl, redis-cli). Used by
test_systemd.py (goodsd installed by the README's steps) and test_deb.py (by its package).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support import wait_for

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_SH = ROOT / "tests" / "systemd" / "sandbox.sh"
# The interpreter a venv for the service is built with: the system's, never one under /root.
HOST_PYTHON = "/usr/bin/python3"
REDIS_SOCKET = "/run/redis/redis-server.sock"
# One small pinned file (shtab's wheel) that the package build downloads too.
PROBE_PINS = ROOT / "packaging" / "pins" / "docgen.txt"


def missing_prerequisite() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: the systemd sandbox creates namespaces, mounts and a cgroup"
    if not os.access(HOST_PYTHON, os.X_OK):
        return f"{HOST_PYTHON} is missing: the service's venv must use the system's Python"
    probe = subprocess.run(
        [HOST_PYTHON, "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"{HOST_PYTHON} is older than 3.11 or has no venv module"
    for tool in ("unshare", "nsenter", "setpriv", "setsid", "flock", "tar", "redis-cli"):
        if shutil.which(tool) is None:
            return f"sandbox prerequisite missing: {tool}"
    for path in ("/lib/systemd/systemd", "/lib/systemd/system/redis-server.service", "/opt"):
        if not os.path.exists(path):
            return f"sandbox prerequisite missing: {path}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "sandbox prerequisite missing: overlayfs"
    if not any(_is_cgroup2(p) for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")):
        return "sandbox prerequisite missing: cgroup2 at /sys/fs/cgroup(/unified)"
    if os.stat("/").st_dev != os.stat("/usr").st_dev:
        return "sandbox prerequisite missing: /usr is a separate mount"
    return None


def package_index_problem() -> str | None:
    """Why pip cannot download from the package index here (no network, say), or None.

    Tried on one small pinned file before anything is built, with the pip options the package
    build takes (GOODSD_PIP_OPTIONS), so that a build that fails afterwards fails its test
    instead of passing for a network problem.
    """
    options = shlex.split(os.environ.get("GOODSD_PIP_OPTIONS", ""))
    download = ("download", "--quiet", "--no-deps", "--require-hashes", *options)
    with tempfile.TemporaryDirectory(prefix="goodsd-probe-") as dest:
        probe = subprocess.run(
            [sys.executable, "-m", "pip", *download, "--dest", dest, "-r", str(PROBE_PINS)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if probe.returncode != 0:
        return f"pip cannot download from the package index:\n{probe.stderr[-1500:]}"
    return None


def _is_cgroup2(path: str) -> bool:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == path and fields[2] == "cgroup2":
            return True
    return False


class Sandbox:
    """A booted sandbox and the few things the tests do in it."""

    def __init__(self, directory: Path, journal_copy: Path) -> None:
        self.directory = directory
        self.journal_copy = journal_copy

    def up(self, venv: Path | None = None) -> None:
        """Boot it; ``venv``, a directory of the host, is bound read-only at the same path."""
        bind = {"SANDBOX_BIND": f"{venv}:{venv}:ro"} if venv else {}
        boot = subprocess.run(
            [str(SANDBOX_SH), "up", str(self.directory)],
            env={**os.environ, **bind},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if boot.returncode != 0:
            pytest.fail(f"sandbox.sh up failed:\n{boot.stdout}{boot.stderr}")

    def down(self) -> None:
        """Power off and check that nothing is left; keeps the journal in journal_copy."""
        result = subprocess.run(
            [str(SANDBOX_SH), "down", str(self.directory)],
            env={**os.environ, "SANDBOX_SAVE_JOURNAL": str(self.journal_copy)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0 and not self.directory.exists(), (
            f"sandbox.sh down left something behind:\n{result.stdout}{result.stderr}"
        )

    def run(
        self, *argv: str, stdin: str | None = None, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside; with ``check``, a failure shows its output and the journal."""
        try:
            result = self._exec(argv, stdin, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(argv)!r} did not return within {timeout:g}s\n{self.tail()}"
            ) from None
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)!r} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.tail()}"
            )
        return result

    def _exec(
        self, argv: tuple[str, ...], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SANDBOX_SH), "exec", str(self.directory), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def copy_checkout(self, path: str) -> None:
        """This checkout's files (without venv, caches, build output) under ``path``."""
        self.run("mkdir", "-p", path)
        skip = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache")
        pack = subprocess.Popen(
            ["tar", "-C", str(ROOT), *(f"--exclude={s}" for s in skip), "-cf", "-", "."],
            stdout=subprocess.PIPE,
        )
        unpack = subprocess.run(
            [str(SANDBOX_SH), "exec", str(self.directory), "tar", "-C", path, "-xf", "-"],
            stdin=pack.stdout,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert pack.stdout is not None
        pack.stdout.close()
        assert pack.wait(timeout=60) == 0 and unpack.returncode == 0, unpack.stderr

    def copy(self, source: Path, path: str) -> None:
        subprocess.run(
            [str(SANDBOX_SH), "cp", str(self.directory), str(source), path],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def write(self, path: str, text: str, group: str = "goodsd", mode: str = "0640") -> None:
        """Write a file inside (parents created), owned by root:``group`` with ``mode``."""
        self.run(
            "sh",
            "-c",
            'mkdir -p "$(dirname "$1")" && cat > "$1" && chgrp "$2" "$1" && chmod "$3" "$1"',
            "sh",
            path,
            group,
            mode,
            stdin=text,
        )

    def show(self, unit: str) -> dict[str, str]:
        text = self.run(
            "systemctl",
            "show",
            unit,
            "-p",
            "ActiveState,SubState,Result,MainPID,StatusText",
        ).stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def journal(self, unit: str, *options: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, *options).stdout

    def journal_from_now(self) -> str:
        """A journal() option that leaves out every entry before now. (Not --after-cursor:
        journalctl 252 then shows nothing for -p.)"""
        return "--since=" + self.run("date", "+@%s.%6N").stdout.strip()

    def children(self, pid: int) -> set[int]:
        """Live (not zombie) child processes of ``pid``."""
        script = (
            "for p in $(cat /proc/$1/task/$1/children 2> /dev/null); do "
            '[ "$(sed "s/.*) //" /proc/$p/stat 2> /dev/null | cut -d" " -f1)" = Z ] || echo $p; '
            "done"
        )
        text = self.run("sh", "-c", script, "sh", str(pid)).stdout
        return {int(p) for p in text.split()}

    def alive(self, pid: int) -> bool:
        return self.run("test", "-d", f"/proc/{pid}", check=False).returncode == 0

    def redis(self, *argv: str, password: str = "", check: bool = True) -> str:
        env = [f"REDISCLI_AUTH={password}"] if password else []
        redis_cli = ("redis-cli", "-s", REDIS_SOCKET, *argv)
        return self.run("env", *env, *redis_cli, check=check).stdout.strip()

    def tail(self, lines: int = 40) -> str:
        """The end of the sandbox's journal, for failure messages."""
        argv = ("journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", str(lines))
        try:
            text = self._exec(argv, None, 15).stdout
        except subprocess.TimeoutExpired:
            text = "(journalctl timed out)\n"
        return (
            f"--- last {lines} journal lines (all of it: {self.journal_copy}, after teardown)"
            f" ---\n{text}"
        )

    def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None
