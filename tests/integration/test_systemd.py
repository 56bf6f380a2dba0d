"""End to end under a real systemd: the units in packaging/ exactly as shipped, driven with
systemctl and read back with journalctl, in a throw-away systemd that tests/systemd/sandbox.sh
boots in namespaces (so it runs on CI machines whose PID 1 is not systemd).

goodsd is installed by the README's own commands: the shell blocks of its "Installing under
systemd" section, from Redis to `systemctl enable --now goodsd`, run as written in a copy of
this checkout inside the sandbox. Only what needs the network is done outside: the packages
must be on the host already, and the venv is built there with /usr/bin/python3 as the README
says (the unit hides /root and /home, so a pyenv interpreter would not start). The last test
takes it all away again by the README's "Uninstalling" steps. Needs root; elsewhere, or
without the sandbox's prerequisites or a package index for pip (tried first), the tests skip
and say why. Select or deselect them with ``-m systemd``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from systemd_sandbox import (
    HOST_PYTHON,
    REDIS_SOCKET,
    Sandbox,
    missing_prerequisite,
    package_index_problem,
)

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
README = ROOT / "README.md"
# Inside the sandbox: where the unit's ExecStart= looks for goodsd.
GOODSD = "/opt/goodsd/bin/goodsd"
# Inside the sandbox: the copy of this checkout that the README's commands run in.
CLONE = "/root/goodsd"
# README commands that need the network, done outside instead: the packages are
# prerequisites of the host, and build_venv builds the venv as the README says.
NEEDS_NETWORK = ("apt-get ", "/usr/bin/python3 -m venv ", "/opt/goodsd/bin/pip ")
# The README's straight line ends with the command that starts the service.
LAST_STEP = re.compile(r"^systemctl enable --now goodsd\b(?!@)", re.M)
# The shipped unit files, each with a unit it gives.
UNITS = {"goodsd.service": "goodsd.service", "goodsd@.service": "goodsd@check.service"}
# `systemctl start` blocks until READY=1 or TimeoutStartSec= (90 s); fail well before that.
START_TIMEOUT = 30.0
# Appended to the sandbox's redis.conf before the README's steps: no final snapshot (the
# image's /var/lib/redis may be unwritable, and Redis then refuses to stop or restart).
REDIS_NO_SNAPSHOT = 'save ""\n'
# The drop-in the README gives for a password-protected Redis on the local unix socket.
INSTANCE_DROPIN = """[Service]
LoadCredential=redis-password:/etc/goodsd/redis-password
SupplementaryGroups=redis
"""


def readme_section(title: str) -> str:
    """The README's section under ``## title``, up to the next one."""
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def readme_uninstall_steps() -> str:
    """The README's commands that take away what its install steps put in place: the first sh
    block of "Uninstalling" after "Installed by hand"."""
    section = readme_section("Uninstalling").split("**Installed by hand**", 1)[1]
    found = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert found, "README: no sh block after 'Installed by hand' in Uninstalling"
    return found.group(1)


def readme_install_steps() -> str:
    """The README's commands from zero to a running service: the sh blocks of "Installing
    under systemd", in order, up to the one that enables goodsd, without NEEDS_NETWORK."""
    section = readme_section("Installing under systemd")
    steps = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M):
        steps += [line for line in block.splitlines() if not line.startswith(NEEDS_NETWORK)]
        if LAST_STEP.search(block):
            return "\n".join(steps) + "\n"
    raise AssertionError("README: no sh block with `systemctl enable --now goodsd`")


def build_venv(work: Path) -> Path:
    """/opt/goodsd-test-XXXX: goodsd from this checkout's files, in a venv of the system's
    Python. Built from a copy, so the checkout gets no build/ or egg-info."""
    source = work / "source"
    shutil.copytree(
        ROOT / "goodsd", source / "goodsd", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    # the wheel's data files (pyproject.toml, tool.setuptools.data-files)
    for name in ("config", "packaging"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = Path(tempfile.mkdtemp(prefix="goodsd-test-", dir="/opt"))
    try:
        venv.chmod(0o755)  # the service user must reach it
        subprocess.run(
            [HOST_PYTHON, "-m", "venv", "--without-pip", str(venv)],
            check=True,
            capture_output=True,
            umask=0o022,
        )
        pip_install = ("install", "--quiet", "--no-input", str(source))
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *pip_install],
            capture_output=True,
            text=True,
            umask=0o022,
            timeout=600,
            check=False,
        )
        if pip.returncode != 0:
            pytest.fail(f"building the venv failed:\n{(pip.stdout + pip.stderr)[-3000:]}")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return venv


class Installed(Sandbox):
    """A sandbox in which goodsd is installed by the README's install steps."""

    def __init__(self, directory: Path, journal_copy: Path) -> None:
        super().__init__(directory, journal_copy)
        # what the steps printed, stdout and stderr
        self.steps_output = ""
        # `systemctl show goodsd.service` right after them
        self.after_steps: dict[str, str] = {}

    def install_by_readme(self, venv: Path) -> None:
        """Run the README's steps (readme_install_steps) in a copy of this checkout, with
        ``venv`` as /opt/goodsd; then stop goodsd.service and empty Redis."""
        self.run("ln", "-s", str(venv), "/opt/goodsd")
        self.copy_checkout(CLONE)
        self.run("sh", "-c", 'cat >> "$1"', "sh", "/etc/redis/redis.conf", stdin=REDIS_NO_SNAPSHOT)
        script = f'cd "$1"\n{readme_install_steps()}'
        done = self.run("sh", "-exc", script, "sh", CLONE, timeout=2 * START_TIMEOUT)
        self.steps_output = done.stdout + done.stderr
        self.after_steps = self.show("goodsd.service")
        self.run("systemctl", "stop", "goodsd.service", timeout=START_TIMEOUT)
        self.redis("flushall")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """A booted sandbox with goodsd installed by the README's own install steps, Redis on its
    unix socket, goodsd.service then stopped and Redis emptied; removed with everything it
    created at the end of the module."""
    reason = missing_prerequisite() or package_index_problem()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("systemd")
    venv = build_venv(work)
    box = Installed(Path(tempfile.mkdtemp(prefix="goodsd-sbx.", dir="/var/tmp")), work / "journal")
    try:
        box.up(venv)
        box.install_by_readme(venv)
        yield box
    finally:
        try:
            box.down()
        finally:
            shutil.rmtree(venv, ignore_errors=True)


def config_yaml(processes: int, queue: str = "goods2", **extra: object) -> str:
    return yaml.safe_dump(
        {
            "redis": {"url": f"unix://{REDIS_SOCKET}"},
            "queue": queue,
            "consumers": {"processes": processes, "handler": "goodsd.handlers:log"},
            "supervisor": {"graceful_timeout": "5s"},
            **extra,
        },
        sort_keys=False,
    )


def exposure(box: Sandbox, unit: str) -> float:
    """`systemd-analyze security --offline=true` of ``unit``: its overall exposure."""
    text = box.run("systemd-analyze", "security", "--offline=true", unit).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", text)
    assert found, text
    return float(found.group(1))


def test_the_readme_install_steps_give_a_running_service(sandbox: Installed) -> None:
    box = sandbox
    # Given the README's install steps, run as written from zero (in the fixture)
    # Then they left goodsd.service active with the example config's four consumers
    state = box.after_steps
    assert state["ActiveState"] == "active", f"{state}\n{box.steps_output}"
    assert "consumers: 4 running" in state["StatusText"], state
    # And Redis answered on its socket, without eviction
    assert "PONG" in box.steps_output and "noeviction" in box.steps_output, box.steps_output
    # And the hand-installed sysusers entry is in /etc, not in /usr/lib (the packages' place)
    box.run("test", "-f", "/etc/sysusers.d/goodsd.conf")
    assert box.run("test", "-e", "/usr/lib/sysusers.d/goodsd.conf", check=False).returncode
    # And the config is readable by the service alone, with the path to Redis's socket
    mode = box.run("stat", "-c", "%U:%G %a", "/etc/goodsd.yaml").stdout.split()
    assert mode == ["root:goodsd", "640"], mode
    assert box.run(GOODSD, "check").stdout.count(f"unix://{REDIS_SOCKET}") == 1
    for unit_file, unit in UNITS.items():
        # And each unit passes systemd-analyze verify without a word
        verify = box.run("systemd-analyze", "verify", f"/etc/systemd/system/{unit_file}")
        assert verify.stdout + verify.stderr == "", verify
        # And each file its Documentation= names is installed
        docs = box.run("systemctl", "show", "-p", "Documentation", "--value", unit).stdout.split()
        assert docs, f"{unit}: no Documentation="
        for url in docs:
            if url.startswith("file:"):
                box.run("test", "-f", url.removeprefix("file:"))
        # And the sandboxing keeps its rating (1.1 on systemd 252; the units allow up to 2.0)
        assert exposure(box, unit) <= 2.0, unit


def test_goodsd_service_start_reload_stop_and_journal(sandbox: Sandbox) -> None:
    box = sandbox
    unit = "goodsd.service"
    # Given /etc/goodsd.yaml (root:goodsd 0640) asking for two consumers
    box.write("/etc/goodsd.yaml", config_yaml(2))
    # (and the journal read from here on, after the install steps' own run)
    since = box.journal_from_now()

    # When the service is started
    box.run("systemctl", "start", unit, timeout=START_TIMEOUT)
    # Then start returned after READY=1, which came once both children were up: the unit is
    # active, the master has exactly two children, both already registered in Redis, and the
    # journal has both children's "ready" before the master's "ready:"
    state = box.show(unit)
    assert state["ActiveState"] == "active", f"{state}\n{box.tail()}"
    master = int(state["MainPID"])
    first_children = box.children(master)
    assert len(first_children) == 2, f"children {first_children} right after start"
    assert box.redis("hlen", "goodsd:{goods2}:consumers") == "2"
    lines = box.journal(unit, since, "-o", "cat").splitlines()
    ready = [i for i, line in enumerate(lines) if re.search(r"\bready: ", line)]
    child_ready = [i for i, line in enumerate(lines) if re.search(r"consumer \d+ .*\bready$", line)]
    assert len(ready) == 1 and len(child_ready) == 2 and max(child_ready) < ready[0], lines
    seen = {master, *first_children}

    # When items are pushed with plain LPUSH, then they are handled
    box.redis("lpush", "goods2", *(f"good{i}" for i in range(20)))
    box.wait(
        lambda: box.redis("hget", "goodsd:{goods2}:stats", "done") == "20", 10, "20 items done"
    )

    # When the YAML is edited (2 -> 4 -> 1), checked as the docs say, and reloaded
    for processes in (4, 1):
        box.write("/etc/goodsd.yaml", config_yaml(processes))
        box.run(GOODSD, "check")
        box.run("systemctl", "reload", unit)

        # Then the same master runs exactly that many children and says so in STATUS=
        def resized(n: int = processes) -> bool:
            now = box.show(unit)
            kids = box.children(master)
            seen.update(kids)
            return (
                now["ActiveState"] == "active"
                and now["MainPID"] == str(master)
                and re.search(rf"consumers?:.*\b{n} running\b", now["StatusText"]) is not None
                and len(kids) == n
            )

        box.wait(resized, 15, f"{processes} consumers after reload")
    kept_children = box.children(master)

    # When the YAML gets an unknown key: check refuses it, and so does a reload
    box.write("/etc/goodsd.yaml", config_yaml(3, bogus=1))
    check = box.run(GOODSD, "check", check=False)
    assert check.returncode == 78 and "bogus" in check.stderr, check
    box.run("systemctl", "reload", unit)
    # Then the service stays active with its old children, and STATUS= shows the error
    box.wait(lambda: "bogus" in box.show(unit)["StatusText"], 10, "the reload error in STATUS=")
    state = box.show(unit)
    assert state["ActiveState"] == "active" and state["MainPID"] == str(master), state
    assert box.children(master) == kept_children
    # And the journal has it at error level, and everything else at its own priority
    assert "bogus" in box.journal(unit, since, "-p", "err", "-o", "cat")
    entries = [json.loads(line) for line in box.journal(unit, since, "-o", "json").splitlines()]
    ours = [
        e
        for e in entries
        if e.get("SYSLOG_IDENTIFIER") == "goodsd" and isinstance(e.get("MESSAGE"), str)
    ]
    priorities = {e["PRIORITY"] for e in ours}
    assert "6" in priorities, priorities
    assert [e["PRIORITY"] for e in ours if "bogus" in e["MESSAGE"]] == ["3"]
    assert not [e["MESSAGE"] for e in ours if e["MESSAGE"].startswith("<")]

    # When the service is stopped, with PID 1 logging at debug level: only then does it log
    # a clean exit's status (and the unit's ExecMain* are gone once it is unloaded)
    box.run("systemd-analyze", "log-level", "debug")
    box.run("systemctl", "stop", unit, timeout=START_TIMEOUT)
    box.run("systemd-analyze", "log-level", "info")
    # Then the master exited with status 0 (not killed) and no process of it is left
    state = box.show(unit)
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), (
        f"{state}\n{box.tail()}"
    )
    exits = [
        (e["EXIT_CODE"], e["EXIT_STATUS"])
        for e in map(json.loads, box.journal(unit, since, "-o", "json").splitlines())
        if "EXIT_CODE" in e and "Main process exited" in str(e.get("MESSAGE"))
    ]
    assert exits == [("exited", "0")], f"{exits}\n{box.tail()}"
    assert [pid for pid in sorted(seen) if box.alive(pid)] == []
    assert box.redis("hlen", "goodsd:{goods2}:consumers") == "0"


def test_instance_with_credential_over_unix_socket(sandbox: Sandbox) -> None:
    box = sandbox
    unit = "goodsd@demo.service"
    password = secrets.token_hex(12)
    # Given a Redis that wants a password, reached on its unix socket (0770, group redis),
    # the password in a root-only file handed over by LoadCredential=, and /etc/goodsd/demo.yaml
    box.redis("config", "set", "requirepass", password)
    try:
        box.write("/etc/goodsd/redis-password", password + "\n", group="root", mode="0600")
        box.write(f"/etc/systemd/system/{unit}.d/redis.conf", INSTANCE_DROPIN, "root", "0644")
        box.write(
            "/etc/goodsd/demo.yaml",
            config_yaml(2, queue="demo"),
        )
        box.run("systemctl", "daemon-reload")

        # When the instance is enabled and started
        box.run("systemctl", "enable", "--now", unit, timeout=START_TIMEOUT)

        # Then it is active with its two consumers, and handles items
        state = box.show(unit)
        assert state["ActiveState"] == "active", f"{state}\n{box.tail()}"
        assert len(box.children(int(state["MainPID"]))) == 2
        assert box.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        box.redis("lpush", "demo", "a", "b", "c", password=password)
        box.wait(
            lambda: box.redis("hget", "goodsd:{demo}:stats", "done", password=password) == "3",
            10,
            "3 items done by goodsd@demo",
        )
        box.run("systemctl", "stop", unit, timeout=START_TIMEOUT)
        state = box.show(unit)
        assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    finally:
        box.redis("config", "set", "requirepass", "", password=password, check=False)


# Last in this file: it takes away what the module's sandbox installed.
def test_the_readme_uninstall_steps_leave_nothing_of_goodsd(sandbox: Sandbox) -> None:
    box = sandbox
    # Given goodsd.service enabled and running, and two pools more: goodsd@alpha enabled and
    # running, goodsd@beta enabled and stopped (the drop-in gives them the group redis)
    box.write("/etc/goodsd.yaml", config_yaml(1))
    for name in ("alpha", "beta"):
        box.write(f"/etc/goodsd/{name}.yaml", config_yaml(1, queue=name))
    box.write(
        "/etc/systemd/system/goodsd@.service.d/local.conf",
        "[Service]\nSupplementaryGroups=redis\n",
        "root",
        "0644",
    )
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "enable", "--now", "goodsd.service", timeout=START_TIMEOUT)
    box.run("systemctl", "enable", "--now", "goodsd@alpha.service", timeout=START_TIMEOUT)
    box.run("systemctl", "enable", "goodsd@beta.service")
    running = [int(box.show(u)["MainPID"]) for u in ("goodsd.service", "goodsd@alpha.service")]
    assert all(running), running

    # When the README's steps for an install by hand are run as written
    box.run("sh", "-exc", readme_uninstall_steps(), timeout=2 * START_TIMEOUT)

    # Then no goodsd process is left, and systemd knows no goodsd unit
    assert [pid for pid in running if box.alive(pid)] == []
    for unit in ("goodsd.service", "goodsd@alpha.service", "goodsd@beta.service"):
        assert box.show(unit)["ActiveState"] == "inactive", unit
        load = box.run("systemctl", "show", "-p", "LoadState", "--value", unit).stdout.strip()
        assert load == "not-found", unit
    # And nothing in /etc/systemd/system names goodsd: no unit, drop-in or enabling link
    found = box.run("find", "/etc/systemd/system", "-name", "goodsd*").stdout.split()
    assert found == [], found
    # And the program, its config, its pages and its user are gone
    for path in ("/usr/local/bin/goodsd", "/etc/goodsd.yaml", "/etc/goodsd", "/opt/goodsd"):
        assert box.run("test", "-e", path, check=False).returncode != 0, path
    assert box.run("getent", "passwd", "goodsd", check=False).returncode != 0
