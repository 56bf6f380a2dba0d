"""goodsd status: the queue, its consumers, masters and producers from Redis; --json and
--watch; the masters registry a running master keeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ops_cli import assert_one_line_error, goodsd
from support import wait_for


def status_json(config) -> dict:
    result = goodsd(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_of_a_running_daemon(r, make_config, start_daemon, notify):
    # Given a daemon whose two consumers each sit on one slow item, with more waiting
    config = make_config(
        consumers={"handler": "sample_handlers:hang", "batch": 1},
        supervisor={"graceful_timeout": "500ms"},
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", *[f"good{i}" for i in range(10)])
    wait_for(lambda: r.llen("test:started") == 2, 10, "both consumers busy")
    wait_for(lambda: status_json(config)["masters"], 10, "the master's registry entry")
    # When the operator asks for the status as JSON
    view = status_json(config)
    # Then it shows the backlog, what each consumer holds and its lease, and the live master
    assert (view["backlog"], view["in_flight"], view["retry_waiting"], view["dead"]) == (8, 2, 0, 0)
    pids = {c["pid"] for c in view["consumers"]}
    assert pids == daemon.children()
    assert all(c["in_flight"] == 1 and 0 < c["lease_left_s"] <= 5 for c in view["consumers"])
    [master] = view["masters"]
    assert (master["pid"], master["consumers"], master["version"]) == (daemon.pid, 2, "0.1.0")
    assert view["totals"]["pushed"] == 0 and view["totals"]["claimed"] == 2
    assert view["rates"]["over_s"] >= 1.0
    # And the human view says the same, aligned
    text = goodsd(config, "status").stdout
    assert "masters: 1 live" in text and "consumers: 2, holding 2 item(s)" in text
    assert str(daemon.pid) in text
    # When the daemon stops cleanly, its registry entry goes with it
    assert daemon.stop() == 0
    assert r.hlen("goodsd:{q}:masters") == 0


def test_status_shows_producers_and_hides_stale_masters(r, make_config):
    # Given a producer registry entry and a master that stopped reporting long ago
    now = time.time()
    r.hset(
        "goodsd:{q}:producers",
        "web1-40",
        json.dumps(
            {
                "host": "web1",
                "pid": 40,
                "state": "paused",
                "pushed": 7,
                "lock": True,
                "updated": now,
            }
        ),
    )
    r.hset("goodsd:{q}:masters", "gone-1", json.dumps({"host": "gone", "pid": 1, "seen": now - 60}))
    config = make_config()
    # When the operator looks
    view = status_json(config)
    text = goodsd(config, "status").stdout
    # Then the producer shows with its state and the lock; the silent master does not
    assert view["producers"] == [
        {
            "id": "web1-40",
            "host": "web1",
            "pid": 40,
            "state": "paused",
            "pushed": 7,
            "lock": True,
            "updated_s_ago": view["producers"][0]["updated_s_ago"],
        }
    ]
    assert view["masters"] == []
    assert "paused" in text and "held" in text and "masters: none live" in text


def test_watch_refreshes_until_interrupted(r, make_config, tmp_path):
    # Given `status --watch` writing JSON lines to a file
    out_path = tmp_path / "watch.out"
    argv = ["status", "-c", str(make_config()), "--watch", "0.2", "--json"]
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goodsd", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # When a few refreshes have gone by, with items pushed in between
        wait_for(lambda: out_path.read_text().count("\n") >= 2, 10, "two refreshes")
        r.lpush("q", "good1", "good2")
        wait_for(lambda: '"backlog": 2' in out_path.read_text(), 10, "the new backlog")
        # Then Ctrl-C ends it cleanly
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    views = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert views[0]["rates"] is None  # nothing to compare with yet
    assert views[-1]["rates"]["over_s"] > 0


def test_watch_shows_an_unreachable_redis_and_keeps_trying(make_config, tmp_path):
    config = make_config(redis={"url": f"unix://{tmp_path}/no-such.sock"})
    out_path = tmp_path / "watch.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goodsd", "status", "-c", str(config), "--watch", "0.2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        wait_for(lambda: out_path.read_text().count("(retrying)") >= 2, 10, "two retries")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "cannot reach redis at unix://" in out_path.read_text()


def test_unreachable_redis_is_one_line(make_config, tmp_path):
    config = make_config(redis={"url": f"unix://{tmp_path}/no-such.sock"})
    assert_one_line_error(goodsd(config, "status"), 1, "cannot reach redis", "no-such.sock")
