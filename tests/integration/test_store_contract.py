"""The worker store's contract."""

from __future__ import annotations

from goodsd.store import RedisConsumerStore, Registration, RetryPolicy, Settlement, Upkeep
from goodsd.store.records import ENVELOPE_HEAD

POLICY = RetryPolicy(retries=2, delay=60.0)


def test_any_subset_of_what_is_held_can_be_settled(r):
    # Given a consumer holding three items
    store = RedisConsumerStore(r, "q")
    store.register("c1", Registration(host="h", pid=1), 30)
    r.lpush("q", b"good1", b"good2", b"good3")
    claimed = store.claim("c1", 3, 30, 0)
    # When it settles the middle one alone, as done
    store.settle("c1", Settlement("s1", done=(claimed[1],), kept=2), POLICY)
    # Then it holds the other two, oldest first, and one item is done
    assert [d.payload for d in store.held("c1")] == [b"good1", b"good3"]
    assert r.hget("goodsd:{q}:stats", "done") == b"1"


def test_recovery_counts_a_failed_attempt_for_each_item_that_was_running(r):
    # Given a consumer that died holding three items, running the first and the last
    store = RedisConsumerStore(r, "q")
    store.register("c1", Registration(host="h", pid=1), 30)
    r.lpush("q", b"good1", b"good2", b"good3")
    store.claim("c1", 3, 30, 0)
    # When its master recovers them, naming the two that were running
    count = Upkeep(r, "q").recover("c1", running=[0, 2], error="worker died", policy=POLICY)
    # Then each of those counts a failed attempt and waits for its retry, the other is back
    # at the pop end, and the consumer is forgotten
    assert count == 3
    waiting = sorted(value[ENVELOPE_HEAD:] for value in r.zrange("goodsd:{q}:retry", 0, -1))
    assert waiting == [b"good1", b"good3"]
    assert sorted(int(n) for n in r.hvals("goodsd:{q}:attempts")) == [1, 1]
    assert r.lrange("q", 0, -1) == [b"good2"]
    assert r.hlen("goodsd:{q}:consumers") == 0
