"""Handler output is never lost: what a Python handler prints and what a command writes to
stdout reach the log line by line, as they are written, even when stdout is a pipe."""

from __future__ import annotations

import re

from support import wait_for

LINE = r"(?m)^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} info \[consumer \d pid \d+\] {}$"


def test_a_python_handler_s_prints_reach_the_log_at_once(r, make_config, start_daemon, notify):
    # Given a handler that prints, with stdout a file (block-buffered) and no PYTHONUNBUFFERED
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:print_item"},
        logging={"level": "warning"},
    )
    daemon = start_daemon(config, notify=notify, env={"PYTHONUNBUFFERED": ""})
    notify.wait("READY", "1")
    # When it handles items, one of them with a newline and an escape sequence
    r.lpush("q", "good1", "two\nlines\x1b[2J")
    # Then each line printed is a log line of that worker while it runs, whatever
    # logging.level says: a line an item holds is the worker's too, escaped, never a line of
    # its own that could pose as another process's
    daemon.wait_log(LINE.format(r"handled good1"), timeout=10)
    daemon.wait_log(LINE.format(r"handled two"), timeout=10)
    daemon.wait_log(LINE.format(re.escape(r"lines\x1b[2J")), timeout=10)
    assert "\x1b" not in daemon.log()
    assert all(re.match(LINE.format(".*"), line) for line in daemon.log().splitlines() if line)


def test_a_recycled_worker_leaves_nothing_unprinted(r, make_config, start_daemon, notify):
    # Given a handler that prints without newline flushes, and workers replaced every 3 items
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:print_item", "max_items": 3}
    )
    daemon = start_daemon(config, notify=notify, env={"PYTHONUNBUFFERED": ""})
    notify.wait("READY", "1")
    # When items come and the worker exits after its third
    r.lpush("q", "good1", "good2", "good3", "good4")
    # Then every print of every worker is in the log
    for n in range(1, 5):
        daemon.wait_log(LINE.format(f"handled good{n}"), timeout=10)


def test_a_command_s_stdout_reaches_the_log_line_by_line(r, make_config, start_daemon, notify):
    # Given a command handler writing two lines to stdout and leaving a process running
    command = ["sh", "-c", 'item=$(cat); echo "got $item"; echo "second line"; sleep 30 &']
    config = make_config(consumers={"processes": 1, "handler": None, "command": command})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When it runs
    r.lpush("q", "good1")
    # Then the item is done at the command's exit, and its lines are log lines of the worker
    wait_for(lambda: r.hget("goodsd:{q}:stats", "done") == b"1", 10, "the item done")
    daemon.wait_log(LINE.format("got good1"))
    daemon.wait_log(LINE.format("second line"))


def test_what_a_python_handler_writes_to_stderr_is_a_warning_line(
    r, make_config, start_daemon, notify
):
    # Given a handler that writes to sys.stderr
    config = make_config(consumers={"processes": 1, "handler": "sample_handlers:print_to_stderr"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When an item that tries to forge a line and clear the screen comes
    r.lpush("q", "x\nerror [master] FORGED\x1b[31m")
    # Then each line is a warning line of the worker, escaped: none poses as the master's
    daemon.wait_log(r"(?m)^\S+ \S+ warning \[consumer 0 pid \d+\] trouble with x$")
    daemon.wait_log(
        r"(?m)^\S+ \S+ warning \[consumer 0 pid \d+\] error \[master\] FORGED\\x1b\[31m$"
    )
    assert "\x1b" not in daemon.log()
    assert not re.search(r"(?m)^error \[master\] FORGED", daemon.log())
