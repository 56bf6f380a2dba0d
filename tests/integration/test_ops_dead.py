"""goodsd dead list / requeue / purge against dead records written by the real scripts."""

from __future__ import annotations

import json
import os
import pty
import random
import shlex
import subprocess
import sys

import pytest
from ops_cli import assert_one_line_error, goodsd

from goodsd.store import Failure, RedisConsumerStore, RetryPolicy, Settlement, Views


def make_dead(r, items: list[bytes], error: str = "ValueError: bad item") -> None:
    """Kill ``items`` for good, the way a consumer does (one settle per 1000)."""
    queue = RedisConsumerStore(r, "q")
    for start in range(0, len(items), 1000):
        chunk = items[start : start + 1000]
        Views(r, "q").push(chunk)
        claimed = queue.claim("elsewhere-1-aa", len(chunk), 30, 0)
        failed = tuple(Failure(d, error, final=True) for d in claimed)
        queue.settle(
            "elsewhere-1-aa", Settlement(f"dead-{start}", failed=failed), RetryPolicy(3, 1)
        )


def test_dead_list_newest_first(r, make_config):
    # Given three dead items
    make_dead(r, [b"good1", b"good2", b"good3"])
    config = make_config()
    # When listed with a limit
    result = goodsd(config, "dead", "list", "--limit", "2")
    # Then the newest come first, with attempts and error, and the total is told
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "ATTEMPTS", "ITEM", "LAST", "ERROR"]
    assert "good3" in lines[1] and "ValueError: bad item" in lines[1] and " 1 " in lines[1]
    assert "good2" in lines[2]
    assert lines[3] == "(2 newest of 3 dead record(s))"
    # And --json gives the records whole
    data = json.loads(goodsd(config, "dead", "list", "--json").stdout)
    assert data["dead"] == 3
    assert [rec["item"] for rec in data["records"]] == ["good3", "good2", "good1"]


def listed_arguments(text: str) -> list[str]:
    """What `dead list` shows as each record's requeue argument, newest first: its ITEM cell,
    or for a cell cut short, the argument of the command given whole below the table."""
    lines = text.splitlines()
    start, end = lines[0].index("ITEM"), lines[0].index("LAST ERROR")
    count = next(i for i, line in enumerate(lines) if line.startswith("(")) - 1
    cells = [line[start:end].rstrip() for line in lines[1 : 1 + count]]
    whole = [shlex.split(line)[-1] for line in lines if line.startswith("  goodsd dead requeue")]
    arguments = []
    for cell in cells:
        cut = [arg for arg in whole if cell.endswith("...") and arg.startswith(cell[:-3])]
        arguments.append(cut[0] if cut and len(cut[0]) > len(cell) else cell)
    return arguments


def random_items(rng: random.Random, count: int) -> list[bytes]:
    """Items of every kind a shell or a terminal could garble: random bytes of any length
    (empty too), text with control characters and spaces at the ends, text that starts like
    an option or like the base64 spelling itself, long text, plain text."""
    kinds = [
        lambda: rng.randbytes(rng.randint(0, 80)),
        lambda: "".join(rng.choice(" ab\t\n\x1b\u202eé") for _ in range(8)).encode(),
        lambda: b"-" + rng.randbytes(3).hex().encode(),
        lambda: b"base64:" + rng.choice([b"", b"Y2Fm6Q==", rng.randbytes(4)]),
        lambda: rng.randbytes(40).hex().encode(),
        lambda: f"good{rng.randint(0, 9)}".encode(),
    ]
    return [rng.choice(kinds)() for _ in range(count)]


@pytest.mark.parametrize("seed", range(2))
def test_what_dead_list_shows_dead_requeue_takes_back(r, make_config, seed):
    # Given dead items of random bytes and awkward text
    items = random_items(random.Random(seed), 40)
    make_dead(r, items)
    config = make_config()
    # When each is requeued by what `dead list` shows for it
    listing = goodsd(config, "dead", "list", "--limit", "100")
    assert listing.returncode == 0, listing.stderr
    arguments = listed_arguments(listing.stdout)
    assert len(arguments) == len(items)
    result = goodsd(config, "dead", "requeue", *arguments)
    # Then every one is found and back in the ready list, byte for byte
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"requeued {len(items)} item(s) to 'q'\n"
    assert r.llen("goodsd:{q}:dead") == 0
    assert sorted(r.lrange("q", 0, -1)) == sorted(items)


def test_a_bad_base64_item_changes_nothing(r, make_config):
    make_dead(r, [b"good1"])
    result = goodsd(make_config(), "dead", "requeue", "good1", "base64:not-base64")
    assert_one_line_error(result, 1, "'base64:not-base64' is not valid base64")
    assert r.llen("goodsd:{q}:dead") == 1


def test_requeue_by_item_takes_every_copy_and_resets_attempts(r, make_config):
    # Given good7 dead three times over, and others
    make_dead(r, [b"good7", b"good1", b"good7", b"good7"])
    config = make_config()
    # When good7 is requeued, and an item that is not dead is asked for too
    result = goodsd(config, "dead", "requeue", "good7", "nope")
    # Then all three copies are back at the pop end, raw (no retry tag, so no attempts), and
    # the missing one is named with a failure exit
    assert result.returncode == 1
    assert result.stdout == "requeued 3 item(s) to 'q'\n"
    assert result.stderr == "goodsd: dead requeue: not in the dead list: 'nope'\n"
    assert r.lrange("q", 0, -1) == [b"good7"] * 3
    assert r.hlen("goodsd:{q}:attempts") == 0
    assert [json.loads(x)["item"] for x in r.lrange("goodsd:{q}:dead", 0, -1)] == ["good1"]


def test_requeue_all_runs_them_next_byte_for_byte(r, make_config):
    # Given dead items (one not UTF-8) and a backlog of fresh ones
    make_dead(r, [b"good1", b"caf\xe9", b"good2"])
    r.lpush("q", "fresh1", "fresh2")
    # When everything dead is requeued
    result = goodsd(make_config(), "dead", "requeue", "--all")
    # Then the dead list is empty and the requeued items are popped before the fresh ones
    assert result.returncode == 0, result.stderr
    assert result.stdout == "requeued 3 item(s) to 'q'\n"
    assert r.llen("goodsd:{q}:dead") == 0
    popped = [r.rpop("q") for _ in range(5)]
    assert sorted(popped[:3]) == sorted([b"good1", b"caf\xe9", b"good2"])
    assert popped[3:] == [b"fresh1", b"fresh2"]


def test_two_operators_requeue_each_record_once(r, make_config):
    # Given 5,000 dead records
    make_dead(r, [f"good{i}".encode() for i in range(5000)])
    config = make_config()
    # When two operators requeue everything at the same moment
    argv = [sys.executable, "-m", "goodsd", "dead", "requeue", "--all", "-c", str(config)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=30)[0] for p in procs]
    # Then every record came back exactly once between them
    assert all(p.returncode == 0 for p in procs)
    counts = [int(out.split()[1]) for out in outputs]
    assert sum(counts) == 5000
    assert sorted(r.lrange("q", 0, -1)) == sorted(f"good{i}".encode() for i in range(5000))


def test_purge_needs_yes_without_a_terminal(r, make_config):
    make_dead(r, [b"good1", b"good2"])
    config = make_config()
    # Without a terminal to ask on, nothing is deleted
    refused = goodsd(config, "dead", "purge")
    assert_one_line_error(refused, 1, "would delete 2 record(s)", "--yes")
    assert r.llen("goodsd:{q}:dead") == 2
    # With --yes, it goes
    done = goodsd(config, "dead", "purge", "--yes")
    assert done.returncode == 0
    assert done.stdout == "deleted 2 dead record(s) of 'q'\n"
    assert r.exists("goodsd:{q}:dead") == 0


def test_purge_asks_on_a_terminal(r, make_config):
    make_dead(r, [b"good1"])
    config = make_config()

    def answer(text: str) -> subprocess.CompletedProcess[str]:
        main, tty = pty.openpty()
        try:
            os.write(main, text.encode())
            return subprocess.run(
                [sys.executable, "-m", "goodsd", "dead", "purge", "-c", str(config)],
                stdin=tty,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            os.close(tty)
            os.close(main)

    # "n" keeps the records
    kept = answer("n\n")
    assert kept.returncode == 1
    assert "delete 1 dead record(s) of queue 'q' for good? [y/N]" in kept.stderr
    assert r.llen("goodsd:{q}:dead") == 1
    # "y" deletes them
    gone = answer("y\n")
    assert gone.returncode == 0, gone.stderr
    assert r.llen("goodsd:{q}:dead") == 0


def test_dead_commands_with_redis_away(make_config, tmp_path):
    config = make_config(redis={"url": f"unix://{tmp_path}/no-such.sock"})
    for args in (["list"], ["requeue", "--all"], ["purge", "--yes"]):
        assert_one_line_error(goodsd(config, "dead", *args), 1, "cannot reach redis at unix://")


def test_requeue_needs_items_or_all(make_config):
    result = goodsd(make_config(), "dead", "requeue")
    assert result.returncode == 2
    assert "give either --all or one or more items" in result.stderr
