"""The worker store's contract."""

from __future__ import annotations

from goodsd.store import RedisConsumerStore, Registration, RetryPolicy, Settlement

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
