"""Two goodsd masters on two "hosts" (each in UTS and PID namespaces of its own, made with
unshare(1): another host name, pids the other cannot judge) share one queue. One host is killed
whole, master and workers at once, holding items; the other master gives those items back
once their lease has expired, and its consumers handle them: nothing is lost.

Needs root (unshare of UTS and PID namespaces); skipped, saying why, otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import wait_for, write_config

UNSHARE = shutil.which("unshare")
LEASE = 2.0  # seconds: supervisor.lease of both hosts


def can_unshare() -> str:
    """Why this machine cannot make the namespaces, or ""."""
    if UNSHARE is None:
        return "needs unshare(1) (util-linux)"
    if os.geteuid() != 0:
        return "needs root to make UTS and PID namespaces"
    probe = subprocess.run(
        [UNSHARE, "--uts", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare cannot make namespaces here: {probe.stderr.decode().strip()}"
    return ""


pytestmark = pytest.mark.skipif(bool(can_unshare()), reason=can_unshare() or "-")


class Host:
    """A goodsd master in namespaces of its own, named ``name``: ``init`` is the namespace's
    first process (a shell), whose death takes everything in it down."""

    def __init__(self, name: str, config: Path, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log
        script = f'hostname {name} && exec "$0" -m goodsd run -c "$1"'
        self.log_file = open(log, "wb")  # noqa: SIM115 - closed in kill()
        self.unshare = subprocess.Popen(
            [UNSHARE, "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
             "sh", "-c", script, sys.executable, str(config)],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def init_pid(self) -> int:
        """The namespace's first process, as this test sees it (the master itself: the shell
        exec'd it)."""
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        return int(wait_for(lambda: children.read_text().split(), 5, "the namespace's init")[0])

    def kill(self) -> None:
        """Kill the whole host at once: SIGKILL to a PID namespace's first process ends
        every process in it."""
        os.kill(self.init_pid(), signal.SIGKILL)
        self.unshare.wait(10)
        self.log_file.close()


@pytest.fixture
def hosts() -> Iterator[dict[str, Host]]:
    started: dict[str, Host] = {}
    yield started
    for host in started.values():
        if host.unshare.poll() is None:
            host.kill()


def host_config(directory: Path, url: str, handler: str) -> Path:
    directory.mkdir()
    return write_config(
        directory,
        url,
        consumers={"processes": 2, "handler": handler, "batch": 10},
        supervisor={"lease": f"{LEASE}s"},
    )


def test_a_host_killed_whole_gets_its_items_back_from_another_host(
    r: redis.Redis, redis_server, tmp_path: Path, hosts: dict[str, Host]
):
    env = {"TEST_REDIS_URL": redis_server.url}
    # Given host A, whose two consumers took every item and hang on their first ones
    config_a = host_config(tmp_path / "a", redis_server.url, "sample_handlers:hang")
    hosts["a"] = Host("host-a", config_a, tmp_path / "a.log", env)
    wait_for(lambda: "ready:" in hosts["a"].log(), 20, "host A ready")
    items = [f"item-{i}" for i in range(12)]
    r.lpush("q", *items)
    wait_for(lambda: r.llen("test:started") == 2 and r.llen("q") == 0, 10, "A holding all")
    # And host B, another host name, another pid namespace, whose consumers handle items
    config_b = host_config(tmp_path / "b", redis_server.url, "sample_handlers:record")
    hosts["b"] = Host("host-b", config_b, tmp_path / "b.log", env)
    wait_for(lambda: "ready:" in hosts["b"].log(), 20, "host B ready")
    registered = {v.decode().split('"host": "')[1].split('"')[0]
                  for v in r.hvals("goodsd:{q}:consumers")}  # fmt: skip
    assert registered == {"host-a", "host-b"}
    # (while A lives, B leaves its items alone: A renews their leases)
    assert r.llen("test:handled") == 0
    # When host A dies whole, master and consumers at once
    killed_at = time.monotonic()
    hosts["a"].kill()
    # Then B gives A's items back once their lease has expired, and handles every one
    wait_for(lambda: r.llen("test:handled") == len(items), 5 * LEASE, "every item handled")
    recovered = time.monotonic() - killed_at
    handled = sorted(v.decode() for v in r.lrange("test:handled", 0, -1))
    assert handled == sorted(items)
    # And it took no more than a lease and a half (A renewed every third of a lease, so its
    # last renewal ran out between two thirds of a lease and a whole one after its death; B
    # looks every half lease), plus the handling
    assert LEASE / 3 <= recovered <= 1.5 * LEASE + 2.0, recovered
    # (B's master logs the requeues once all are done, and their items may be handled first)
    wait_for(
        lambda: "lease of host-a-" in hosts["b"].log() and "expired: requeued" in hosts["b"].log(),
        5,
        "host B's log line saying it requeued host A's items",
    )
    print(f"host A's items were handled by host B {recovered:.2f}s after A died (lease {LEASE}s)")
