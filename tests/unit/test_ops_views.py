"""The operator commands' pure parts: line splitting, rates, the status and dead-list views,
the metrics text, argument checks. No Redis, no processes."""

from __future__ import annotations

import base64
import json
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from goodsd import cli, metrics
from goodsd.ops import dead, push, status
from goodsd.ops.common import OpsError, display_url, span, table
from goodsd.store import (
    STAT_FIELDS,
    ConsumerLoad,
    DeadRecord,
    MasterEntry,
    Overview,
    ProducerRecord,
)

NOW = 1_700_000_000.0


# -- push ------------------------------------------------------------------------------------


def test_lines_split_across_blocks_are_joined_and_line_endings_dropped():
    # Given input arriving in blocks that cut lines and mix \n and \r\n endings
    tally = push.Tally()
    blocks = [b"good1\ngo", b"od2\r\n\n", b"good3\r", b"\ngood4"]
    # When it is split into items
    items = [item for group in push.split_lines(blocks, tally) for item in group]
    # Then each line is one item, without its ending, the empty line skipped and counted
    assert items == [b"good1", b"good2", b"good3", b"good4"]
    assert tally.skipped == 1
    assert tally.read == sum(len(b) for b in blocks)


def test_a_carriage_return_inside_a_line_stays_in_the_item():
    items = [i for g in push.split_lines([b"a\rb\n"], push.Tally()) for i in g]
    assert items == [b"a\rb"]


# -- status ----------------------------------------------------------------------------------


def _stats(**values: int) -> dict[str, int]:
    return {**dict.fromkeys(STAT_FIELDS, 0), **values}


def test_rates_are_the_counter_difference_per_second():
    before = status.Sample(_stats(done=100, failed=10, pushed=50), at=10.0)
    after = status.Sample(_stats(done=300, failed=15, pushed=50), at=12.0)
    assert status.rates(before, after) == {
        "done_per_s": 100.0,
        "failed_per_s": 2.5,
        "pushed_per_s": 0.0,
        "over_s": 2.0,
    }


def test_a_counter_reset_gives_a_zero_rate_not_a_negative_one():
    before = status.Sample(_stats(done=500), at=1.0)
    after = status.Sample(_stats(done=3), at=2.0)
    assert status.rates(before, after)["done_per_s"] == 0.0


def _view(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "queue": "goods2",
        "url": "unix:///run/redis.sock",
        "overview": Overview(
            backlog=1234, in_flight=7, retry_waiting=3, dead=2, stats=_stats(done=99)
        ),
        "loads": [
            ConsumerLoad("web1-20-aa", "web1", 20, 5, 28.25),
            ConsumerLoad("web2-30-bb", "web2", 30, 2, None),
        ],
        "masters": {
            "web1-10": MasterEntry(
                host="web1",
                pid=10,
                seen=NOW - 1,
                started=NOW - 75,
                version="0.1.0",
                consumers=4,
                producers=1,
            ),
            "old-11": MasterEntry(host="old", pid=11, seen=NOW - 600, started=NOW - 9000),
        },
        "producers": {
            "web1-40": ProducerRecord(
                host="web1",
                pid=40,
                state="active",
                pushed=5000,
                lock=True,
                updated=NOW - 2,
            ),
        },
        "rate": {"done_per_s": 12.5, "failed_per_s": 0.5, "pushed_per_s": 13.0, "over_s": 1.0},
        "now": NOW,
    }
    args.update(overrides)
    return status.build(**args)  # type: ignore[arg-type]


def test_status_data_has_self_explaining_keys_and_only_live_masters():
    view = _view()
    assert view["backlog"] == 1234
    assert view["in_flight"] == 7
    assert view["retry_waiting"] == 3
    assert view["dead"] == 2
    assert view["totals"]["done"] == 99  # type: ignore[index]
    masters = view["masters"]
    assert [m["pid"] for m in masters] == [10]  # type: ignore[union-attr]
    assert masters[0]["up_s"] == 75.0  # type: ignore[index]
    consumers = view["consumers"]
    assert consumers[1] == {  # type: ignore[index]
        "id": "web2-30-bb",
        "host": "web2",
        "pid": 30,
        "in_flight": 2,
        "running": None,  # no live master reports it
        "lease_left_s": None,
    }
    assert view["producers"][0]["lock"] is True  # type: ignore[index]
    json.dumps(view)  # plain data all the way down


def test_status_view_is_compact_and_aligned():
    text = status.render(_view())
    lines = text.splitlines()
    assert "queue 'goods2' on unix:///run/redis.sock" in lines[0]
    summary = next(line for line in lines if line.startswith("  backlog"))
    assert "1234" in summary and "12.5/s" in summary
    # numbers of the summary end in the same column
    counts = [line for line in lines if line.lstrip().startswith(("backlog", "in flight", "dead"))]
    assert (
        len(
            {line.index(str(n)) + len(str(n)) for line, n in zip(counts, (1234, 7, 2), strict=True)}
        )
        == 1
    )
    assert "masters: 1 live" in text
    assert "consumers: 2, holding 7 item(s)" in text
    assert "expired" in text  # web2's lease is gone
    assert "held" in text  # the producer holding the singleton lock
    assert "old" not in text.split("masters:")[1].split("consumers:")[0]


def test_status_shows_items_running_per_consumer_as_its_master_reports_them():
    # Given a live master that reports 3 items running in one of its consumers
    live = MasterEntry(host="web1", pid=10, seen=NOW - 1, running={"web1-20-aa": 3})
    view = _view(masters={"web1-10": live})
    # Then that consumer shows 3 running, and one no live master reports shows none known
    assert [c["running"] for c in view["consumers"]] == [3, None]  # type: ignore[union-attr]
    rows = status.render(view).split("consumers:")[1].splitlines()
    assert rows[1].split() == ["HOST", "PID", "ITEMS", "RUNNING", "LEASE", "LEFT"]
    assert rows[2].split()[:4] == ["web1", "20", "5", "3"]
    assert rows[3].split()[:4] == ["web2", "30", "2", "-"]


def test_status_view_without_workers_says_so():
    text = status.render(_view(loads=[], masters={}, producers={}, rate=None))
    assert "masters: none live" in text
    assert "consumers: none registered" in text
    assert "producers" not in text
    assert "measuring" in text


# -- dead ------------------------------------------------------------------------------------


def test_dead_list_shows_newest_first_with_errors_on_one_line():
    records = [
        DeadRecord(item=b"good7", error="ValueError: bad\nvalue", attempts=3, at=NOW - 30),
        DeadRecord(item=b"\xff\x00", error="x", attempts=1, at=NOW - 4000),
        DeadRecord(item=b"z" * 100, error="", attempts=0, at=0),
    ]
    text = dead.render_list(records, total=10, now=NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["WHEN", "ATTEMPTS", "ITEM", "LAST", "ERROR"]
    assert "30s ago" in lines[1] and "good7" in lines[1] and "ValueError: bad\\nvalue" in lines[1]
    assert "base64:/wA=" in lines[2] and "1h06m ago" in lines[2]
    assert "z" * 37 + "..." in lines[3]
    assert lines[4] == "(3 newest of 10 dead record(s))"
    # And the item shown cut is given whole, as the command that requeues it
    assert lines[5:] == ["requeue an item shown cut with:", "  goodsd dead requeue " + "z" * 100]


def test_the_requeue_commands_name_the_config_file_unless_it_is_the_default():
    records = [DeadRecord(item=bytes(range(64)), attempts=1)]
    text = dead.render_list(records, total=1, now=NOW, config_path="/srv/my goods.yaml")
    assert text.splitlines()[-1].startswith("  goodsd dead requeue -c '/srv/my goods.yaml' base64:")


@pytest.mark.parametrize(
    ("item", "argument"),
    [
        (b"good7", "good7"),
        ("goodé 7".encode(), "goodé 7"),
        (b"caf\xe9", "base64:Y2Fm6Q=="),  # not UTF-8
        (b"a\nb", "base64:YQpi"),  # a control character
        (b"-x", "base64:LXg="),  # would read as an option
        (b"-5", "base64:LTU="),
        (b" good7", "base64:IGdvb2Q3"),  # a space at either end would be lost
        (b"good7 ", "base64:Z29vZDcg"),
        (b"", "base64:"),
        (b"base64:Y2Fm6Q==", "base64:YmFzZTY0OlkyRm02UT09"),  # the prefix itself, literally
    ],
)
def test_each_item_has_one_requeue_argument(item, argument):
    assert dead.requeue_argument(item) == argument
    assert dead.item_from_argument(argument) == item


@pytest.mark.parametrize("seed", range(20))
def test_any_item_comes_back_from_its_requeue_argument(seed):
    # Given items of random bytes, of random text, and of text made to look like the prefix
    rng = random.Random(seed)
    text = "".join(rng.choice("ab -:=é\t\n\x1b\u202e") for _ in range(rng.randint(0, 12)))
    items = [
        rng.randbytes(rng.randint(0, 64)),
        text.encode(),
        ("base64:" + text).encode(),
        base64.b64encode(rng.randbytes(6)),
    ]
    for item in items:
        # Then its argument names it exactly, and reads as one shell word's worth of text
        argument = dead.requeue_argument(item)
        assert dead.item_from_argument(argument) == item
        assert argument.isprintable() and argument == argument.strip()
        assert not argument.startswith("-")


def test_a_base64_argument_that_is_not_base64_is_refused():
    with pytest.raises(OpsError, match="not valid base64"):
        dead.item_from_argument("base64:not base64!")


def test_empty_dead_list():
    assert dead.render_list([], total=0, now=NOW) == "the dead list is empty\n"


@pytest.mark.parametrize(
    ("raw", "item"),
    [
        (b'{"item": "good\\u00e9", "error": "", "attempts": 1}', "goodé".encode()),
        (b'{"item_b64": "/wA=", "error": "", "attempts": 1}', b"\xff\x00"),
        (b"plain text someone pushed", b"plain text someone pushed"),
        (b"\xff not json", b"\xff not json"),
    ],
)
def test_dead_payload_is_the_item_byte_for_byte(raw, item):
    assert DeadRecord.decode(raw).item == item


# -- small helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.44, "0.4s"), (12, "12s"), (185, "3m05s"), (7800, "2h10m"), (4 * 86400 + 3 * 3600, "4d03h")],
)
def test_span(seconds, text):
    assert span(seconds) == text


def test_table_aligns_numbers_right_and_text_left():
    assert table(["HOST", "PID"], [["a", 5], ["bbbb", 1234]]) == [
        "  HOST   PID",
        "  a        5",
        "  bbbb  1234",
    ]


def test_display_url_hides_the_password():
    assert display_url("redis://:secret@db:6379/0") == "redis://***@db:6379/0"


# -- metrics ---------------------------------------------------------------------------------


def _scrape(snapshot: metrics.Snapshot | None) -> str:
    class Source:
        def collect(self):
            return metrics.collect(snapshot)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Source())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_metrics_text_from_a_snapshot():
    snapshot = metrics.Snapshot(
        queue="goods2",
        overview=Overview(12, 3, 4, 5, _stats(done=100, failed=7, dead=5)),
        children=(("consumer", "running", 4), ("consumer", "backoff", 1)),
        restarts=2,
        producer_paused=True,
        reload_ok=False,
    )
    text = _scrape(snapshot)
    for line in (
        'goodsd_redis_up{queue="goods2"} 1.0',
        'goodsd_queue_backlog{queue="goods2"} 12.0',
        'goodsd_queue_in_flight{queue="goods2"} 3.0',
        'goodsd_queue_retry_waiting{queue="goods2"} 4.0',
        'goodsd_queue_dead{queue="goods2"} 5.0',
        'goodsd_queue_items_done_total{queue="goods2"} 100.0',
        'goodsd_queue_items_failed_total{queue="goods2"} 7.0',
        'goodsd_queue_items_dead_total{queue="goods2"} 5.0',
        'goodsd_children{role="consumer",state="running"} 4.0',
        'goodsd_children{role="consumer",state="backoff"} 1.0',
        "goodsd_child_restarts_total 2.0",
        "goodsd_producer_paused 1.0",
        "goodsd_last_reload_success 0.0",
    ):
        assert line in text.splitlines(), line


def test_metrics_without_redis_keep_the_master_figures():
    snapshot = metrics.Snapshot("q", None, (), 0, False, True)
    text = _scrape(snapshot)
    assert 'goodsd_redis_up{queue="q"} 0.0' in text
    assert "goodsd_queue_backlog" not in text
    assert "goodsd_last_reload_success 1.0" in text


def test_no_snapshot_yet_means_no_metrics():
    assert _scrape(None) == ""


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["push", "--wait-below", "0", "x"],
        ["push", "--wait-below", "many", "x"],
        ["status", "--watch", "0"],
        ["dead", "list", "--limit", "0"],
        ["dead", "requeue"],
        ["dead", "requeue", "--all", "good7"],
        ["dead"],
        ["demo", "--consumers", "0"],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
