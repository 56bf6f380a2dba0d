"""consumers.command: the item on stdin, exit 0 is done, anything else fails it; past
consumers.timeout the command is killed and the consumer carries on."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from support import wait_for


def session_members(sid: int) -> set[int]:
    """Pids of the live processes in session ``sid`` (the daemon runs in its own)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[3]) == sid:
            members.add(int(entry.name))
    return members


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def dead_records(r) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in r.lrange("goodsd:{q}:dead", 0, -1)]


def test_command_exit_zero_marks_items_done(r, tmp_path, make_config, start_daemon, notify):
    # Given consumers running a shell command that appends the item on its stdin to $OUT
    out = tmp_path / "out"
    config = make_config(
        consumers={"command": ["sh", "-c", 'printf "%s\\n" "$(cat)" >> "$OUT"'], "handler": None}
    )
    start_daemon(config, notify=notify, env={"OUT": str(out)})
    notify.wait("READY", "1")
    # When items are pushed
    items = [f"good{i}" for i in range(30)]
    r.lpush("q", *items)
    # Then each reached the command exactly once and counts as done
    wait_for(lambda: len(lines(out)) >= len(items), 15, "every item through the command")
    assert sorted(lines(out)) == sorted(items)
    wait_for(lambda: r.hget("goodsd:{q}:stats", "done") == b"30", 5, "30 items done")
    assert r.llen("goodsd:{q}:dead") == 0


def test_failing_command_is_retried_then_dead_with_its_stderr(r, make_config, start_daemon, notify):
    # Given a command that complains on stderr and exits 3, with one retry
    command = ["sh", "-c", 'echo "cannot take $(cat)" >&2; exit 3']
    config = make_config(
        consumers={"command": command, "handler": None, "retries": 1, "retry_delay": "200ms"}
    )
    start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When an item is pushed
    r.lpush("q", "good1")
    # Then after two attempts it is dead, its error the exit status and the stderr tail
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, 15, "a dead record")
    [record] = dead_records(r)
    assert record["item"] == "good1"
    assert record["attempts"] == 2
    assert record["error"] == "RuntimeError: command failed (exit status 3): cannot take good1"
    stats = r.hgetall("goodsd:{q}:stats")
    assert int(stats[b"failed"]) == 2 and int(stats[b"retried"]) == 1


def test_command_past_the_timeout_is_killed_and_the_consumer_survives(
    r, tmp_path, make_config, start_daemon, notify
):
    # Given one consumer with a 1 s timeout, whose command hangs on the item "slow"
    out = tmp_path / "out"
    script = 'item=$(cat); [ "$item" = slow ] && sleep 60; printf "%s\\n" "$item" >> "$OUT"'
    config = make_config(
        consumers={
            "processes": 1,
            "command": ["sh", "-c", script],
            "handler": None,
            "timeout": "1s",
            "retries": 0,
        }
    )
    daemon = start_daemon(config, notify=notify, env={"OUT": str(out)})
    notify.wait("READY", "1")
    [pid] = wait_for(lambda: daemon.children(), 5, "the consumer process")
    # When the slow item is pushed, followed by two quick ones
    r.lpush("q", "slow", "quick1", "quick2")
    # Then the slow one is dead, its error saying it timed out
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, 10, "the slow item dead")
    [record] = dead_records(r)
    assert record["item"] == "slow"
    assert record["error"] == "RuntimeError: command timed out after 1s and was killed"
    # And the same consumer process handles the next items
    wait_for(lambda: sorted(lines(out)) == ["quick1", "quick2"], 10, "the quick items handled")
    assert daemon.children() == {pid}
    assert "killing consumer" not in daemon.log()
    # And nothing the slow command started lives on: only the master and its consumer remain
    assert session_members(daemon.pid) == {daemon.pid, pid}


def test_a_killed_consumer_leaves_no_command_running(
    r, tmp_path, make_config, start_daemon, notify
):
    # Given one consumer whose command records its pid, then runs long
    pidfile = tmp_path / "command.pid"
    config = make_config(
        consumers={
            "processes": 1,
            "command": ["sh", "-c", 'echo $$ > "$PIDFILE"; exec sleep 60'],
            "handler": None,
        }
    )
    daemon = start_daemon(config, notify=notify, env={"PIDFILE": str(pidfile)})
    notify.wait("READY", "1")
    (consumer,) = daemon.children()
    r.lpush("q", "good1")
    command = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "pid"))
    # When the consumer is killed outright (as the master kills a hung one)
    os.kill(consumer, signal.SIGKILL)
    # Then its command dies with it, instead of working on an item being requeued
    wait_for(lambda: command not in session_members(daemon.pid), 5, "the command to die")
    wait_for(lambda: r.llen("q") + r.zcard("goodsd:{q}:retry") == 1, 10, "the item given back")
