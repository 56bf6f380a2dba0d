"""The private redis-server that every other integration test and the benchmarks stand on."""

import os

import pytest
import redis
from support import wait_for

from goodsd.localredis import LocalCluster, LocalRedis, RedisServerMissing, find_redis_server


def test_serves_on_a_unix_socket_and_cleans_up() -> None:
    # Given a fresh LocalRedis
    with LocalRedis() as server:
        # Then it answers on its unix socket, with eviction off
        assert server.url == f"unix://{server.socket_path}"
        client = server.client(decode_responses=True)
        assert client.ping()
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        directory = server.directory
    # And leaving the block stops it and removes its temp dir
    assert server.pid is None
    assert not os.path.exists(directory)


def test_stop_is_idempotent_and_restart_reuses_the_socket() -> None:
    with LocalRedis() as server:
        client = server.client()
        client.set("k", "v")
        # When it is stopped (twice)
        server.stop()
        server.stop()
        # Then clients cannot reach it
        with pytest.raises(redis.ConnectionError):
            client.ping()
        # When it is started again on the same socket path
        server.start()
        # Then the same client reconnects to an empty server (nothing is persisted)
        assert client.ping()
        assert client.get("k") is None


def test_missing_binary_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    # Given a PATH without redis-server
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    # Then looking it up and starting a server both fail with an install hint
    with pytest.raises(RedisServerMissing, match="apt-get install redis-server"):
        find_redis_server()
    with pytest.raises(RedisServerMissing, match="not found on PATH"), LocalRedis():
        pass


def test_a_cluster_with_replicas_starts_each_in_sync_and_cleans_up() -> None:
    # Given a Cluster of 2 primaries with a replica each
    with LocalCluster(2, replicas=1) as cluster:
        primaries, replicas = cluster.nodes[:2], cluster.nodes[2:]
        # Then each primary serves slots and has its own replica, which every node knows
        assert len(replicas) == 2 and cluster.url.count(",") == 3
        assert {port for view in cluster.slots_seen() for port in view.values()} == {
            node.tcp_port for node in primaries
        }
        assert [cluster.replicas_of(node) for node in primaries] == [[replicas[0]], [replicas[1]]]
        assert cluster.replication_seen()[0] == {
            replica.tcp_port: primary.tcp_port
            for primary, replica in zip(primaries, replicas, strict=True)
        }
        # And a write its replica acknowledged is there, and leaves it with a flush
        queue = "q"
        primary = cluster.serving(queue)
        (replica,) = cluster.replicas_of(primary)
        with primary.client() as client:
            client.lpush(queue, "a")
            assert client.execute_command("WAIT", 1, 5000) == 1
        with replica.client(single_connection_client=True) as client:
            client.execute_command("READONLY")
            assert client.lrange(queue, 0, -1) == [b"a"]
            cluster.flush()
            wait_for(lambda: client.exists(queue) == 0, 5, "the flush on the replica")
        directory = cluster.directory
    # And leaving the block stops every node and removes the temp dir
    assert all(node.pid is None for node in cluster.nodes)
    assert not os.path.exists(directory)
