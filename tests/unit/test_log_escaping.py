"""Logs cannot be forged: text from items, errors or handlers never starts a log line of its
own or reaches a terminal as a control sequence; JSON logs stay one valid object per line."""

from __future__ import annotations

import json
import logging
import random
import sys

import pytest

from goodsd.logs import JsonFormatter, TextFormatter, printable, show_item

FORGERIES = [
    "a\nerror [master] forged line",
    "a\rerror [master] overwritten",
    "a\r\nb",
    "\x1b[2J\x1b[31mred",
    "bell\x07 backspace\x08 nul\x00 del\x7f",
    "csi\x9b2J nel\x85 ls\u2028 ps\u2029",
    "bidi \u202e txt.exe",
    "lone surrogate \udcff",
    "tab\tstays visible",
]


def record(msg: str, args: tuple[object, ...] = (), exc: BaseException | None = None):
    entry = logging.LogRecord("goodsd.test", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            entry.exc_info = sys.exc_info()
    return entry


def assert_one_clean_line(text: str) -> None:
    assert "\n" not in text and "\r" not in text
    assert all(c.isprintable() for c in text), repr(text)


@pytest.mark.parametrize("journal", [False, True])
@pytest.mark.parametrize("text", FORGERIES)
def test_text_logs_escape_control_characters_in_the_message(text: str, journal: bool) -> None:
    # Given a message carrying text from an item or an error
    line = TextFormatter("consumer 0 pid 9", journal=journal).format(
        record("handler failed on %s: %s", (text, text))
    )
    # Then it is one line, with every control character shown escaped
    assert_one_clean_line(line.removeprefix("<4>"))
    assert "handler failed on " in line


def test_escapes_are_readable() -> None:
    assert printable("a\nb\rc\x1b[0m\u2028\x00\tz") == "a\\nb\\rc\\x1b[0m\\u2028\\x00\\tz"
    assert printable("café ✓ plain") == "café ✓ plain"


@pytest.mark.parametrize("journal", [False, True])
@pytest.mark.parametrize("text", FORGERIES)
def test_a_traceback_keeps_its_own_lines_but_not_the_message_s(text: str, journal: bool) -> None:
    # Given an error logged with a traceback whose exception message (and its cause's) forge lines
    cause = OSError(text)
    error = ValueError(text)
    error.__cause__ = cause
    out = TextFormatter("master", journal=journal).format(record("crashed: %s", (text,), error))
    lines = out.split("\n")
    # Then the traceback has only its own structural lines: the first is the record, each
    # exception line is whole, and no line holds a control character
    for line in lines:
        assert_one_clean_line(line.removeprefix("<4>"))
    assert sum(line.removeprefix("<4>").startswith("ValueError: ") for line in lines) == 1
    assert sum(line.removeprefix("<4>").startswith("OSError: ") for line in lines) == 1
    assert not any("forged" in line and "Error" not in line for line in lines[1:])


@pytest.mark.parametrize("text", FORGERIES)
def test_json_logs_stay_one_valid_object(text: str) -> None:
    out = JsonFormatter("master", journal=False).format(
        record("failed on %s", (text,), ValueError(text))
    )
    assert "\n" not in out and "\r" not in out
    entry = json.loads(out)
    assert entry["msg"].startswith("failed on ")


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        (b"good7", "good7"),
        ("café".encode(), "café"),
        (b"line one\nline two", "line one\\nline two"),
        (b"\xff\xfeok", "\\xff\\xfeok"),
        (b"\x1b[2J", "\\x1b[2J"),
        (b"x" * 200, "x" * 77 + "..."),
    ],
)
def test_items_are_named_readably(item: bytes, shown: str) -> None:
    assert show_item(item) == shown


def test_any_bytes_show_as_one_printable_line() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        assert_one_clean_line(show_item(rng.randbytes(rng.randrange(0, 100))))
