"""What goodsd tells systemd (sd_notify fields) and how its log lines look, without a socket."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from goodsd.logs import JsonFormatter, TextFormatter, priority, under_journal
from goodsd.notify import Notifier, status_line, watchdog_interval

# --- sd_notify --------------------------------------------------------------------------------


def test_status_line_is_always_one_line() -> None:
    # Given a status text with newlines, tabs and runs of spaces (e.g. a multi-line error)
    text = "consumers: 2 running;\n  last reload failed: x.yaml:3:\tbad   value\n"
    # Then STATUS= carries it on one line, words kept in order
    assert (
        status_line(text) == "STATUS=consumers: 2 running; last reload failed: x.yaml:3: bad value"
    )
    assert status_line("") == "STATUS="


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid=123) == 10.0


def test_watchdog_interval_for_this_pid_only() -> None:
    environ = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "123"}
    assert watchdog_interval(environ, pid=123) == 10.0
    assert watchdog_interval(environ, pid=456) is None


@pytest.mark.parametrize("environ", [{}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "soon"}])
def test_no_watchdog_without_a_usable_watchdog_usec(environ: dict[str, str]) -> None:
    assert watchdog_interval(environ, pid=123) is None


def test_notifier_without_notify_socket_is_a_silent_no_op() -> None:
    # Given an environment outside systemd
    environ = {"PATH": "/usr/bin"}
    notifier = Notifier(environ)
    # When every kind of message is sent
    notifier.ready("consumers: 1 running")
    notifier.reloading()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    # Then nothing happened and nothing failed
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert environ == {"PATH": "/usr/bin"}


def test_notifier_takes_the_watchdog_settings_out_of_the_environment() -> None:
    # Given a watchdog meant for this process
    environ = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "HOME": "/x"}
    # When the notifier is made
    notifier = Notifier(environ)
    # Then it keeps the interval for itself and children (and their commands) never see it
    assert notifier.watchdog_interval == 2.0
    assert environ == {"HOME": "/x"}


# --- log priorities ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (45, 3),  # custom levels take the priority of the level below them
        (25, 6),
        (5, 7),
    ],
)
def test_priority_maps_logging_levels_to_syslog(level: int, expected: int) -> None:
    assert priority(level) == expected


# --- journal detection ------------------------------------------------------------------------


def test_not_under_journal_without_journal_stream() -> None:
    assert not under_journal({}, sys.stderr)


def test_under_journal_only_when_stderr_is_that_very_stream(tmp_path: Path) -> None:
    # Given a stream and the device:inode systemd would put in JOURNAL_STREAM
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        # Then a matching JOURNAL_STREAM means the journal, another inode does not
        assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not under_journal({"JOURNAL_STREAM": "garbage"}, stream)


def test_a_stream_without_a_file_descriptor_is_not_the_journal() -> None:
    assert not under_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO())


# --- formatters -------------------------------------------------------------------------------


def make_record(
    level: int = logging.INFO, msg: str = "hello %s", args: tuple[object, ...] = ("world",)
) -> logging.LogRecord:
    return logging.LogRecord("goodsd.test", level, __file__, 1, msg, args, None)


def failing_record() -> logging.LogRecord:
    """An ERROR record carrying a real traceback."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record(logging.ERROR, "handler %s crashed", ("x",))
        record.exc_info = sys.exc_info()
    return record


def test_text_format_outside_the_journal_has_a_timestamp() -> None:
    line = TextFormatter("master", journal=False).format(make_record())
    # e.g. "2024-05-01 12:00:00.123 info [master] hello world"
    stamp, _, rest = line.partition(" info ")
    assert rest == "[master] hello world"
    assert len(stamp) == len("2024-05-01 12:00:00.123")


def test_text_format_under_the_journal_prefixes_every_line_of_a_traceback() -> None:
    # Given an error with a traceback, formatted for the journal
    text = TextFormatter("consumer 0 pid 9", journal=True).format(failing_record())
    lines = text.split("\n")
    # Then it has no timestamp (journald adds one) and every line carries the error priority
    assert lines[0] == "<3>error [consumer 0 pid 9] handler x crashed"
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def test_json_format_is_one_object_per_line_even_with_a_traceback() -> None:
    # Given an error with a traceback and a message with a newline in it
    record = failing_record()
    record.msg = "first\nsecond %s"
    text = JsonFormatter("master", journal=False).format(record)
    # Then the output is one line holding one JSON object with every field
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["level"] == "error"
    assert entry["proc"] == "master"
    assert entry["logger"] == "goodsd.test"
    assert entry["msg"] == "first\nsecond x"
    assert entry["pid"] == os.getpid()
    assert entry["exc"].endswith("ValueError: boom")


def test_json_format_under_the_journal_gets_a_priority_prefix() -> None:
    text = JsonFormatter("master", journal=True).format(make_record(logging.WARNING))
    assert text.startswith("<4>{")
    assert json.loads(text[3:])["msg"] == "hello world"
