"""goodsd push: arguments or stdin lines into the ready list, in order, counted; a long line
byte for byte; an item over the largest is refused by number, the rest pushed; --wait-below
holds back; a dead server or a bad config is one line, not a traceback."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_cli import assert_one_line_error, goodsd
from support import wait_for, write_config

from goodsd.config import load as load_config
from goodsd.localredis import LocalRedis, free_tcp_port
from goodsd.ops import push


def test_push_arguments_in_fifo_order(r, make_config):
    # Given a config and no daemon
    config = make_config()
    # When items are pushed as arguments
    result = goodsd(config, "push", "good1", "good2", "good3")
    # Then they are in the ready list, popped in the order given, and counted
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pushed 3 item(s) to 'q'\n"
    assert [r.rpop("q") for _ in range(3)] == [b"good1", b"good2", b"good3"]
    assert r.hget("goodsd:{q}:stats", "pushed") == b"3"


def test_push_a_large_file_from_stdin(r, make_config, tmp_path):
    # Given a file of more lines than one batch, with CRLF endings, blank lines, no final newline
    lines = [f"good{i}" for i in range(25_000)]
    data = "\r\n".join(lines[:100]) + "\r\n\n" + "\n".join(lines[100:])
    path = tmp_path / "items.txt"
    path.write_bytes(data.encode())
    # When it is pushed through stdin
    with open(path, "rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "goodsd", "push", "-c", str(make_config())],
            stdin=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
    # Then every line is one item, in order, and the blank line is reported
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pushed 25000 item(s) to 'q' (skipped 1 empty)\n"
    assert r.lrange("q", 0, -1)[::-1] == [line.encode() for line in lines]


def test_push_keeps_bytes_that_are_not_utf8(r, make_config):
    result = goodsd(make_config(), "push", stdin=b"caf\xe9\n")
    assert result.returncode == 0, result.stderr
    assert r.lrange("q", 0, -1) == [b"caf\xe9"]


def test_wait_below_holds_the_backlog_down(r, make_config):
    # Given no consumers and a push of 50 items that may keep at most 20 waiting
    proc = subprocess.Popen(
        [sys.executable, "-m", "goodsd", "push", "-c", str(make_config()), "--wait-below", "20"]
        + [f"good{i}" for i in range(50)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Then it stops at 20 and waits
        wait_for(lambda: r.llen("q") == 20, 10, "the backlog to reach 20")
        assert proc.poll() is None
        # When a consumer drains the list, the push goes on, never above 20, and ends
        taken = []
        while proc.poll() is None or r.llen("q"):
            assert r.llen("q") <= 20
            item = r.rpop("q")
            if item is not None:
                taken.append(item.decode())
        assert proc.wait(10) == 0
        assert taken == [f"good{i}" for i in range(50)]
    finally:
        proc.kill()
        proc.communicate()


def test_unreachable_redis_is_one_line(make_config, tmp_path):
    config = make_config(redis={"url": f"unix://{tmp_path}/no-such.sock"})
    result = goodsd(config, "push", "good1")
    assert_one_line_error(result, 1, "cannot reach redis at unix://", "no-such.sock")


def test_bad_config_is_one_line_and_exit_78(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("queue: q\nconsumer: {}\n")
    result = goodsd(config, "push", "good1")
    assert_one_line_error(result, 78, "bad.yaml:2: consumer: unknown key")


def test_missing_config_file_is_one_line(tmp_path):
    result = goodsd(tmp_path / "absent.yaml", "status")
    assert_one_line_error(result, 78, "absent.yaml", "cannot read")


def test_a_multi_megabyte_line_is_pushed_byte_for_byte(r, make_config):
    # Given a line of 5 MB of arbitrary bytes (a \r inside, none at its end), then a short one
    rng = random.Random(8)
    line = rng.randbytes(5_000_000).replace(b"\n", b"n") + b"."
    # When both go through `goodsd push` on stdin, with a CRLF ending after the long one
    result = goodsd(make_config(), "push", stdin=line + b"\r\ngood1\n")
    # Then the long line is one item, byte for byte, followed by the short one
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pushed 2 item(s) to 'q'\n"
    assert r.lrange("q", 0, -1) == [b"good1", line]


def push_in_process(
    config: Path, items: list[str], stdin: bytes, limit: int
) -> tuple[int, str, str]:
    """Run push.main with a limit of ``limit`` bytes: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = push.main(
        load_config(str(config)),
        items,
        wait_below=None,
        stdin=io.BytesIO(stdin),
        out=out,
        err=err,
        max_item=limit,
    )
    return status, out.getvalue(), err.getvalue()


def test_a_line_over_the_largest_item_is_refused_and_the_rest_pushed(r, make_config):
    # Given lines under a limit of 10 bytes, one of 11 bytes among them, and one of exactly
    # 10 bytes before its \r\n
    lines = [b"good1", b"x" * 11, b"good2", b"y" * 10 + b"\r", b"good3"]
    # When they are pushed
    status, out, err = push_in_process(make_config(), [], b"\n".join(lines) + b"\n", limit=10)
    # Then all but the long one are in the ready list, in order; stderr names it; exit 1
    assert r.lrange("q", 0, -1)[::-1] == [b"good1", b"good2", b"y" * 10, b"good3"]
    assert err == "goodsd: line 2 not pushed: 11 bytes, over the largest item (10 bytes)\n"
    assert out == "pushed 4 item(s) to 'q' (refused 1 over 10 bytes)\n"
    assert status == 1


def test_an_argument_over_the_largest_item_is_refused_and_the_rest_pushed(r, make_config):
    status, out, err = push_in_process(make_config(), ["good1", "x" * 11, "good2"], b"", 10)
    assert r.lrange("q", 0, -1)[::-1] == [b"good1", b"good2"]
    assert err == "goodsd: argument 2 not pushed: 11 bytes, over the largest item (10 bytes)\n"
    assert out == "pushed 2 item(s) to 'q' (refused 1 over 10 bytes)\n"
    assert status == 1


def wait_calls(client) -> int:
    """How many WAIT commands the server was sent (since its stats were reset)."""
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


@pytest.mark.slow
def test_a_push_no_replica_acknowledges_says_how_many_items_are_on_the_primary_only(r, make_config):
    # Given a push that must wait for one replica, to a primary that has none
    config = make_config(redis={"wait_replicas": 1})
    r.config_resetstat()
    # When items are pushed
    result = goodsd(config, "push", "good1", "good2", "good3")
    # Then the push repeats only the WAIT, for a while, and then says that all three are in,
    # on the primary only, and that pushing them again would add them twice
    assert_one_line_error(
        result,
        push.EXIT_UNREPLICATED,
        f"pushed 3 item(s) to 'q', but the last 3 are on the redis primary only: 0 of 1 "
        f"replica(s) acknowledged them within {push.WAIT_PATIENCE:g}s",
        "pushing them again would add them twice",
    )
    assert r.lrange("q", 0, -1) == [b"good3", b"good2", b"good1"]
    assert r.hget("goodsd:{q}:stats", "pushed") == b"3"
    assert wait_calls(r) > 1


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[LocalRedis, LocalRedis]]:
    """A primary on TCP and one replica in sync with it."""
    with LocalRedis(tcp_port=free_tcp_port()) as primary:
        following = ("--replicaof", "127.0.0.1", str(primary.tcp_port))
        with LocalRedis(tcp_port=free_tcp_port(), settings=following) as replica:
            with primary.client() as client:
                wait_for(lambda: client.info("replication")["connected_slaves"] == 1, 10, "sync")
            yield primary, replica


def test_a_push_waits_out_a_replica_that_lags_and_adds_each_item_once(
    primary_and_replica, tmp_path
):
    # Given a primary whose one replica has stopped answering for now
    primary, replica = primary_and_replica
    client = primary.client()
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        client.config_resetstat()
        config = write_config(tmp_path, primary.url, redis={"wait_replicas": 1})
        # When items are pushed, and the replica comes back once the push has found it short
        # and waits again
        pushing = subprocess.Popen(
            [sys.executable, "-m", "goodsd", "push", "-c", str(config), "a", "b"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: wait_calls(client) > 1, 10, "the push to wait again")
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    out, err = pushing.communicate(timeout=30)
    # Then it succeeds, each item in once
    assert pushing.returncode == 0, err
    assert out == "pushed 2 item(s) to 'q'\n"
    assert client.lrange("q", 0, -1) == [b"b", b"a"]
    client.close()
