"""The Debian package, for real: built by packaging/build-deb.sh from a copy of this checkout,
installed with apt inside the systemd sandbox (tests/systemd/sandbox.sh), run against the
sandbox's Redis, reloaded, upgraded to a rebuilt package of a higher version, removed and
purged.

Needs what test_systemd.py needs (root, the sandbox's prerequisites) and the build tools of
packaging/debian/control (./dev test installs them), and a package index for the pinned
dependencies (packaging/pins/); without them it skips and says why. Whether the index can be
reached is tried first, on one small pinned file: a build that fails after that fails the test.
Marked ``systemd`` and ``deb``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from bash_completion import completion_argv, offered
from systemd_sandbox import REDIS_SOCKET, Sandbox, missing_prerequisite, package_index_problem

from goodsd import __version__, cli, docgen

pytestmark = [pytest.mark.systemd, pytest.mark.deb]

ROOT = Path(__file__).resolve().parents[2]
UNIT = "goodsd.service"
# One more pool, goodsd@NAME.service, with its own queue.
INSTANCE = "goodsd@orders.service"
# `systemctl start` blocks until READY=1; fail well before TimeoutStartSec= (90 s).
START_TIMEOUT = 30.0
# The packaging/debian/control Build-Depends, by a file each installs.
BUILD_TOOLS = {
    "dpkg-buildpackage": "/usr/bin/dpkg-buildpackage",
    "debhelper": "/usr/bin/dh",
    "python3-build": "/usr/lib/python3/dist-packages/build/__init__.py",
    "python3-venv": "/usr/lib/python3.11/ensurepip/__init__.py",
    "python3.11": "/usr/bin/python3.11",
}
# A made-up index password in the build's pip options, in an option pip takes and never
# prints: the build must not print the options either (make echoes its recipe lines).
FAKE_SECRET = f"goodsd-fake-token-{secrets.token_hex(8)}"
SECRET_OPTIONS = f"--trusted-host {FAKE_SECRET}.invalid"
# What the package bundles: the pins (name==version), and goodsd itself.
PINS = ROOT / "packaging" / "pins" / "bundle.txt"
# apt inside the sandbox: no network, nothing to ask (a changed conffile is kept).
APT = (
    "env",
    "DEBIAN_FRONTEND=noninteractive",
    "apt-get",
    "-y",
    "-q",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "APT::Sandbox::User=root",
)
# A handler that takes as long as the file DELAY says (read per item), so that the upgrade
# restarts the service in the middle of the work however long apt takes, and the rest then goes
# quickly. Under /srv: the unit hides /home and /root and has its own /tmp.
HANDLERS = "/srv/goodsd-deb-test"
DELAY = f"{HANDLERS}/delay"
SLOW_HANDLER = f"""import time
from pathlib import Path


def handle(item):
    time.sleep(float(Path({DELAY!r}).read_text()))
"""
# Redis for the sandbox: its unix socket for the group redis (as the README sets it up), no
# eviction, no final snapshot (an unwritable /var/lib/redis would keep it from stopping).
REDIS_CONF = f"""
maxmemory-policy noeviction
unixsocket {REDIS_SOCKET}
unixsocketperm 770
save ""
"""
DROPIN = "[Service]\nSupplementaryGroups=redis\n"
STATS = "goodsd:{goods2}:stats"
ORDERS_STATS = "goodsd:{orders}:stats"
BASH_COMPLETION = "/usr/share/bash-completion/completions/goodsd"


@dataclass(frozen=True)
class Packages:
    """The .deb of this checkout and one of a higher version with changed code."""

    first: Path
    first_version: str
    second: Path
    second_version: str
    # what the first build printed and logged; its pip options held FAKE_SECRET
    first_build_output: str


def missing_build_tool() -> str | None:
    for package, path in BUILD_TOOLS.items():
        if not os.path.exists(path):
            return f"build tool missing: {package} (./dev deb or ./dev test installs it)"
    return None


def build_deb(tree: Path, version: str, pip_options: str = "") -> tuple[Path, str]:
    """packaging/build-deb.sh in a copy of this checkout whose goodsd.__version__ is
    ``version``, with ``pip_options`` added to GOODSD_PIP_OPTIONS; the .deb it made, and what
    it printed and logged."""
    skip = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*skip))
    init = tree / "goodsd" / "__init__.py"
    init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"', init.read_text()))
    options = f"{os.environ.get('GOODSD_PIP_OPTIONS', '')} {pip_options}".strip()
    result = subprocess.run(
        [str(tree / "packaging" / "build-deb.sh")],
        env={**os.environ, "GOODSD_PIP_OPTIONS": options},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = tree / "build" / "deb" / "build.log"
    output = result.stdout + result.stderr + (log.read_text() if log.exists() else "")
    assert result.returncode == 0, f"build-deb.sh failed:\n{output[-4000:]}"
    (deb,) = (tree / "dist").glob(f"goodsd_{version}-1_*.deb")
    return deb, output


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    reason = missing_prerequisite() or missing_build_tool() or package_index_problem()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("deb")
    second_version = f"{__version__}.post1"
    first, first_output = build_deb(work / "first", __version__, SECRET_OPTIONS)
    second, _ = build_deb(work / "second", second_version)
    return Packages(first, __version__, second, second_version, first_output)


@pytest.fixture
def box(packages: Packages, tmp_path: Path) -> Iterator[Sandbox]:
    """A booted sandbox with Redis on its unix socket and both packages copied in."""
    sandbox = Sandbox(Path(tempfile.mkdtemp(prefix="goodsd-sbx.", dir="/var/tmp")), tmp_path / "j")
    try:
        sandbox.up()
        # A booted Debian host lets maintainer scripts start and stop services; container
        # images (this machine's may be one) forbid it with a policy-rc.d that exits 101.
        # The sandbox's copy goes (its / is an overlay: the host keeps its own).
        sandbox.run("rm", "-f", "/usr/sbin/policy-rc.d")
        sandbox.run("sh", "-c", 'cat >> "$1"', "sh", "/etc/redis/redis.conf", stdin=REDIS_CONF)
        sandbox.run("systemctl", "restart", "redis-server", timeout=START_TIMEOUT)
        sandbox.run("mkdir", "-p", "/root/debs")
        for deb in (packages.first, packages.second):
            sandbox.copy(deb, f"/root/debs/{deb.name}")
        yield sandbox
    finally:
        sandbox.down()


def config(processes: int, queue: str = "goods2") -> str:
    return yaml.safe_dump(
        {
            "redis": {"url": f"unix://{REDIS_SOCKET}"},
            "queue": queue,
            "pythonpath": [HANDLERS],
            "consumers": {"processes": processes, "handler": "slow:handle", "batch": 5},
            "supervisor": {"graceful_timeout": "10s"},
        },
        sort_keys=False,
    )


def masters(box: Sandbox) -> list[dict[str, object]]:
    return json.loads(box.run("goodsd", "status", "--json").stdout)["masters"]


def done(box: Sandbox, stats: str = STATS) -> int:
    return int(box.redis("hget", stats, "done") or 0)


def complete(box: Sandbox, *words: str) -> list[str]:
    """What the installed bash completion offers after ``words`` (the last being completed)."""
    return offered(box.run(*completion_argv(BASH_COMPLETION, *words)).stdout)


def pinned() -> list[str]:
    """The name==version lines of packaging/pins/bundle.txt."""
    return re.findall(r"^([\w.-]+==[\w.]+)", PINS.read_text(), re.M)


def bundled(box: Sandbox, version: str) -> list[str]:
    """What the installed package says it bundles, without goodsd itself (checked here)."""
    lines = box.run("cat", "/usr/share/doc/goodsd/python-packages.txt").stdout.split()
    assert f"goodsd=={version}" in lines, lines
    return sorted((line for line in lines if not line.startswith("goodsd==")), key=str.lower)


def enablement_links(box: Sandbox) -> list[str]:
    """The links of /etc/systemd/system that enable a goodsd unit."""
    found = box.run("find", "/etc/systemd/system", "-name", "goodsd*.service", "-type", "l")
    return sorted(found.stdout.split())


def test_the_build_prints_no_pip_options(packages: Packages) -> None:
    # Given a build whose GOODSD_PIP_OPTIONS held a made-up index password
    # Then neither what build-deb.sh printed nor the build log has it
    assert FAKE_SECRET not in packages.first_build_output
    # (and the log says where the options went)
    assert "GOODSD_PIP_OPTIONS, not shown" in packages.first_build_output


def test_install_run_reload_upgrade_remove_and_purge_the_package(
    box: Sandbox, packages: Packages
) -> None:
    # When the package is installed with apt, as an operator would
    box.run(*APT, "install", f"/root/debs/{packages.first.name}", timeout=120)

    # Then goodsd is on the PATH and says which version, redis-py and Python it runs
    version = box.run("goodsd", "--version").stdout.splitlines()
    assert version[0] == f"goodsd {packages.first_version}", version
    assert version[2].endswith("(/opt/goodsd/bin/python3)"), version
    # And it bundles exactly the pinned packages
    assert bundled(box, packages.first_version) == sorted(pinned(), key=str.lower)
    # And the service user exists and owns the group of the config, which is a conffile that
    # other users cannot read
    box.run("getent", "passwd", "goodsd")
    assert box.run("stat", "-c", "%U:%G %a", "/etc/goodsd.yaml").stdout.split() == [
        "root:goodsd",
        "640",
    ]
    conffiles = box.run("dpkg-query", "-W", "-f", "${Conffiles}", "goodsd").stdout
    assert "/etc/goodsd.yaml" in conffiles, conffiles
    # And the man pages, completion, units and sysusers entry are where the tools look
    for path in (
        "/usr/share/man/man1/goodsd.1.gz",
        "/usr/share/man/man5/goodsd.yaml.5.gz",
        BASH_COMPLETION,
        "/usr/share/zsh/vendor-completions/_goodsd",
        "/usr/lib/sysusers.d/goodsd.conf",
        "/usr/share/doc/goodsd/README.md",
        "/usr/share/doc/goodsd/examples/grafana/goodsd.json",
    ):
        box.run("test", "-f", path)
    # And the installed bash completion offers every command, and every action of dead
    commands = [words[0] for words, _, _ in docgen.commands(cli.build_parser()) if len(words) == 1]
    assert complete(box, "goodsd", "") == sorted(commands)
    assert complete(box, "goodsd", "dead", "") == ["list", "purge", "requeue"]
    for unit in (UNIT, "goodsd@check.service"):
        verify = box.run("systemd-analyze", "verify", unit)
        assert verify.stdout + verify.stderr == "", verify
    # And the service is neither enabled nor started: the example config is the operator's
    # to fill in first
    assert box.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert box.show(UNIT)["ActiveState"] == "inactive"

    # Given a config of the operator's (two consumers, a handler under /srv) and the drop-in
    # that lets the service reach Redis's socket
    box.write(f"{HANDLERS}/slow.py", SLOW_HANDLER, group="root", mode="0644")
    box.write(DELAY, "0.01", group="root", mode="0644")
    box.write("/etc/goodsd.yaml", config(2))
    box.write(f"/etc/systemd/system/{UNIT}.d/local.conf", DROPIN, group="root", mode="0644")
    box.run("systemctl", "daemon-reload")
    box.run("goodsd", "check", "--as-user", "goodsd", "--group", "redis")
    # When it is enabled and started, and items are pushed
    box.run("systemctl", "enable", "--now", UNIT, timeout=START_TIMEOUT)
    state = box.show(UNIT)
    assert state["ActiveState"] == "active", f"{state}\n{box.tail()}"
    first_master = state["MainPID"]
    box.run("goodsd", "push", *(f"good{i}" for i in range(20)))
    # Then they are handled
    box.wait(lambda: done(box) == 20, 15, "20 items done")

    # Given one more pool, goodsd@orders with a queue of its own, enabled and started
    box.write("/etc/goodsd/orders.yaml", config(1, queue="orders"))
    box.write("/etc/systemd/system/goodsd@.service.d/local.conf", DROPIN, "root", "0644")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "enable", "--now", INSTANCE, timeout=START_TIMEOUT)
    state = box.show(INSTANCE)
    assert state["ActiveState"] == "active", f"{state}\n{box.tail()}"
    first_instance = state["MainPID"]

    # When the config asks for three consumers and the service is reloaded
    box.write("/etc/goodsd.yaml", config(3))
    box.run("goodsd", "check")
    box.run("systemctl", "reload", UNIT)
    # Then the same master runs three
    box.wait(
        lambda: re.search(r"\b3 running\b", box.show(UNIT)["StatusText"]) is not None,
        15,
        "3 consumers after the reload",
    )
    assert box.show(UNIT)["MainPID"] == first_master

    # When items are pushed and, while they are being handled, the package is upgraded to a
    # rebuilt one of a higher version
    # (600 items of 200 ms on three consumers: 40 s of work; 10 on goodsd@orders)
    box.write(DELAY, "0.2", group="root", mode="0644")
    box.run("goodsd", "push", *(f"late{i}" for i in range(600)))
    box.run("goodsd", "-c", "/etc/goodsd/orders.yaml", "push", *(f"order{i}" for i in range(10)))
    box.wait(lambda: done(box) > 20, 10, "the consumers at work before the upgrade")
    since = box.journal_from_now()
    box.run(*APT, "install", f"/root/debs/{packages.second.name}", timeout=120)

    # Then the service runs again, under a new master that runs the new code
    state = box.show(UNIT)
    assert state["ActiveState"] == "active", f"{state}\n{box.tail()}"
    assert state["MainPID"] != first_master
    version = box.run("goodsd", "--version").stdout.splitlines()[0]
    assert version == f"goodsd {packages.second_version}"
    box.wait(
        lambda: [m["version"] for m in masters(box)] == [packages.second_version],
        15,
        "the new master in the masters registry",
    )
    # And so does goodsd@orders, restarted by the upgrade too
    state = box.show(INSTANCE)
    assert state["ActiveState"] == "active", f"{state}\n{box.tail()}"
    assert state["MainPID"] != first_instance
    # And the rebuilt package bundles the same pinned packages
    assert bundled(box, packages.second_version) == sorted(pinned(), key=str.lower)
    # And the old master stopped gracefully in the middle of the work: its consumers finished
    # their current items or gave them back (its stop summary)
    journal = box.journal(UNIT, since, "-o", "cat")
    summary = re.search(
        r"stopped: (\d+) item\(s\) finished during the stop .*, (\d+) given back", journal
    )
    assert summary and int(summary[1]) + int(summary[2]) > 0, journal
    assert done(box) < 620
    box.write(DELAY, "0", group="root", mode="0644")
    # And nothing was lost: every item pushed is done, none is left waiting, in flight or dead
    box.wait(lambda: done(box) == 620, 40, "all 620 items done after the upgrade")
    box.wait(lambda: done(box, ORDERS_STATS) == 10, 15, "all 10 orders done after the upgrade")
    counts = json.loads(box.run("goodsd", "status", "--json").stdout)
    assert (counts["backlog"], counts["in_flight"], counts["retry_waiting"], counts["dead"]) == (
        0,
        0,
        0,
        0,
    ), counts
    # And the operator's config and its mode survived the upgrade; the service stays enabled
    assert "slow:handle" in box.run("cat", "/etc/goodsd.yaml").stdout
    assert box.run("stat", "-c", "%U:%G %a", "/etc/goodsd.yaml").stdout.split() == [
        "root:goodsd",
        "640",
    ]
    assert box.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"

    # When the package is removed (the journal read from here on: the upgrade's stops
    # logged "stopped:" too)
    master = int(box.show(UNIT)["MainPID"])
    instance = int(box.show(INSTANCE)["MainPID"])
    since = box.journal_from_now()
    box.run(*APT, "remove", "goodsd", timeout=120)
    # Then both services were stopped cleanly and the program is gone, the config is kept
    for unit, pid in ((UNIT, master), (INSTANCE, instance)):
        assert not box.alive(pid), unit
        assert box.show(unit)["ActiveState"] == "inactive", unit
        stopped = box.journal(unit, since, "-o", "cat")
        assert "stopped:" in stopped, f"{unit}: {stopped[-2000:]}"
    assert box.run("test", "-e", "/usr/bin/goodsd", check=False).returncode != 0
    box.run("test", "-f", "/etc/goodsd.yaml")

    # When it is purged
    box.run(*APT, "purge", "goodsd", timeout=120)
    # Then its config and its files are gone, /opt/goodsd entirely (compiled files too)
    for path in (
        "/etc/goodsd.yaml",
        "/etc/goodsd",
        "/opt/goodsd",
        "/usr/lib/sysusers.d/goodsd.conf",
    ):
        assert box.run("test", "-e", path, check=False).returncode != 0, path
    # And no link enables a goodsd unit any more (goodsd@orders's pointed at the gone template)
    assert enablement_links(box) == []
    # And Redis keeps goodsd's data: the counters of every item handled
    assert done(box) == 620
    assert done(box, ORDERS_STATS) == 10
