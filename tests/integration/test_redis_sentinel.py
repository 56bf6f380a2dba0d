"""goodsd on a primary found through Redis Sentinel (a primary, 2 replicas and 3 sentinels on
127.0.0.1): it works end to end, warns at start when the primary takes writes with no replica,
and follows a failover after the primary dies with nothing acknowledged lost (with
``wait_replicas: 1``) and no process restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from ops_cli import goodsd
from support import NotifyListener, wait_for, write_config
from test_redis_outage import lines

from goodsd.config import RedisConfig
from goodsd.localredis import LocalRedis, LocalSentinels
from goodsd.redisconn import Kind, classify, connect

# What makes a failover safe: the primary refuses writes that no replica takes.
SAFE = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
NO_REPLICA_WARNING = "takes writes that no replica has acknowledged"


@pytest.fixture
def make_sentinels() -> Iterator[Callable[..., LocalSentinels]]:
    """make_sentinels(settings=(), sentinel_password=None) -> a started LocalSentinels,
    stopped after the test."""
    started: list[LocalSentinels] = []

    def make(
        settings: tuple[str, ...] = (), sentinel_password: str | None = None
    ) -> LocalSentinels:
        group = LocalSentinels(settings=settings, sentinel_password=sentinel_password)
        started.append(group)
        return group.__enter__()

    yield make
    for group in started:
        group.__exit__(None, None, None)


def test_a_sentinel_url_works_and_the_start_warns_without_min_replicas(
    make_sentinels, tmp_path, start_daemon, notify
):
    # Given a primary that takes writes no replica has, found through its sentinels
    group = make_sentinels()
    out = tmp_path / "handled"
    config = write_config(
        tmp_path, group.url, consumers={"handler": "sample_handlers:paced_record_to_file"}
    )
    # When goodsd starts and items are pushed
    daemon = start_daemon(config, notify=notify, env={"TEST_OUT": str(out)})
    notify.wait("READY", "1")
    assert goodsd(config, "push", "a", "b", "c").returncode == 0
    # Then they are handled, on the primary, and status reads them there
    wait_for(lambda: sorted(lines(out)) == ["a", "b", "c"], 10, "the items handled")
    with group.primary().client() as primary:
        wait_for(lambda: done_on(primary) == 3, 5, "the three counted done on the primary")
    view = json.loads(goodsd(config, "status", "--json").stdout)
    assert view["totals"]["done"] == 3 and view["redis"] == group.url
    # And the start warned that a failover could lose acknowledged writes
    assert re.search(rf"warning \[master\] .*{NO_REPLICA_WARNING}", daemon.log()), daemon.log()
    assert daemon.stop() == 0
    # When the primary refuses writes without a replica, the next start does not warn
    with group.primary().client() as primary:
        primary.config_set("min-replicas-to-write", 1)
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1", after=len(notify.poll()))
    assert NO_REPLICA_WARNING not in daemon.log()
    assert daemon.stop() == 0


def push_meanwhile(config, stop: threading.Event) -> list[str]:
    """Push one item at a time with `goodsd push` until ``stop``; returns those it said it
    pushed (exit 0): the acknowledged ones."""
    acknowledged = []
    number = 0
    while not stop.is_set():
        item = f"pushed-{number}"
        number += 1
        if goodsd(config, "push", item, timeout=30).returncode == 0:
            acknowledged.append(item)
    return acknowledged


def kill_primary(group: LocalSentinels) -> None:
    """The primary dies (SIGKILL)."""
    os.kill(group.primary().pid, signal.SIGKILL)


def switch_primary(group: LocalSentinels) -> None:
    """An operator moves the primary elsewhere while it runs (SENTINEL FAILOVER): it is told
    to follow the new one only later, and answers READONLY then."""
    with group.sentinel() as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", group.service)


def check_silent_hosts_first(
    url: str, silent: int, tmp_path: Path, start_daemon: Callable, notify: NotifyListener
) -> None:
    """goodsd on ``url``, whose first ``silent`` hosts take connections and never answer: the
    daemon gets ready and handles an item, and push and status work; with one silent host
    (a lookup's budget has room for it) no process even sees an outage."""
    out = tmp_path / "handled"
    config = write_config(
        tmp_path, url, consumers={"handler": "sample_handlers:paced_record_to_file"}
    )
    # When goodsd starts, then it gets ready (a lookup that ran out of time asks the hosts
    # that were silent last, the next time)
    daemon = start_daemon(config, notify=notify, env={"TEST_OUT": str(out)})
    notify.wait("READY", "1", timeout=60)
    # And a one-shot command, which has no next time, asks every host: push and status work
    pushed = goodsd(config, "push", "a")
    assert pushed.returncode == 0, pushed.stderr
    wait_for(lambda: lines(out) == ["a"], 10, "the item handled")
    status = goodsd(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["totals"]["pushed"] == 1
    log = daemon.log()
    if silent == 1:
        assert "redis unavailable" not in log, log
    else:  # the first lookups ran out of time: said, then found through the asking order
        assert re.search(r"redis unavailable: .* more not (asked|queried) this time", log), log
    assert daemon.stop() == 0


def test_a_silent_first_sentinel_holds_up_neither_the_daemon_nor_a_command(
    make_sentinels, silent_ports, tmp_path, start_daemon, notify
):
    # Given a URL whose first sentinel takes connections and never answers, then live ones
    group = make_sentinels()
    live = ",".join(f"127.0.0.1:{port}" for port in group.sentinel_ports)
    url = f"redis+sentinel://127.0.0.1:{silent_ports[0]},{live}/{group.service}"
    check_silent_hosts_first(url, 1, tmp_path, start_daemon, notify)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("failover", "wait_replicas"),
    [
        # a crash: the promoted replica is the one most up to date, so one acknowledgement
        # is enough
        (kill_primary, 1),
        # a switch: the old primary takes writes until it is told to follow, and a replica
        # not promoted acknowledges them before it drops them to follow the new primary; so
        # every replica must have a write
        (switch_primary, 2),
    ],
)
def test_a_failover_loses_nothing_acknowledged_and_restarts_nobody(
    failover, wait_replicas, make_sentinels, tmp_path, start_daemon, notify
):
    # Given consumers and a producer (held back by its watermark, so it pushes throughout) on
    # a primary that refuses writes without a replica, each push and settle waiting for the
    # acknowledgement of ``wait_replicas`` replicas
    group = make_sentinels(SAFE)
    out, items = tmp_path / "handled", 2000
    config = write_config(
        tmp_path,
        group.url,
        redis={"url": group.url, "wait_replicas": wait_replicas},
        consumers={"handler": "sample_handlers:paced_record_to_file", "batch": 5},
        producer={
            "processes": 1,
            "source": "sample_sources:finite",
            "batch": 20,
            "high_watermark": 200,
            "low_watermark": 100,
        },
    )
    env = {"TEST_OUT": str(out), "TEST_SOURCE_ITEMS": str(items), "TEST_ITEM_SECONDS": "0.004"}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    wait_for(lambda: len(lines(out)) >= 200, 20, "consumption under way")
    children = daemon.children()
    stop_pushing = threading.Event()
    pushed: list[str] = []
    pusher = threading.Thread(target=lambda: pushed.extend(push_meanwhile(config, stop_pushing)))
    pusher.start()
    try:
        # When the primary dies, or is moved elsewhere
        old = group.primary()
        began = time.monotonic()
        failover(group)
        # Then the sentinels promote a replica, and goodsd follows it
        new = wait_for(
            lambda: (now := group.primary()) is not old and now,
            30,
            "the sentinels to promote a replica",
        )
        with new.client() as client:
            done_then = done_on(client)
            wait_for(lambda: done_on(client) > done_then, 30, "goodsd's first ack there")
        followed = time.monotonic() - began
        wait_for(lambda: len(lines(out)) >= items * 0.9, 60, "consumption to go on")
    finally:
        stop_pushing.set()
        pusher.join()
    # And every item the source gave, and every push that was acknowledged, is handled
    everything = {f"item-{i}" for i in range(items)} | set(pushed)
    wait_for(lambda: everything <= set(lines(out)), 60, "every acknowledged item handled")
    assert pushed, "no push was acknowledged"
    # And nobody restarted: the consumers and the producer waited the failover out
    log = daemon.log()
    assert daemon.children() <= children and "exited" not in log and "Traceback" not in log
    assert re.search(r"\[consumer \d pid \d+\] redis unavailable", log), log
    assert re.search(r"\[consumer \d pid \d+\] redis available again", log), log
    assert daemon.stop() == 0
    # (the figures the README gives: how soon goodsd went on, and its longest wait)
    waits = [(float(s), was) for s, was in WAITED.findall(log)]
    longest, kind = max(waits)
    print(
        f"{failover.__name__}, wait_replicas {wait_replicas}: goodsd acknowledged an item on "
        f"the new primary {followed:.1f}s after the failover began; its longest wait: "
        f"{longest:.1f}s ({kind}); {len(pushed)} pushes acknowledged, none lost"
    )


# A process's outage ended: how long it lasted, and what it was.
WAITED = re.compile(r"redis available again after (\d+\.\d)s \(was: ([^;]+);")


def done_on(client: redis.Redis) -> int:
    """The queue's count of items done, on one server."""
    return int(client.hget("goodsd:{q}:stats", "done") or 0)


def name_another_primary(group: LocalSentinels) -> tuple[LocalRedis, LocalRedis]:
    """The sentinels come to name a replica primary while the old primary runs on, cut off
    from its replicas and out of the sentinels' sight (as after a partition), so nobody tells
    it to follow: it keeps answering as a primary. Returns (old, new) once the new primary
    has a replica in sync."""
    old = group.primary()
    new, other = (server for server in group.servers if server is not old)
    for number in range(group.sentinel_count):
        with group.sentinel(number) as sentinel:
            sentinel.execute_command("SENTINEL", "REMOVE", group.service)
    with new.client() as client:
        client.replicaof("NO", "ONE")
    with other.client() as client:
        client.replicaof("127.0.0.1", new.tcp_port)
    for number in range(group.sentinel_count):
        with group.sentinel(number) as sentinel:
            sentinel.execute_command(
                "SENTINEL", "MONITOR", group.service, "127.0.0.1", new.tcp_port, 2
            )

    def in_sync(server: LocalRedis, replicas: int) -> bool:
        with server.client() as client:
            return int(client.info("replication")["connected_slaves"]) == replicas

    wait_for(lambda: group.primary() is new, 10, "the sentinels to name the new primary")
    wait_for(lambda: in_sync(new, 1), 10, "the new primary's replica in sync")
    wait_for(lambda: in_sync(old, 0), 10, "the old primary to lose its replicas")
    return old, new


def test_a_wrapped_readonly_makes_the_next_command_ask_the_sentinels(make_sentinels):
    # Given goodsd's client, connected to the primary the sentinels name
    group = make_sentinels()
    client = connect(RedisConfig(group.url), "test")
    old_port = int(client.info("server")["tcp_port"])
    assert old_port == group.primary().tcp_port
    # When the sentinels come to name another, and the old primary answers READONLY wrapped
    # in a script's error as Redis 6.2 words it (a plain ERR reply)
    _, new = name_another_primary(group)
    wrapped = (
        "ERR Error running script (call to f_ad9e921dc2065bd7cd2aa87fd51898f0c7ad4381): "
        "@user_script:1: @user_script: 1: -READONLY You can't write against a read only "
        "replica. "
    )
    with pytest.raises(redis.ResponseError) as raised:
        client.eval("return redis.error_reply(ARGV[1])", 0, wrapped)
    # Then goodsd takes it for a read-only replica, as it takes the bare reply
    trouble = classify(raised.value)
    assert trouble is not None and trouble.kind is Kind.READ_ONLY
    # And the next command goes to the primary the sentinels name now
    assert int(client.info("server")["tcp_port"]) == new.tcp_port
    client.close()


@pytest.mark.parametrize(
    ("settings", "wait_replicas"),
    [
        # the old primary answers every write NOREPLICAS
        (SAFE, 0),
        # it takes writes, but goodsd's WAIT for a replica falls short (its own NOREPLICAS)
        ((), 1),
    ],
    ids=["noreplicas", "wait-falls-short"],
)
def test_a_primary_cut_off_from_its_replicas_is_left_for_the_one_the_sentinels_name(
    settings, wait_replicas, make_sentinels, tmp_path, start_daemon, notify
):
    # Given consumers at work on a primary
    group = make_sentinels(settings)
    out = tmp_path / "handled"
    config = write_config(
        tmp_path,
        group.url,
        redis={"url": group.url, "wait_replicas": wait_replicas},
        consumers={"handler": "sample_handlers:paced_record_to_file"},
    )
    daemon = start_daemon(config, notify=notify, env={"TEST_OUT": str(out)})
    notify.wait("READY", "1")
    assert goodsd(config, "push", "before").returncode == 0
    wait_for(lambda: lines(out) == ["before"], 10, "the first item handled")
    children = daemon.children()
    # When the sentinels come to name another primary, while the old one runs on, cut off from
    # its replicas, and an item reaches it (its settle is the write refused, or not
    # acknowledged by a replica)
    old, new = name_another_primary(group)
    with old.client() as client:
        if settings == SAFE:
            with pytest.raises(redis.ResponseError, match=r"^NOREPLICAS"):
                client.lpush("q", "stray")
        else:
            client.lpush("q", "stray")
    # Then the consumers leave it for the new primary within the growing delay (5 s at most
    # between attempts): items pushed there are handled
    pushed = goodsd(config, "push", "after-1", "after-2")
    assert pushed.returncode == 0, pushed.stderr
    wait_for(
        lambda: {"after-1", "after-2", "before"} <= set(lines(out)),
        20,
        "the consumers on the new primary",
    )
    # (the items' acks follow their handling, in a batch settled on the new primary; "before"
    # came by replication)
    with new.client() as client:
        wait_for(lambda: done_on(client) >= 3, 5, "the three counted done on the new primary")
    # And they waited the old primary out as an outage: nobody restarted, no crash loop
    log = daemon.log()
    assert daemon.children() == children and "exited" not in log and "Traceback" not in log
    assert re.search(r"\[consumer \d pid \d+\] redis unavailable: too few replicas", log), log
    assert re.search(r"\[consumer \d pid \d+\] redis available again", log), log
    assert daemon.stop() == 0


def test_a_redis_url_at_a_sentinel_is_refused_naming_the_sentinel_form(
    make_sentinels, tmp_path, start_daemon
):
    # Given a plain redis:// URL naming a sentinel (whose answer to goodsd's permission check
    # is no refusal but an unknown command)
    group = make_sentinels()
    config = write_config(tmp_path, f"redis://127.0.0.1:{group.sentinel_ports[0]}/0")
    says = "reaches a Redis Sentinel: use redis+sentinel://host1:26379,host2:26379/service_name"
    # When goodsd checks Redis, then it names the form to use and exits 78
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 78 and says in checked.stderr, checked.stderr
    # And goodsd refuses to start with the same words, before any consumer
    daemon = start_daemon(config)
    assert daemon.wait_exit(20) == 78
    log = daemon.log()
    assert says in log and "started consumer" not in log, log


@pytest.fixture
def sentinels_with_a_password(make_sentinels) -> LocalSentinels:
    return make_sentinels(sentinel_password="watch-word")


def test_sentinels_own_login_and_check_redis(sentinels_with_a_password, tmp_path, start_daemon):
    group = sentinels_with_a_password
    secret = tmp_path / "sentinel-password"
    secret.write_text("watch-word\n")
    secret.chmod(0o600)
    # Given the sentinels' own password in redis.sentinel_password_file
    config = write_config(
        tmp_path, group.url, redis={"url": group.url, "sentinel_password_file": str(secret)}
    )
    # When goodsd checks Redis as the service would
    checked = goodsd(config, "check", "--redis")
    # Then it names the primary the sentinels name, and finds nothing wrong
    assert checked.returncode == 0, checked.stderr
    primary = group.primary().tcp_port
    assert (
        f"deployment: primary 127.0.0.1:{primary}, named 'goods' by the sentinels (3 in the "
        "url), with 2 replica(s)" in checked.stdout
    ), checked.stdout
    assert NO_REPLICA_WARNING in checked.stderr
    # When the password is wrong, then goodsd refuses to start (exit 78), saying why
    secret.write_text("wrong-word\n")
    daemon = start_daemon(config)
    assert daemon.wait_exit(20) == 78
    assert "sentinel refused goodsd's login" in daemon.log(), daemon.log()
    # And a URL that names data nodes as sentinels is refused too
    wrong = write_config(tmp_path, f"redis+sentinel://127.0.0.1:{primary}/goods")
    checked = goodsd(wrong, "check", "--redis")
    assert checked.returncode == 78
    assert "no host of the URL answered as a sentinel" in checked.stderr, checked.stderr
