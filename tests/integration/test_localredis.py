"""The private redis-server that every other integration test and the benchmarks stand on."""

import os

import pytest
import redis

from goodsd.localredis import LocalRedis, RedisServerMissing, find_redis_server


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
