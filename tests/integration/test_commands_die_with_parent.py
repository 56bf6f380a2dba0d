"""Commands die with the process that started them, however it dies: a consumer running
several commands at once from threads (as one with K items in flight will), and a producer
whose source is a command read by its feed thread."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_for

from goodsd.hostinfo import process_alive, process_start

# A stand-in for a consumer: one CommandHandler, one thread per item, each command writing its
# pid to a file named after its item and then sleeping far longer than the test.
FAKE_CONSUMER = """
import sys, threading
from goodsd.runner import CommandHandler
directory, count = sys.argv[1], int(sys.argv[2])
run = CommandHandler(("sh", "-c", 'echo $$ > "$0/$(cat).pid"; exec sleep 60', directory), 120)
for i in range(count):
    threading.Thread(target=run, args=(b"item%d" % i,)).start()
"""

# A stand-in for a producer: its main thread opens a command source, a feed thread reads it.
FAKE_PRODUCER = """
import sys
from goodsd.sources import CommandSource, Feed
command = ("sh", "-c", 'echo $$ > "$0/source.pid"; exec sleep 60', sys.argv[1])
feed = Feed(CommandSource(command), 10)
feed.start()
feed.thread.join()
"""


@pytest.mark.parametrize("count", [1, 4])
def test_a_killed_consumer_leaves_none_of_its_commands_running(tmp_path: Path, count: int) -> None:
    # Given a process running `count` commands at once, one per thread
    argv = [sys.executable, "-c", FAKE_CONSUMER, str(tmp_path), str(count)]
    # When it is killed outright (as the master kills a hung consumer)
    # Then every command dies with it, instead of working on an item being requeued
    assert_commands_die_with(argv, tmp_path, count)


def test_a_killed_producer_leaves_no_source_command_running(tmp_path: Path) -> None:
    # Given a producer reading a command source
    argv = [sys.executable, "-c", FAKE_PRODUCER, str(tmp_path)]
    # When it is killed outright, Then the command dies with it
    assert_commands_die_with(argv, tmp_path, 1)


def assert_commands_die_with(argv: list[str], directory: Path, count: int) -> None:
    """Start ``argv``, wait until its ``count`` commands wrote their pids into ``directory``,
    SIGKILL it, and fail unless every command dies within 5 s."""
    parent = subprocess.Popen(argv)
    commands: dict[int, int | None] = {}  # pid -> start time, to kill only those on failure
    try:
        pids = wait_for(lambda: len(p := _pids(directory)) == count and p, 10, "the commands")
        commands = {pid: process_start(pid) for pid in pids}
        assert None not in commands.values(), "a command ended on its own"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(
            lambda: not any(process_alive(*command) for command in commands.items()),
            5,
            "every command to die",
        )
    finally:
        parent.kill()
        parent.wait()
        for pid, start in commands.items():
            if process_alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _pids(directory: Path) -> list[int]:
    """The pids the commands wrote so far (a file without its newline is not written yet)."""
    texts = [path.read_text() for path in directory.glob("*.pid")]
    return [int(text) for text in texts if text.endswith("\n")]
