"""goodsd on a real Redis Cluster (3 primaries on 127.0.0.1): a queue served by any node works
end to end through a URL naming another node (consumers, a singleton producer held back by its
watermark, push, status, dead, metrics), a slot migrated while items flow loses nothing and
restarts nobody, and a URL of the wrong form is refused at start. On a Cluster whose primaries
each have a replica: a primary that dies is followed to the replica the cluster promotes,
with no item lost and no process restarted, and ``redis.wait_replicas`` waits for the replica
of the node serving the queue's slot."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis
from ops_cli import assert_one_line_error, goodsd
from support import wait_for, write_config
from test_ops_metrics import free_port, scrape
from test_redis_outage import lines
from test_redis_sentinel import WAITED, check_silent_hosts_first
from test_redis_tls_acl import PASSWORD, README, readme_acl_rule

from goodsd.clusterslot import queue_slot
from goodsd.config import RedisConfig
from goodsd.localredis import LocalCluster, LocalRedis
from goodsd.ops.push import WAIT_PATIENCE
from goodsd.redisconn import Kind, classify, connect, refused_commands
from goodsd.store import Upkeep


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as started:
        yield started


@pytest.fixture
def fresh_cluster(cluster: LocalCluster) -> LocalCluster:
    cluster.flush()
    return cluster


def queue_on(cluster: LocalCluster, node: LocalRedis) -> str:
    """A queue name whose slot ``node`` serves."""
    return next(f"q{n}" for n in range(10_000) if cluster.serving(f"q{n}") is node)


def node_url(node: LocalRedis) -> str:
    return f"redis+cluster://127.0.0.1:{node.tcp_port}"


def test_a_queue_on_another_node_works_end_to_end(fresh_cluster, tmp_path, start_daemon, notify):
    cluster = fresh_cluster
    # Given a queue served by the third node, and a URL that names only the first
    queue = queue_on(cluster, cluster.nodes[2])
    out, port, items = tmp_path / "handled", free_port(), 400
    config = write_config(
        tmp_path,
        node_url(cluster.nodes[0]),
        queue=queue,
        consumers={"handler": "sample_handlers:record_to_file_unless_bad", "retries": 0},
        producer={
            "processes": 1,
            "source": "sample_sources:finite",
            "singleton": True,
            "batch": 20,
            "high_watermark": 60,
            "low_watermark": 20,
        },
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    env = {"TEST_OUT": str(out), "TEST_SOURCE_ITEMS": str(items), "TEST_ITEM_SECONDS": "0.002"}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    # When items come from the producer (held back at its watermark) and from goodsd push
    pushed = goodsd(config, "push", "good-a", "bad-1", "good-b", "bad-2")
    assert pushed.returncode == 0, pushed.stderr
    wanted = sorted([f"item-{i}" for i in range(items)] + ["good-a", "good-b"])
    wait_for(lambda: sorted(lines(out)) == wanted, 30, "every good item handled once")
    # Then the producer held the singleton lock, and was held back by the watermark (it frees
    # the lock after its last push, and the consumers may finish that batch before)
    daemon.wait_log(r"\[producer 0 pid \d+\] released the singleton producer lock")
    log = daemon.log()
    assert re.search(r"\[producer 0 pid \d+\] took the singleton producer lock", log), log
    assert re.search(r"\[producer 0 pid \d+\] paused at \d+ \(high watermark 60\)", log), log
    # And status, dead and metrics read the queue on its node
    view = wait_for(
        lambda: (v := json.loads(goodsd(config, "status", "--json").stdout))["dead"] == 2 and v,
        10,
        "status to show both dead items",
    )
    assert (view["backlog"], view["in_flight"]) == (0, 0)
    assert view["totals"]["pushed"] == items + 4 and view["totals"]["done"] == items + 2
    assert [(p["state"], p["pushed"]) for p in view["producers"]] == [("finished", items)]
    assert [m["pid"] for m in view["masters"]] == [daemon.pid]
    dead = json.loads(goodsd(config, "dead", "list", "--json").stdout)
    assert sorted(r["item"] for r in dead["records"]) == ["bad-1", "bad-2"]
    wait_for(
        lambda: scrape(port).get(f'goodsd_queue_dead{{queue="{queue}"}}') == 2,
        10,
        "metrics to show both dead items",
    )
    # And check --redis names the node serving the queue's slot
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 0, checked.stderr
    assert (
        f"deployment: cluster node 127.0.0.1:{cluster.nodes[2].tcp_port} serves slot "
        f"{queue_slot(queue)} of queue {queue!r} (3 primaries; 0 replica(s) of this one)"
    ) in checked.stdout, checked.stdout
    # And every key of the queue is on the node serving its slot, none elsewhere
    with cluster.nodes[2].client() as node:
        assert node.exists(queue) == 0 and node.exists(f"goodsd:{{{queue}}}:stats") == 1
    for other in cluster.nodes[:2]:
        with other.client() as node:
            assert node.dbsize() == 0
    # And nothing crashed or was refused on the way
    assert "Traceback" not in log and "MOVED" not in log and "exited" not in log, log
    assert daemon.stop() == 0


def migrate(
    cluster: LocalCluster,
    queue: str,
    target: LocalRedis,
    between: Callable[[], None] = lambda: None,
) -> int:
    """Move ``queue``'s slot to ``target`` as redis-cli --cluster reshard does (IMPORTING,
    MIGRATING, MIGRATE the keys a few at a time, then NODE), calling ``between`` after each
    batch (to pace the migration). Returns the keys moved."""
    slot, source = queue_slot(queue), cluster.serving(queue)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    moved = 0
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3):
            src.execute_command("MIGRATE", "127.0.0.1", target.tcp_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            between()
        for node in (target, source, *(n for n in cluster.nodes if n not in (source, target))):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    cluster.wait_until_settled()
    return moved


# The commands of goodsd's consumers that claim and settle items.
CONSUMER_COMMANDS = ("cmdstat_evalsha", "cmdstat_blmove")


def consumer_calls(node: LocalRedis) -> int:
    """How many claims and settles ``node`` was sent: answered, failed, or refused (a
    redirect, while the slot migrates)."""
    with node.client() as client:
        stats = client.info("commandstats")
    return sum(
        stats[name]["calls"] + stats[name].get("rejected_calls", 0)
        for name in CONSUMER_COMMANDS
        if name in stats
    )


def after_consumer_calls(node: LocalRedis, calls: int) -> Callable[[], None]:
    """A pace for ``migrate``: each call returns once the consumers sent ``node`` ``calls``
    more claims or settles, so that the migration spans many of them."""
    seen = [consumer_calls(node)]

    def wait() -> None:
        seen[0] = wait_for(
            lambda: (now := consumer_calls(node)) >= seen[0] + calls and now,
            30,
            f"{calls} more calls of the consumers to the migrating node",
        )

    return wait


@pytest.mark.slow
def test_a_slot_migrated_while_items_flow_loses_nothing_and_restarts_nobody(
    fresh_cluster, tmp_path, start_daemon, notify
):
    cluster = fresh_cluster
    # Given consumers and a producer (held back by its watermark, so it pushes throughout) at
    # work on a queue of the first node
    source, target = cluster.nodes[0], cluster.nodes[1]
    queue = queue_on(cluster, source)
    out, items = tmp_path / "handled", 3000
    config = write_config(
        tmp_path,
        cluster.url,
        queue=queue,
        consumers={"handler": "sample_handlers:paced_record_to_file", "batch": 5},
        producer={
            "processes": 1,
            "source": "sample_sources:finite",
            "batch": 50,
            "high_watermark": 300,
            "low_watermark": 100,
        },
    )
    env = {"TEST_OUT": str(out), "TEST_SOURCE_ITEMS": str(items), "TEST_ITEM_SECONDS": "0.002"}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    wait_for(lambda: len(lines(out)) >= 200, 20, "consumption under way")
    children = daemon.children()
    # When the queue's slot moves to another node, a few keys at a time, meanwhile
    moved = migrate(cluster, queue, target, after_consumer_calls(source, 2))
    assert moved >= 5  # the ready list, in-flight lists, leases, registries, stats...
    assert cluster.serving(queue) is target
    # Then every item is handled, at least once (a claim cut off by the move may run twice)
    everything = {f"item-{i}" for i in range(items)}
    wait_for(lambda: set(lines(out)) == everything, 60, "every item handled")
    # And nobody restarted: the consumers waited the move out and followed the slot
    log = daemon.log()
    assert daemon.children() <= children and "exited" not in log and "Traceback" not in log
    assert re.search(r"\[consumer \d pid \d+\] redis unavailable: cluster slot", log), log
    assert re.search(r"\[consumer \d pid \d+\] redis available again", log), log
    assert re.search(rf"\[producer 0 pid \d+\] source exhausted: pushed {items} items", log)
    with target.client() as node:
        assert node.hlen(f"goodsd:{{{queue}}}:consumers") == 2
    with source.client() as node:
        assert node.dbsize() == 0
    assert daemon.stop() == 0


@pytest.mark.parametrize("silent", [1, 2])
def test_silent_first_hosts_in_the_url_hold_up_neither_the_daemon_nor_a_command(
    silent, fresh_cluster, silent_ports, tmp_path, start_daemon, notify
):
    # Given a URL whose first hosts take connections and never answer (two of them take a
    # daemon's lookup its whole 4 s), then a live node
    hosts = [f"127.0.0.1:{port}" for port in silent_ports[:silent]]
    hosts.append(f"127.0.0.1:{fresh_cluster.nodes[0].tcp_port}")
    check_silent_hosts_first(
        f"redis+cluster://{','.join(hosts)}", silent, tmp_path, start_daemon, notify
    )


def test_a_redis_url_at_a_cluster_node_is_refused_at_start(fresh_cluster, tmp_path, start_daemon):
    # Given a plain redis:// URL naming a cluster node
    node = fresh_cluster.nodes[0]
    config = write_config(tmp_path, f"redis://127.0.0.1:{node.tcp_port}/0")
    # When goodsd starts, then it exits 78 saying which form to use, before any consumer
    daemon = start_daemon(config)
    assert daemon.wait_exit(20) == 78
    log = daemon.log()
    assert "reaches a Redis Cluster node: use redis+cluster://" in log, log
    assert "started consumer" not in log


def test_a_cluster_url_at_a_single_server_is_refused_at_start(tmp_path, start_daemon):
    # Given a redis+cluster:// URL naming a server that is no cluster node
    with LocalRedis(tcp_port=free_port()) as server:
        config = write_config(tmp_path, f"redis+cluster://127.0.0.1:{server.tcp_port}")
        # When goodsd starts, then it exits 78 saying which form to use
        daemon = start_daemon(config)
        assert daemon.wait_exit(20) == 78
    log = daemon.log()
    assert f"127.0.0.1:{server.tcp_port} is not a cluster node: use a redis:// URL" in log, log


def test_the_start_check_of_permissions_works_on_a_cluster_node(fresh_cluster):
    # Given goodsd's client for a queue of the second node
    cluster = fresh_cluster
    queue = queue_on(cluster, cluster.nodes[1])
    client = connect(RedisConfig(cluster.url), "test", queue=queue)
    # When the master checks its permissions (a transaction thrown away), then all is allowed
    # and nothing ran
    assert refused_commands(Upkeep(client, queue)) == []
    client.close()
    with cluster.nodes[1].client() as node:
        assert node.dbsize() == 0


def test_the_client_follows_a_moved_slot(fresh_cluster):
    # Given goodsd's client for a queue of the first node, connected
    cluster = fresh_cluster
    queue = queue_on(cluster, cluster.nodes[0])
    client = connect(RedisConfig(cluster.url), "test", queue=queue)
    client.lpush(queue, "a")
    # When the slot moves to the second node
    migrate(cluster, queue, cluster.nodes[1])
    # Then the next call gets MOVED (nothing repeated behind goodsd's back) and the one
    # after it goes to the new node
    with pytest.raises(redis.exceptions.MovedError) as raised:
        client.lpush(queue, "b")
    # (which goodsd takes for an outage its retry ends at once, the client having followed)
    trouble = classify(raised.value)
    assert trouble is not None and trouble.kind is Kind.SLOT_MOVED and trouble.resolved
    assert client.lpush(queue, "b") == 2
    assert client.connection_pool.owner.address == ("127.0.0.1", cluster.nodes[1].tcp_port)
    client.close()


def test_a_connection_that_reconnects_goes_to_the_node_serving_the_slot(fresh_cluster):
    # Given a connection of goodsd's client, held, to the node serving the queue's slot
    cluster = fresh_cluster
    queue = queue_on(cluster, cluster.nodes[0])
    client = connect(RedisConfig(cluster.url), "test", queue=queue)
    pool = client.connection_pool
    connection = pool.get_connection()
    # When it is cut off, and the slot is known to be served elsewhere by then
    connection.disconnect()
    elsewhere = ("127.0.0.1", cluster.nodes[1].tcp_port)
    pool.owner.moved(*elsewhere)
    # Then its next command reconnects to the node serving the slot, not to the one it had
    connection.send_command("PING")
    assert connection.read_response() == b"PONG"
    assert (connection.host, connection.port) == elsewhere
    pool.release(connection)
    client.close()


@pytest.fixture
def acl_on_every_node(fresh_cluster: LocalCluster) -> Iterator[Callable[[list[str]], None]]:
    """set_user(args): run the ACL SETUSER command ``args`` on every node (a Cluster does not
    share ACL users); the user goodsd goes after the test."""

    def set_user(args: list[str]) -> None:
        for node in fresh_cluster.nodes:
            with node.client() as client:
                client.execute_command(*args)

    yield set_user
    for node in fresh_cluster.nodes:
        with node.client() as client:
            client.acl_deluser("goodsd")


def test_the_readme_cluster_rule_is_all_goodsd_needs(fresh_cluster, acl_on_every_node, tmp_path):
    # Given the README's user for a queue of the second node, with what it adds for a Cluster
    cluster = fresh_cluster
    queue = queue_on(cluster, cluster.nodes[1])
    assert "Add `+cluster|slots` for a Cluster." in README.read_text()
    rule = readme_acl_rule(queue)
    acl_on_every_node([*rule, "+cluster|slots"])
    url = f"redis+cluster://goodsd:{PASSWORD}@127.0.0.1:{cluster.nodes[0].tcp_port}"
    # When goodsd checks Redis as the service would, then everything it needs is allowed
    checked = goodsd(write_config(tmp_path, url, queue=queue), "check", "--redis")
    assert checked.returncode == 0, checked.stderr
    assert "acl user: goodsd; every command goodsd needs is allowed" in checked.stdout
    # When the user lacks +cluster|slots, then the node serving the queue cannot be looked up:
    # a refusal that names it
    acl_on_every_node(rule)
    client = connect(RedisConfig(url), "test", queue=queue)
    with pytest.raises(redis.ResponseError) as raised:
        refused_commands(Upkeep(client, queue))
    trouble = classify(raised.value)
    assert trouble is not None and trouble.kind is Kind.NO_PERMISSION
    assert "'cluster|slots'" in trouble.detail
    client.close()


@pytest.fixture
def replicated_cluster() -> Iterator[LocalCluster]:
    """A Cluster of its own for one test (which may kill a node): 3 primaries, a replica each."""
    with LocalCluster(3, replicas=1) as started:
        yield started


def done_on(node: LocalRedis, queue: str) -> int | None:
    """The queue's count of items done, on one node (a replica's too: READONLY); None while
    the node says the cluster is down (a failover under way)."""
    with node.client(single_connection_client=True) as client:
        try:
            client.execute_command("READONLY")
            return int(client.hget(f"goodsd:{{{queue}}}:stats", "done") or 0)
        except redis.exceptions.ClusterDownError:
            return None


def push_acknowledged(node: LocalRedis, queue: str, items: list[str]) -> None:
    """Push ``items`` to ``queue`` on ``node`` as goodsd push does (LPUSH, and count them),
    then WAIT on the same connection until its replica has them."""
    with node.client() as client:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(queue, *items)
        pipe.hincrby(f"goodsd:{{{queue}}}:stats", "pushed", len(items))
        pipe.execute_command("WAIT", 1, 5000)
        *_, acknowledged = pipe.execute()
    assert acknowledged == 1, "the replica did not acknowledge the push"


# The lines of one process (its log prefix) that say an outage began, and that it ended.
OUTAGE_BEGAN = re.compile(r"\[([^]]+)\] redis unavailable")
OUTAGE_ENDED = re.compile(r"\[([^]]+)\] redis available again")


def outages_ended(log: str) -> str | None:
    """``log``, if each process that said an outage began there also said that it ended."""
    ended = Counter(OUTAGE_ENDED.findall(log)) == Counter(OUTAGE_BEGAN.findall(log))
    return log if ended else None


@pytest.mark.slow
def test_a_primary_that_dies_is_followed_to_its_replica_and_nothing_is_lost(
    replicated_cluster, tmp_path, start_daemon, notify
):
    cluster = replicated_cluster
    # Given consumers at work on items that the primary serving their queue's slot pushed and
    # its replica acknowledged
    primary = cluster.nodes[0]
    (replica,) = cluster.replicas_of(primary)
    queue = queue_on(cluster, primary)
    out, items = tmp_path / "handled", 1500
    config = write_config(
        tmp_path,
        cluster.url,
        queue=queue,
        consumers={"handler": "sample_handlers:paced_record_to_file", "batch": 5},
    )
    env = {"TEST_OUT": str(out), "TEST_ITEM_SECONDS": "0.004"}
    daemon = start_daemon(config, notify=notify, env=env)
    notify.wait("READY", "1")
    everything = [f"item-{i}" for i in range(items)]
    push_acknowledged(primary, queue, everything)
    wait_for(lambda: len(lines(out)) >= 200, 20, "consumption under way")
    children = daemon.children()
    # When that primary dies
    began = time.monotonic()
    cluster.kill(primary)
    done_then = done_on(replica, queue) or 0
    # Then the cluster promotes its replica, and goodsd acknowledges items there
    wait_for(lambda: cluster.serving(queue) is replica, 30, "the cluster to promote the replica")
    promoted = time.monotonic() - began
    wait_for(
        lambda: (done_on(replica, queue) or 0) > done_then, 30, "goodsd's first ack on the replica"
    )
    followed = time.monotonic() - began
    # And every item is handled, at least once (an ack the replica never got runs it again)
    wait_for(lambda: set(lines(out)) == set(everything), 30, "every item handled")
    view = wait_for(
        lambda: (
            (v := json.loads(goodsd(config, "status", "--json").stdout))["in_flight"] == 0 and v
        ),
        10,
        "nothing left in flight",
    )
    assert (view["backlog"], view["dead"]) == (0, 0), view
    twice = sum(n - 1 for n in Counter(lines(out)).values())
    # And nobody restarted: each process said its outage once, and its end (a process whose
    # next call comes later, the master's housekeeping paused a second after each failure, may
    # say it only after the consumers finished)
    log = wait_for(lambda: outages_ended(daemon.log()), 15, "each outage said to have ended")
    assert daemon.children() == children, log
    assert "exited" not in log and "restarting" not in log and "Traceback" not in log, log
    began_in, ended_in = Counter(OUTAGE_BEGAN.findall(log)), Counter(OUTAGE_ENDED.findall(log))
    assert began_in and set(began_in.values()) == {1} and ended_in == began_in, log
    assert daemon.stop() == 0
    # (the figures the README gives: how soon the cluster and goodsd went on, and goodsd's
    # longest wait)
    longest, kind = max((float(s), was) for s, was in WAITED.findall(log))
    print(
        f"cluster primary killed: its replica promoted {promoted:.1f}s later; goodsd "
        f"acknowledged an item there {followed:.1f}s after the kill; its longest wait: "
        f"{longest:.1f}s ({kind}); {items} items handled, {twice} of them twice"
    )


@pytest.mark.slow
def test_wait_replicas_waits_for_the_replica_of_the_node_serving_the_queue(
    replicated_cluster, tmp_path, start_daemon, notify
):
    cluster = replicated_cluster
    # Given goodsd waiting for one replica, on a queue of the second primary
    primary = cluster.nodes[1]
    (replica,) = cluster.replicas_of(primary)
    queue = queue_on(cluster, primary)
    out = tmp_path / "handled"
    config = write_config(
        tmp_path,
        cluster.url,
        redis={"url": cluster.url, "wait_replicas": 1},
        queue=queue,
        consumers={"handler": "sample_handlers:paced_record_to_file"},
    )
    # Then check --redis finds the node serving the slot, with its replica
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 0, checked.stderr
    assert (
        f"deployment: cluster node 127.0.0.1:{primary.tcp_port} serves slot "
        f"{queue_slot(queue)} of queue {queue!r} (3 primaries; 1 replica(s) of this one)"
    ) in checked.stdout, checked.stdout
    # And warns, as a start does, that the node takes writes its replica has not acknowledged
    assert "takes writes that no replica has acknowledged" in checked.stderr, checked.stderr
    # When items are pushed while consumers run
    daemon = start_daemon(config, notify=notify, env={"TEST_OUT": str(out)})
    notify.wait("READY", "1")
    pushed = goodsd(config, "push", "a", "b", "c")
    assert pushed.returncode == 0, pushed.stderr
    # Then they are handled, and counted done on the replica too
    wait_for(lambda: sorted(lines(out)) == ["a", "b", "c"], 10, "the items handled")
    wait_for(lambda: done_on(replica, queue) == 3, 5, "the three counted done on the replica")
    children = daemon.children()
    # When the replica stops answering, and an item is pushed
    os.kill(replica.pid, signal.SIGSTOP)
    pushing: subprocess.Popen[str] | None = None
    try:
        pushing = subprocess.Popen(
            [sys.executable, "-m", "goodsd", "push", "-c", str(config), "d"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Then the settle of the item, once handled, waits for the replica (its WAIT of 1 s
        # fell short), and so does the push, which began before it
        daemon.wait_log(r"\[consumer \d pid \d+\] redis unavailable: too few replicas")
        assert pushing.poll() is None
        resumed = time.monotonic()
    except BaseException:
        if pushing is not None:  # a failed test leaves no push behind
            pushing.kill()
            pushing.wait()
        raise
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    # And both go on once the replica answers again, each item in and counted once
    out_text, err_text = pushing.communicate(timeout=30)
    assert pushing.returncode == 0, err_text
    assert out_text == f"pushed 1 item(s) to {queue!r}\n"
    daemon.wait_log(r"\[consumer \d pid \d+\] redis available again")
    settled = time.monotonic() - resumed
    wait_for(lambda: done_on(replica, queue) == 4, 5, "the fourth counted done on the replica")
    assert sorted(lines(out)) == ["a", "b", "c", "d"]
    log = daemon.log()
    assert daemon.children() == children, log
    assert "exited" not in log and "restarting" not in log and "Traceback" not in log, log
    assert daemon.stop() == 0
    # When the replica is stopped, then a push says its items are on the primary only, with
    # the exit status the README gives for that
    replica.stop()
    began = time.monotonic()
    result = goodsd(config, "push", "e")
    unreplicated = time.monotonic() - began
    assert_one_line_error(
        result,
        3,
        f"pushed 1 item(s) to {queue!r}, but the last 1 are on the redis primary only: 0 of 1 "
        f"replica(s) acknowledged them within {WAIT_PATIENCE:g}s",
    )
    # And check --redis finds the node serving the slot without its replica
    checked = goodsd(config, "check", "--redis")
    assert checked.returncode == 0, checked.stderr
    assert "(3 primaries; 0 replica(s) of this one)" in checked.stdout, checked.stdout
    assert "redis.wait_replicas is 1 but the redis primary has 0 replica(s)" in checked.stderr
    view = json.loads(goodsd(config, "status", "--json").stdout)
    assert (view["totals"]["pushed"], view["totals"]["done"], view["backlog"]) == (5, 4, 1)
    print(
        f"cluster wait_replicas 1: a settle went on {settled:.1f}s after its replica answered "
        f"again; with the replica stopped, push exited 3 after {unreplicated:.1f}s"
    )
