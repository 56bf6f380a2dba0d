"""Failed items are retried after their delay, then dead-lettered with their error."""

from __future__ import annotations

import json

from support import wait_for


def test_failing_item_is_retried_then_dead(r, make_config, start_daemon, notify):
    # Given consumers whose handler always fails, with one retry after 300 ms
    config = make_config(
        consumers={"handler": "sample_handlers:fail", "retries": 1, "retry_delay": "300ms"}
    )
    start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the same item is pushed twice (two distinct deliveries)
    r.lpush("q", "good7", "good7")
    # Then both copies end dead after 2 attempts each, with the handler's error
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 2, 15, "two dead records")
    records = [json.loads(x) for x in r.lrange("goodsd:{q}:dead", 0, -1)]
    assert [rec["item"] for rec in records] == ["good7", "good7"]
    assert all(rec["attempts"] == 2 for rec in records)
    assert all(rec["error"] == "ValueError: cannot handle good7" for rec in records)
    stats = r.hgetall("goodsd:{q}:stats")
    assert int(stats[b"failed"]) == 4 and int(stats[b"retried"]) == 2 and int(stats[b"dead"]) == 2
    # And nothing is left waiting: no retry entries, no attempts, nothing in flight
    assert r.zcard("goodsd:{q}:retry") == 0
    assert r.hlen("goodsd:{q}:attempts") == 0
    assert r.llen("q") == 0


def test_malformed_json_goes_straight_to_dead(r, make_config, start_daemon, notify):
    # Given consumers decoding JSON
    config = make_config(consumers={"handler": "sample_handlers:record", "decode": "json"})
    start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When a good and a malformed item are pushed
    r.lpush("q", '{"id": 1}', "{not json")
    # Then the good one is handled and the bad one is dead at its first attempt, with the reason
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, 10, "a dead record")
    record = json.loads(r.lindex("goodsd:{q}:dead", 0))
    assert record["item"] == "{not json"
    assert record["attempts"] == 1
    assert record["error"].startswith("malformed: not JSON")
    wait_for(lambda: r.llen("test:handled") == 1, 10, "the good item handled")


def test_json_nested_too_deeply_is_malformed_not_a_handler_failure(
    r, make_config, start_daemon, notify
):
    # Given consumers decoding JSON, with retries to spare
    config = make_config(
        consumers={"handler": "sample_handlers:record", "decode": "json", "retries": 3}
    )
    start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When items nested deeper than any decoder's stack arrive
    r.lpush("q", "[" * 100_000, '{"a":' * 50_000)
    # Then each is dead at its first attempt as malformed, and nothing is retried
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 2, 10, "two dead records")
    records = [json.loads(x) for x in r.lrange("goodsd:{q}:dead", 0, -1)]
    assert [rec["attempts"] for rec in records] == [1, 1]
    assert all(rec["error"] == "malformed: not JSON: nested too deeply" for rec in records)
    assert int(r.hget("goodsd:{q}:stats", "retried") or 0) == 0
