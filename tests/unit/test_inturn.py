"""Hosts asked in turn within a budget (goodsd.inturn), and the two lookups that use it:
Sentinel's primary (goodsd.sentinels) and a Cluster slot's node (goodsd.clusterslot), with
stand-in hosts."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import redis
from redis.sentinel import MasterNotFoundError

from goodsd.clusterslot import NotACluster, SlotNotServed, SlotOwner
from goodsd.inturn import AskingOrder, within_budget
from goodsd.sentinels import NotASentinel, Sentinels


class SteppingClock:
    """Each reading is ``step`` seconds after the one before."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_hosts_are_given_while_the_budget_lasts():
    # Given hosts each of which takes 1 s to ask, and a budget of 2.5 s
    clock = SteppingClock(1.0)
    # Then the hosts asked before the budget ran out are given, and no more
    assert list(within_budget(["a", "b", "c", "d", "e"], 2.5, clock)) == ["a", "b", "c"]


def test_the_first_host_is_always_given():
    assert list(within_budget(["a", "b"], 0.0, SteppingClock(10.0))) == ["a"]
    assert list(within_budget([], 1.0, SteppingClock(1.0))) == []


def test_every_host_is_given_when_they_answer_quickly():
    hosts = [f"h{i}" for i in range(64)]
    assert list(within_budget(hosts, 2.0, SteppingClock(0.001))) == hosts


def test_hosts_that_failed_are_asked_last_the_oldest_failure_first():
    order = AskingOrder[str]()
    order.note_failure("c")
    order.note_failure("a")
    assert order.of(["a", "b", "c", "d"]) == ["b", "d", "c", "a"]
    order.note_failure("c")
    assert order.of(["a", "b", "c", "d"]) == ["b", "d", "a", "c"]
    order.note_answer("a")
    assert order.of(["a", "b", "c", "d"]) == ["a", "b", "d", "c"]
    # hosts no longer given are left out
    assert order.of(["b", "c"]) == ["b", "c"]


def test_successive_lookups_reach_every_host():
    # Given 10 hosts of which only the last answers, and a budget that asks 2 per lookup
    hosts = [f"h{i}" for i in range(10)]
    order = AskingOrder[str]()
    lookups = 0
    while True:
        lookups += 1
        asked = list(within_budget(order.of(hosts), 1.5, SteppingClock(1.0)))
        if "h9" in asked:
            break
        for host in asked:
            order.note_failure(host)
    # Then the answering host is asked by the fifth lookup: none is asked twice before it
    assert lookups == 5


# -- Sentinel --------------------------------------------------------------------------------

PRIMARY = {"ip": "10.0.0.9", "port": 6379, "is_master": True, "is_sdown": False}
PRIMARY |= {"is_odown": False, "num-other-sentinels": 2}


def sentinel(port: int, answer: object) -> SimpleNamespace:
    """A stand-in sentinel whose SENTINEL MASTERS returns ``answer``, or raises it."""

    def masters() -> object:
        if isinstance(answer, Exception):
            raise answer
        return answer

    pool = SimpleNamespace(connection_kwargs={"host": "127.0.0.1", "port": port})
    return SimpleNamespace(connection_pool=pool, sentinel_masters=masters)


GOOD = {"goods": PRIMARY}
REFUSES = redis.AuthenticationError("invalid username-password pair")
SILENT = redis.TimeoutError("Timeout reading from socket")
DATA_NODE = redis.ResponseError("unknown command 'SENTINEL'")


def sentinels(budget: float, *answers: object) -> Sentinels:
    group = Sentinels([("127.0.0.1", 1)], budget=budget)
    group.sentinels = [sentinel(26379 + n, answer) for n, answer in enumerate(answers)]
    return group


def test_a_sentinel_that_answers_after_one_that_refuses_is_found():
    # Given a sentinel that refuses goodsd's login, then one that names the primary
    group = sentinels(math.inf, REFUSES, GOOD)
    # Then the primary is found
    assert group.discover_master("goods") == ("10.0.0.9", 6379)


def test_a_refusal_or_a_data_node_is_fatal_only_once_every_sentinel_was_asked():
    # Given a lookup whose budget runs out after the first host: a refusal or a data node
    # there is an outage (the next may answer)
    for first in (REFUSES, DATA_NODE):
        with pytest.raises(MasterNotFoundError, match="1 more not asked this time"):
            sentinels(0.0, first, GOOD).discover_master("goods")
    # When every sentinel was asked, then refusals by all that answered are the login's fault,
    # and data nodes the URL's, unless a host was only away (it may be the sentinel)
    with pytest.raises(redis.AuthenticationError):
        sentinels(math.inf, REFUSES, REFUSES, SILENT).discover_master("goods")
    with pytest.raises(NotASentinel):
        sentinels(math.inf, DATA_NODE, DATA_NODE).discover_master("goods")
    for hosts in ((DATA_NODE, SILENT), (SILENT, SILENT)):
        with pytest.raises(MasterNotFoundError):
            sentinels(math.inf, *hosts).discover_master("goods")


def test_sentinels_that_answer_no_primary_in_a_failover_stay_ahead_of_silent_ones():
    # Given two sentinels known to be silent, and a live one that knows no primary for now
    group = sentinels(math.inf, SILENT, SILENT, {})
    silent_1, silent_2, live = group.sentinels
    group.order.note_failure(silent_1)
    group.order.note_failure(silent_2)
    # When a lookup asks them all and finds no primary
    with pytest.raises(MasterNotFoundError):
        group.discover_master("goods")
    # Then the live one is still asked first next time, and names the primary once it has one
    assert group.order.of(group.sentinels)[0] is live
    live.sentinel_masters = lambda: GOOD
    assert group.discover_master("goods") == ("10.0.0.9", 6379)


def test_a_sentinel_that_failed_is_asked_last_the_next_time():
    # Given a silent sentinel first and one that names the primary
    group = sentinels(math.inf, SILENT, GOOD)
    silent, good = group.sentinels
    asked: list[object] = []
    for stand_in in (silent, good):
        masters = stand_in.sentinel_masters
        stand_in.sentinel_masters = lambda s=stand_in, m=masters: asked.append(s) or m()
    # When the primary is looked up twice, then the silent one is asked only the first time
    group.discover_master("goods")
    group.discover_master("goods")
    assert asked == [silent, good, good]


# -- Cluster ---------------------------------------------------------------------------------


def test_cluster_nodes_learnt_before_are_queried_when_the_url_s_node_is_silent():
    # Given a URL naming one node, and two primaries the cluster listed before
    seed, known = ("10.0.0.1", 7000), [("10.0.0.2", 7000), ("10.0.0.3", 7000)]
    owner = SlotOwner([seed], 42, {}, budget=0.0)
    owner.known = list(known)
    asked: list[tuple[str, int]] = []

    def query(node: tuple[str, int]) -> tuple[str, int]:
        asked.append(node)
        if node == seed:
            raise redis.TimeoutError("Timeout reading from socket")
        return known[1]

    owner._query = query  # type: ignore[method-assign]
    # When the URL's node is silent and a lookup's budget covers one node
    with pytest.raises(SlotNotServed, match="2 more not queried this time"):
        owner.find()
    # Then the next lookup queries a primary learnt before, and finds the slot's node
    assert owner.find() == known[1]
    assert asked == [seed, known[0]]


def test_a_node_that_is_no_cluster_node_is_fatal_only_when_every_node_answered():
    # Given a URL naming a node that is away and a server that is no cluster node
    stranger = NotACluster("10.0.0.2:6379 is not a cluster node: use a redis:// URL")
    answers = {("10.0.0.1", 7000): redis.TimeoutError("Timeout"), ("10.0.0.2", 6379): stranger}

    def query(node: tuple[str, int]) -> tuple[str, int]:
        raise answers[node]

    owner = SlotOwner(list(answers), 42, {}, budget=math.inf)
    owner._query = query  # type: ignore[method-assign]
    # Then it is an outage while the node is away (it may be the cluster), and the URL's
    # fault once every node answered
    with pytest.raises(SlotNotServed):
        owner.find()
    answers[("10.0.0.1", 7000)] = stranger
    with pytest.raises(NotACluster):
        owner.find()
