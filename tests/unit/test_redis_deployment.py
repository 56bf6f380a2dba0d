"""What goodsd makes of what a Redis server says it is: a URL of the wrong form, and the
replication settings that can lose items in a failover (no Redis: the server's answers are
given)."""

from __future__ import annotations

import pytest

from goodsd.config import RedisConfig
from goodsd.deployment import Facts, replication_warnings, server_problem, wrong_form
from goodsd.redisurl import parse

SHOWN = "redis://10.0.0.5:7000/0"


@pytest.mark.parametrize(
    ("url", "told", "says"),
    [
        ("redis://h/0", Facts("7.0.15", "cluster", "primary"), "reaches a Redis Cluster node: use "
         "redis+cluster://host1:6379,host2:6379"),
        ("unix:///run/r.sock", Facts("7.0.15", "standalone", "replica"), "reaches a replica, "
         "which refuses writes: use the primary's address, or redis+sentinel://"),
        ("redis://h/0", Facts("7.0.15", "standalone", "primary"), None),
        ("redis://h/0", Facts(), None),  # the server would not say
        ("redis+cluster://h", Facts("7.0.15", "cluster", "primary"), None),
        ("redis+sentinel://h/goods", Facts("7.0.15", "standalone", "replica"), None),
    ],
)  # fmt: skip
def test_a_one_server_url_must_reach_a_primary_outside_a_cluster(url, told, says):
    problem = wrong_form(parse(url), told, SHOWN)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem and SHOWN in problem


@pytest.mark.parametrize(
    ("url", "told", "says"),
    [
        ("redis://h/0", Facts("6.0.16", "standalone", "primary"),
         "redis 6.0.16 is too old: goodsd needs 6.2 or later (BLMOVE)"),
        ("redis+sentinel://h/goods", Facts("5.0.7", "standalone", "primary"),
         "redis 5.0.7 is too old"),
        ("redis://h/0", Facts("6.2.0", "standalone", "primary"), None),
        ("redis://h/0", Facts("7.0.15", "sentinel", None), "reaches a Redis Sentinel: use "
         "redis+sentinel://host1:26379,host2:26379/service_name"),
    ],
)  # fmt: skip
def test_goodsd_runs_only_on_a_server_of_the_right_form_and_version(url, told, says):
    problem = server_problem(parse(url), told, SHOWN)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem


def replication(replicas: int, min_replicas: bool, role: str = "master") -> dict[str, object]:
    """INFO replication as redis-py reads it."""
    info: dict[str, object] = {"role": role, "connected_slaves": replicas}
    if min_replicas:
        info["min_slaves_good_slaves"] = replicas
    return info


@pytest.mark.parametrize(
    ("url", "info", "wait", "warned"),
    [
        # a lone server: no failover to lose writes in
        ("redis://h/0", replication(0, False), 0, []),
        # replicas, or Sentinel, with writes that no replica has
        ("redis://h/0", replication(2, False), 0, ["takes writes that no replica"]),
        ("redis+sentinel://s/goods", replication(0, False), 0, ["takes writes that no replica"]),
        # min-replicas-to-write set
        ("redis+sentinel://s/goods", replication(2, True), 0, []),
        # waiting for more replicas than there are
        ("redis+sentinel://s/goods", replication(1, True), 2, ["wait_replicas is 2 but"]),
        # a replica says nothing of this
        ("redis://h/0", replication(0, False, "slave"), 3, []),
    ],
)
def test_what_can_lose_items_in_a_failover_is_warned_about(url, info, wait, warned):
    warnings = replication_warnings(info, RedisConfig(url, wait_replicas=wait))
    assert len(warnings) == len(warned)
    for warning, part in zip(warnings, warned, strict=True):
        assert part in warning
