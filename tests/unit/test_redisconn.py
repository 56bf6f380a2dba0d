"""The client goodsd builds: settings that delivery safety depends on (no connection made)."""

from __future__ import annotations

from goodsd.config import RedisConfig
from goodsd.redisconn import connect


def test_clients_never_retry_behind_goodsds_back():
    # Given a client as every goodsd process builds it
    client = connect(RedisConfig(url="unix:///nonexistent.sock"), "test", socket_timeout=2.0)
    # Then the library retries nothing (a repeated claim would take items nobody sees)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["retry"].get_retries() == 0
    # And connecting waits no longer than any other call
    assert kwargs["socket_connect_timeout"] == 2.0
