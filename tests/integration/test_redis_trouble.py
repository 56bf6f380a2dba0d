"""Redis trouble of every kind, against real servers: refusals of writes (out of memory, a
read-only replica, too few replicas) are outages that are waited out, said once and lose
nothing; refusals that no retry can fix (an ACL without a command goodsd needs, a password
refused, a socket goodsd may not open) stop the start with exit 78 before READY=1; a Redis
that is away at start shows in STATUS=."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support import wait_for
from test_redis_outage import lines, statuses_since

from goodsd.redisconn import NEEDED_COMMANDS, refused_commands
from goodsd.store import Upkeep

# kind label -> (make the session server refuse writes that way, make it accept them again).
# Too few replicas (NOREPLICAS) is the same mechanism with another reply code: see
# tests/unit/test_redis_classify.py (the suite's time is kept for the two kinds here).
WRITE_REFUSALS: dict[str, tuple[Callable[[redis.Redis], object], Callable[[redis.Redis], object]]]
WRITE_REFUSALS = {
    "out of memory": (
        lambda r: r.config_set("maxmemory", "1"),
        lambda r: r.config_set("maxmemory", "0"),
    ),
    "read-only replica": (
        lambda r: r.replicaof("127.0.0.1", "1"),  # a primary that is not there: never syncs
        lambda r: r.replicaof("NO", "ONE"),
    ),
}
# The ACL user the refusal tests create, and its password.
USER, PASSWORD = "goodsd-test", "secret-9"


def error_replies(r: redis.Redis) -> int:
    """Error replies the server has sent so far (any client)."""
    return int(r.info("stats")["total_error_replies"])


def said(log: str, what: str) -> dict[str, int]:
    """Process (``master``, ``consumer 0``...) -> how many of its lines start with ``what``."""
    counts: dict[str, int] = {}
    for who in re.findall(r"\[(\w+(?: \d+)?)(?: pid \d+)?\] " + re.escape(what), log):
        counts[who] = counts.get(who, 0) + 1
    return counts


def wait_out(refusal: str, r: redis.Redis, daemon, notify) -> int:
    """Make Redis refuse writes until two STATUS= lines have said so; returns the refused
    calls Redis answered between those two lines (one STATUS= interval, 2 s)."""
    refuse, accept = WRITE_REFUSALS[refusal]
    refuse(r)
    try:
        mark = len(notify.poll())
        daemon.wait_log(r"\[consumer \d pid \d+\] redis unavailable", count=2)
        errors = [0, 0]
        for n in range(2):
            wait_for(
                lambda n=n: sum(refusal in s for s in statuses_since(notify, mark)) > n,
                10,
                f"STATUS= line {n + 1} saying {refusal!r}",
            )
            errors[n] = error_replies(r)
        return errors[1] - errors[0]
    finally:
        accept(r)


def assert_said_once(daemon, notify) -> None:
    """Each process that saw the outage said so once, and says once that it ended; then
    STATUS= no longer says that goodsd waits."""
    log = daemon.log()
    started = said(log, "redis unavailable")
    assert set(started) >= {"consumer 0", "consumer 1"}
    assert set(started.values()) == {1}, log
    wait_for(
        lambda: said(daemon.log(), "redis available again") == started,
        15,
        "every process to say once that redis is back",
    )
    now = len(notify.poll())
    wait_for(lambda: statuses_since(notify, now), 5, "a fresh STATUS=")
    assert "waiting for redis" not in statuses_since(notify, now)[-1]


def test_idle_consumers_wait_out_a_read_only_replica_with_growing_delays(
    r, make_config, start_daemon, notify
):
    # Given two consumers waiting for work
    daemon = start_daemon(
        make_config(consumers={"handler": "sample_handlers:record"}), notify=notify
    )
    notify.wait("READY", "1")
    consumers = daemon.children()
    # When Redis turns into a read-only replica for a few seconds (as after a failover)
    errors = wait_out("read-only replica", r, daemon, notify)
    # Then they retried with growing delays: a few refused calls in 2 s, not dozens (a read
    # that works, such as reading back what a refused claim took, does not reset the delay)
    assert errors < 20, f"{errors} refused calls in 2s"
    # And said so once, and once that it ended
    assert_said_once(daemon, notify)
    # And they are the same consumers, and serve again
    r.lpush("q", "after")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"after"], 10, "the item handled")
    assert daemon.children() == consumers


def test_out_of_memory_is_waited_out_by_busy_consumers_and_a_producer_holding_its_batch(
    r, tmp_path, make_config, start_daemon, notify
):
    # Given two consumers and a producer kept busy by a low watermark
    out = tmp_path / "handled"
    items = 150
    config = make_config(
        consumers={"handler": "sample_handlers:paced_record_to_file", "batch": 5},
        producer={
            "processes": 1,
            "source": "sample_sources:finite",
            "batch": 10,
            "high_watermark": 20,
            "low_watermark": 10,
        },
    )
    env = {"TEST_OUT": str(out), "TEST_ITEM_SECONDS": "0.01", "TEST_SOURCE_ITEMS": str(items)}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    wait_for(lambda: len(lines(out)) >= 20, 10, "consumption under way")
    children = daemon.children()
    # When Redis runs out of memory for a few seconds
    wait_out("out of memory", r, daemon, notify)
    # Then every item is handled exactly once, by the same processes, none of which crashed
    everything = sorted(f"item-{i}" for i in range(items))
    wait_for(lambda: sorted(lines(out)) == everything, 20, "every item handled once")
    log = daemon.log()
    assert daemon.children() <= children  # (the producer exits once its source is done)
    assert len(re.findall(r"started (consumer|producer)", log)) == 3
    assert "Traceback" not in log and "exited with status 1" not in log, log
    # And each process said so once, and once that it ended
    assert_said_once(daemon, notify)


def test_a_start_while_redis_is_out_of_memory_waits_and_becomes_ready(
    r, make_config, start_daemon, notify
):
    # Given a Redis out of memory
    refuse, accept = WRITE_REFUSALS["out of memory"]
    refuse(r)
    try:
        # When goodsd starts
        daemon = start_daemon(make_config(), notify=notify)
        # Then it says what it waits for, without READY=1, without a crash or a restart
        wait_for(
            lambda: sum("out of memory" in s for s in statuses_since(notify, 0)) >= 2,
            15,
            "two STATUS= lines saying 'out of memory'",
        )
        assert notify.index_of("READY") is None
        log = daemon.log()
        assert "Traceback" not in log and "exited with" not in log, log
    finally:
        accept(r)
    # And it becomes ready once memory frees
    notify.wait("READY", "1")
    assert daemon.children() and len(daemon.children()) == 2


def test_a_start_while_redis_is_away_says_so_and_then_idles(
    r, redis_server, make_config, start_daemon, notify
):
    # Given no Redis
    redis_server.stop()
    try:
        # When goodsd starts
        daemon = start_daemon(make_config(), notify=notify)
        # Then STATUS= says what it waits for and where, instead of an unknown backlog
        _, fields = notify.wait("STATUS")
        url = redis_server.url
        assert fields["STATUS"].startswith(f"consumers: 2 starting; waiting for redis at {url}: ")
        assert "unreachable" in fields["STATUS"] and "backlog" not in fields["STATUS"]
        assert notify.index_of("READY") is None
    finally:
        redis_server.start()
    # And once Redis answers it becomes ready, each process having said once that it waited
    notify.wait("READY", "1")
    log = daemon.log()
    started = said(log, "redis unavailable")
    assert set(started) == {"master", "consumer 0", "consumer 1"}, log
    assert set(started.values()) == {1}
    # And the master's loop sleeps between events again (a timer left behind by the wait for
    # Redis kept it spinning at full speed)
    ready_at, cpu_before, since = len(notify.poll()), cpu_seconds(daemon.pid), time.monotonic()
    wait_for(
        lambda: statuses_since(notify, ready_at) and time.monotonic() - since > 1,
        10,
        "a STATUS= tick at least a second after READY=1",
    )
    busy = (cpu_seconds(daemon.pid) - cpu_before) / (time.monotonic() - since)
    assert busy < 0.25, f"the master used {busy:.0%} of a CPU while idle"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_password_refused_after_start_shows_in_status(r, make_config, start_daemon, notify):
    # Given goodsd running
    daemon = start_daemon(make_config(), notify=notify)
    notify.wait("READY", "1")
    # When Redis starts wanting a password goodsd does not have, and drops its connections
    r.config_set("requirepass", PASSWORD)
    try:
        mark = len(notify.poll())
        r.client_kill_filter(_type="normal", skipme=True)
        # Then STATUS= says that Redis refuses the login
        wait_for(
            lambda: any("login refused" in s for s in statuses_since(notify, mark)),
            10,
            "a STATUS= line saying 'login refused'",
        )
        assert re.search(r"\[master\] redis refuses access: login refused", daemon.log())
        assert daemon.proc.poll() is None
    finally:
        r.config_set("requirepass", "")


# -- refusals at start -------------------------------------------------------------------------


@pytest.fixture
def acl_user(r: redis.Redis) -> Iterator[Callable[..., None]]:
    """acl_user(*rules): (re)create USER with PASSWORD and ``rules``; deleted after the test."""

    def make(*rules: str) -> None:
        r.acl_deluser(USER)
        r.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", *rules)

    yield make
    r.acl_deluser(USER)


def as_user(url: str) -> str:
    """The session server's unix:// URL with USER in it."""
    return url.replace("unix://", f"unix://{USER}@", 1)


def needed_names() -> list[str]:
    return sorted({" ".join(c.split()[:2]) if c.startswith("SCRIPT") else c.split()[0]
                   for c in NEEDED_COMMANDS})  # fmt: skip


@pytest.mark.parametrize("command", needed_names())
def test_the_start_check_names_any_command_the_acl_refuses(command, r, redis_server, acl_user):
    # Given a user who may do everything but this one command goodsd needs
    acl_user("+@all", "~*", f"-{command.lower().replace(' ', '|')}")
    client = redis.Redis.from_url(as_user(redis_server.url), password=PASSWORD)
    # When goodsd checks its permissions
    refused = refused_commands(Upkeep(client, "q"))
    client.close()
    # Then exactly that command is named, and nothing ran
    assert refused == [command]
    assert r.dbsize() == 0


def test_the_start_check_names_a_key_the_acl_refuses(r, redis_server, acl_user):
    # Given a user who may use every key of the queue but its dead list
    acl_user("+@all", "~q", "~goodsd:{q}:[^d]*")
    client = redis.Redis.from_url(as_user(redis_server.url), password=PASSWORD)
    # When goodsd checks its permissions
    refused = refused_commands(Upkeep(client, "q"))
    client.close()
    # Then the commands it sends for the dead list are named with it, and only those
    assert "LPUSH on goodsd:{q}:dead" in refused
    assert all("goodsd:{q}:dead" in entry for entry in refused), refused
    assert r.dbsize() == 0


def test_the_start_check_passes_and_runs_nothing_when_all_is_allowed(r, redis_server, acl_user):
    acl_user("+@all", "~*")
    client = redis.Redis.from_url(as_user(redis_server.url), password=PASSWORD)
    assert refused_commands(Upkeep(client, "q")) == []
    client.close()
    assert r.dbsize() == 0


@pytest.mark.parametrize("command", ["hincrby", "blmove"])
def test_an_acl_without_a_command_goodsd_needs_fails_the_start_with_78(
    command, r, redis_server, acl_user, tmp_path, start_daemon, notify
):
    # Given an ACL user without a command goodsd needs (HINCRBY: only ever called by the
    # scripts, BLMOVE: only when the queue is empty)
    acl_user("+@all", "~*", f"-{command}")
    config = tmp_path / "goodsd.yaml"
    config.write_text(
        f"redis: {{url: '{as_user(redis_server.url)}'}}\nqueue: q\n"
        "consumers: {processes: 2, handler: 'goodsd.handlers:noop'}\n"
    )
    # When goodsd starts with that user
    daemon = start_daemon(config, notify=notify, env={"GOODSD_REDIS_PASSWORD": PASSWORD})
    # Then it exits 78 before READY=1, naming the command, and never starts a consumer
    assert daemon.wait_exit(20) == 78
    log = daemon.log()
    assert re.search(
        rf"critical .*redis refuses commands goodsd needs .*\b{command.upper()}\b", log
    )
    assert "started consumer" not in log
    assert notify.index_of("READY") is None


def test_a_socket_goodsd_may_not_open_fails_the_start_with_78(redis_server, make_config):
    # Given the session server's socket behind a directory goodsd may not enter (root ignores
    # file modes: the daemon runs without the capabilities that let it)
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv(1) to run goodsd without CAP_DAC_OVERRIDE")
    fence = Path(tempfile.mkdtemp(prefix="goodsd-fence-", dir="/tmp"))
    try:
        socket = fence / "redis.sock"
        socket.symlink_to(redis_server.socket_path)
        os.chown(fence, 65534, 65534)  # nobody's, mode 0700
        fence.chmod(0o700)
        config = make_config(redis={"url": f"unix://{socket}"})
        # When goodsd starts
        done = subprocess.run(
            [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable,
             "-m", "goodsd", "run", "-c", str(config)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )  # fmt: skip
    finally:
        shutil.rmtree(fence)
    # Then it exits 78 at once, saying what to do, and starts no consumer
    assert done.returncode == 78, done.stderr
    assert (
        f"redis refused access: permission denied on {socket}: add the service user to the "
        "socket's group" in done.stderr
    )
    assert "started consumer" not in done.stderr


def test_a_redis_url_at_a_replica_is_refused_at_start_naming_the_form_to_use(
    r, make_config, start_daemon, notify
):
    # Given the session server turned into a replica (of a primary that is not there)
    refuse, accept = WRITE_REFUSALS["read-only replica"]
    refuse(r)
    try:
        # When goodsd starts with a redis:// URL at it
        daemon = start_daemon(make_config(), notify=notify)
        # Then it exits 78 before READY=1, saying to use the primary or Sentinel
        assert daemon.wait_exit(20) == 78
    finally:
        accept(r)
    log = daemon.log()
    assert re.search(
        r"critical \[master\] redis\.url .* reaches a replica, which refuses writes: use the "
        r"primary's address, or redis\+sentinel://",
        log,
    ), log
    assert "started consumer" not in log and notify.index_of("READY") is None
