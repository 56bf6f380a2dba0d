"""The URL forms goodsd takes for one server, a Sentinel-managed primary and a Cluster: how each
is split, what the config refuses (without showing a secret), and the client each one builds
(without connecting)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.crc import key_slot
from redis.sentinel import SentinelConnectionPool

from goodsd.clusterslot import SlotPool, queue_slot
from goodsd.config import ConfigError, RedisConfig, parse
from goodsd.ops.common import display_url
from goodsd.redisconn import connect
from goodsd.redisurl import Deployment, Target
from goodsd.redisurl import parse as parse_url
from goodsd.sentinels import PrimaryConnection, PrimarySSLConnection
from goodsd.store import QueueKeys

MINIMAL = "consumers:\n  handler: app.tasks:handle\n"


def config_error(redis_section: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(MINIMAL + "redis:\n" + redis_section, "goodsd.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "deployment", "tls", "nodes", "service", "db"),
    [
        ("redis://h:6379/0", Deployment.SERVER, False, (), "", 0),
        ("rediss://h:6380/0", Deployment.SERVER, True, (), "", 0),
        ("unix:///run/redis.sock", Deployment.SERVER, False, (), "", 0),
        ("redis+sentinel://s1/goods", Deployment.SENTINEL, False, (("s1", 26379),), "goods", 0),
        (
            "redis+sentinel://s1:26380,10.0.0.2,[::1]:5000/goods/3",
            Deployment.SENTINEL,
            False,
            (("s1", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
            "goods",
            3,
        ),
        ("rediss+sentinel://s1/goods/", Deployment.SENTINEL, True, (("s1", 26379),), "goods", 0),
        ("redis+cluster://c1", Deployment.CLUSTER, False, (("c1", 6379),), "", 0),
        (
            "rediss+cluster://c1:7000,c2:7001/0",
            Deployment.CLUSTER,
            True,
            (("c1", 7000), ("c2", 7001)),
            "",
            0,
        ),
        ("REDIS+CLUSTER://c1:7000", Deployment.CLUSTER, False, (("c1", 7000),), "", 0),
    ],
)
def test_each_form_is_split_into_what_it_names(url, deployment, tls, nodes, service, db):
    target = parse_url(url)
    assert (target.deployment, target.tls, target.nodes) == (deployment, tls, nodes)
    assert (target.service, target.db) == (service, db)


def test_user_info_and_query_mean_what_they_mean_in_a_redis_url():
    # Given a Sentinel URL with the data nodes' user and password and TLS settings
    url = "rediss+sentinel://app:s%40cret@s1,s2/goods?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=none"
    target = parse_url(url)
    # Then they are read as redis-py reads them from a rediss:// URL (percent-decoded)
    assert target.options == {
        "username": "app",
        "password": "s@cret",
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_cert_reqs": "none",
    }
    # And the password stays out of the target's repr
    assert "s@cret" not in repr(target) and isinstance(target, Target)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h/0", "must start with redis://, rediss://, unix://, redis+sentinel://"),
        ("redis+sentinel:///goods", "needs at least one host"),
        ("redis+sentinel://s1,,s2/goods", "every host needs a name"),
        ("redis+sentinel://s1:0/goods", "each port must be a number between 1 and 65535"),
        ("redis+sentinel://s1:x/goods", "each port must be a number between 1 and 65535"),
        ("redis+sentinel://s!1/goods", "each host must be a host name or an IP address"),
        ("redis+sentinel://[::1]x/goods", "an IPv6 host in brackets may be followed only by"),
        ("redis+sentinel://s1", "needs the primary's service name"),
        ("redis+sentinel://s1/goods/x", "the database after the service name must be a number"),
        ("redis+sentinel://s1/goods/0/1", "the path is /service_name or /service_name/db"),
        ("redis+cluster://c1/1", "a cluster URL has no path but /0"),
        ("redis+cluster://c1?db=2", "a cluster has only database 0"),
        ("redis+cluster://c1?max_connections=many", "redis-py cannot use it: Invalid value"),
        ("redis+cluster://" + ",".join(f"c{i}" for i in range(65)), "names more than 64 hosts"),
    ],
)
def test_malformed_urls_are_refused_saying_why(url: str, reason: str):
    with pytest.raises(ValueError) as caught:
        parse_url(url)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379,s2:26379/goods",
        "rediss+sentinel://u:p@s1/goods/2?ssl_ca_certs=/etc/ca.pem",
        "redis+cluster://c1:7000,c2:7001",
        "rediss+cluster://c1?ssl_cert_reqs=none&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        "rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
    ],
)
def test_the_config_takes_every_form(url: str):
    assert parse(MINIMAL + f"redis:\n  url: '{url}'\n").redis.url == url


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "  url: 'redis+cluster://c1?socket_timeout=1'\n",
            "goodsd.yaml:4: redis.url: query parameter socket_timeout: set by goodsd",
        ),
        (
            "  url: 'redis+cluster://c1?ssl_certfile=/c.pem'\n",
            "goodsd.yaml:4: redis.url: query parameter ssl_certfile: "
            "not taken by a redis+cluster:// connection",
        ),
        (
            "  url: 'redis+sentinel://s1'\n",
            "goodsd.yaml:4: redis.url: needs the primary's service name, "
            "e.g. redis+sentinel://host1:26379,host2:26379/service_name",
        ),
        (
            "  url: redis://h/0\n  sentinel_username: watcher\n",
            "goodsd.yaml:5: redis.sentinel_username: "
            "only for a redis+sentinel:// or rediss+sentinel:// url",
        ),
        (
            "  url: redis+cluster://c1\n  sentinel_password_file: /etc/pw\n",
            "goodsd.yaml:5: redis.sentinel_password_file: "
            "only for a redis+sentinel:// or rediss+sentinel:// url",
        ),
        (
            "  wait_replicas: 101\n",
            "goodsd.yaml:4: redis.wait_replicas: must be between 0 and 100, got 101",
        ),
        (
            "  sentinel_password_file: etc/pw\n",
            "goodsd.yaml:4: redis.sentinel_password_file: must be an absolute path "
            "(the service runs in /, where a relative one means nothing), got etc/pw",
        ),
    ],
)
def test_the_config_refuses_what_cannot_work(section: str, message: str):
    assert config_error(section) == message


def test_no_refusal_shows_a_password():
    for url in (
        "redis+sentinel://app:hunter2@s1:99999/goods",
        "redis+cluster://:hunter2@c1/5",
        "redis+cluster://:hunter2@c1?ssl_certfile=/c.pem",
    ):
        assert "hunter2" not in config_error(f"  url: '{url}'\n")


def test_sentinel_settings_are_read():
    cfg = parse(
        MINIMAL + "redis:\n  url: redis+sentinel://s1/goods\n  sentinel_username: watcher\n"
        "  sentinel_password_file: /etc/goodsd/sentinel-password\n  wait_replicas: 1\n"
    )
    assert cfg.redis == RedisConfig(
        "redis+sentinel://s1/goods", None, "watcher", "/etc/goodsd/sentinel-password", 1
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis+sentinel://app:pw@s1,s2:26380/goods", "redis+sentinel://***@s1,s2:26380/goods"),
        ("rediss+cluster://:pw@c1:7000,c2?ssl_password=x", "rediss+cluster://***@c1:7000,c2"
         "?ssl_password=***"),
    ],
)  # fmt: skip
def test_shown_urls_hide_the_secrets(url: str, shown: str):
    assert display_url(url) == shown


def test_a_sentinel_url_builds_a_client_of_the_primary_with_its_own_sentinel_login(
    tmp_path: Path,
):
    # Given a Sentinel URL with the data nodes' password, and Sentinel's own login apart
    secret = tmp_path / "sentinel-password"
    secret.write_text("watch-word\n")
    cfg = RedisConfig(
        "redis+sentinel://:data-word@s1,s2:26380/goods/2",
        sentinel_username="watcher",
        sentinel_password_file=str(secret),
    )
    # When goodsd builds its client (nothing connects)
    client = connect(cfg, "test", socket_timeout=3.0)
    pool = client.connection_pool
    # Then its connections go to the primary named 'goods', with the data nodes' password
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "goods"
    assert pool.connection_class is PrimaryConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"]) == ("data-word", 2)
    assert kwargs["retry"].get_retries() == 0 and kwargs["socket_timeout"] == 3.0
    # And the sentinels are asked with Sentinel's own login, never retried behind goodsd's back
    manager = pool.sentinel_manager
    hosts = [s.connection_pool.connection_kwargs for s in manager.sentinels]
    assert [(h["host"], h["port"]) for h in hosts] == [("s1", 26379), ("s2", 26380)]
    assert {(h["username"], h["password"]) for h in hosts} == {("watcher", "watch-word")}
    assert all(h["retry"].get_retries() == 0 for h in hosts)


def test_a_tls_sentinel_url_speaks_tls_to_both():
    client = connect(RedisConfig("rediss+sentinel://s1/goods?ssl_cert_reqs=none"), "test")
    pool = client.connection_pool
    assert pool.connection_class is PrimarySSLConnection
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel.connection_class.__name__ == "SSLConnection"
    assert sentinel.connection_kwargs["ssl_cert_reqs"] == "none"


def test_a_cluster_url_builds_a_client_of_the_node_serving_the_queues_slot():
    # Given a Cluster URL
    cfg = RedisConfig("redis+cluster://:pw@c1:7000,c2:7001")
    # When goodsd builds its client for the queue 'orders' (nothing connects)
    client = connect(cfg, "test", queue="orders")
    pool = client.connection_pool
    # Then it follows the slot of 'orders', asking the nodes the URL names
    assert isinstance(pool, SlotPool)
    assert pool.owner.slot == key_slot(b"orders") and pool.owner.seeds == [
        ("c1", 7000),
        ("c2", 7001),
    ]
    assert pool.connection_kwargs["retry"].get_retries() == 0
    assert pool.connection_kwargs["password"] == "pw"
    # And without a queue there is no slot to follow
    with pytest.raises(ValueError, match="serves one queue"):
        connect(cfg, "test")


@pytest.mark.parametrize("queue", ["q", "goods2", "orders.eu", "a:b", "日本", "x" * 200])
def test_every_key_of_a_queue_is_in_the_queues_slot(queue: str):
    # Given every key goodsd uses for a queue (the ready list has no braces: it hashes by its
    # whole name, which is what the others' hash tag holds)
    keys = QueueKeys.of(queue)
    names = [getattr(keys, f) for f in ("ready", "consumers", "masters", "producers", "attempts",
             "retry", "dead", "stats", "producer_lock", "producer_wake")]  # fmt: skip
    names += [keys.inflight("h-1-x"), keys.lease("h-1-x"), keys.settled("h-1-x")]
    names += [keys.pushed("h-1-y")]
    # Then they all hash to the queue's slot
    assert {key_slot(name.encode()) for name in names} == {queue_slot(queue)}
