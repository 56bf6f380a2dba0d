"""Running one item: decoding, loading the handler, and command handlers.

The command tests run real tiny commands (``true``, ``sh``): they take milliseconds and are the
only honest way to check exit statuses, stderr and timeouts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from goodsd.config import ConsumersConfig
from goodsd.hostinfo import process_start
from goodsd.runner import (
    STDERR_TAIL,
    CommandHandler,
    HandlerLoadError,
    MalformedItem,
    build,
    decoder,
    load_callable,
)

# --- decoding ---------------------------------------------------------------------------------


def test_utf8_mode_gives_text() -> None:
    assert decoder("utf-8")("café".encode()) == "café"


def test_utf8_mode_rejects_other_bytes_as_malformed() -> None:
    with pytest.raises(MalformedItem, match=r"^not UTF-8: "):
        decoder("utf-8")(b"\xff\xfe")


HOSTILE_FOR_DECODERS = [
    b"[" * 100_000,  # deeper than any recursion limit
    b'{"a":' * 50_000,
    b"[" * 100_000 + b"]" * 100_000,
    b"1" * 100_000,  # longer than int() takes from a string
    b"\xff\xfe[1]",
    b"",
    b"\x00",
    "\ud800".encode("utf-8", "surrogatepass"),
]


@pytest.mark.parametrize("mode", ["utf-8", "bytes", "json"])
@pytest.mark.parametrize("raw", HOSTILE_FOR_DECODERS, ids=lambda raw: repr(raw[:12]))
def test_a_decoder_either_decodes_or_says_malformed(mode: str, raw: bytes) -> None:
    # Given any bytes at all, whatever the decode mode
    decode = decoder(mode)
    # Then decoding gives a value or raises MalformedItem, never another exception (which
    # would count as a handler failure and be retried)
    with contextlib.suppress(MalformedItem):
        decode(raw)


@pytest.mark.parametrize("mode", ["utf-8", "json"])
def test_a_built_handler_blames_the_item_not_the_handler_for_undecodable_bytes(
    mode: str,
) -> None:
    # Given a handler behind the configured decoder
    run_item = build(ConsumersConfig(handler="goodsd.handlers:noop", decode=mode), ())
    # Then bytes the decoder cannot turn into a value are a malformed item
    with pytest.raises(MalformedItem):
        run_item(b"[" * 100_000 if mode == "json" else b"\xff")


def test_bytes_mode_passes_anything_through() -> None:
    assert decoder("bytes")(b"\xff\x00") == b"\xff\x00"


def test_json_mode_gives_the_decoded_value() -> None:
    assert decoder("json")(b'{"id": 1, "tags": ["a"]}') == {"id": 1, "tags": ["a"]}
    assert decoder("json")(b"42") == 42


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff"])
def test_json_mode_rejects_bad_json_as_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedItem, match=r"^not JSON: "):
        decoder("json")(raw)


# --- loading handlers -------------------------------------------------------------------------


def test_load_callable_follows_a_dotted_attribute_path() -> None:
    assert load_callable("json:loads") is json.loads
    assert load_callable("json:JSONDecoder.decode") is json.JSONDecoder.decode


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "no_such_module_xyz:handle",
            "cannot load 'no_such_module_xyz:handle': ModuleNotFoundError",
        ),
        ("json:no_such_attr", "cannot load 'json:no_such_attr': AttributeError"),
        ("json", "cannot load 'json': AttributeError"),
        ("goodsd.runner:STDERR_TAIL", "'goodsd.runner:STDERR_TAIL' is not callable"),
    ],
)
def test_load_callable_errors_are_handler_load_errors(spec: str, message: str) -> None:
    with pytest.raises(HandlerLoadError) as caught:
        load_callable(spec)
    assert str(caught.value).startswith(message)


def test_an_import_that_raises_is_a_handler_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a module that fails while being imported
    (tmp_path / "broken_handler_mod.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # Then loading it names the module and the cause
    with pytest.raises(HandlerLoadError, match="RuntimeError: no database"):
        load_callable("broken_handler_mod:handle")


def test_an_import_that_exits_is_a_handler_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a module that calls sys.exit() at import, as scripts do when they cannot start
    (tmp_path / "exiting_handler_mod.py").write_text("import sys\nsys.exit('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # Then it is a load error (exit 78 in a child), not a crash to restart forever
    with pytest.raises(HandlerLoadError, match="SystemExit: no config"):
        load_callable("exiting_handler_mod:handle")


def test_build_with_a_python_handler_decodes_then_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler module in a pythonpath directory that keeps what it receives
    (tmp_path / "sink_handler_mod.py").write_text(
        "seen = []\ndef handle(item):\n    seen.append(item)\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "sink_handler_mod", raising=False)
    cfg = ConsumersConfig(handler="sink_handler_mod:handle", decode="json")
    # When the per-item function is built with that directory and an item runs
    run_item = build(cfg, (str(tmp_path),))
    run_item(b'{"id": 7}')
    # Then the directory was put on sys.path and the handler got the decoded value
    assert sys.path[0] == str(tmp_path)
    assert sys.modules["sink_handler_mod"].seen == [{"id": 7}]
    monkeypatch.delitem(sys.modules, "sink_handler_mod")


def test_build_without_handler_or_command_is_a_load_error() -> None:
    with pytest.raises(HandlerLoadError, match="no handler or command configured"):
        build(ConsumersConfig(handler=None), ())


def test_build_with_a_command_rejects_malformed_items_before_running_it(tmp_path: Path) -> None:
    # Given a command handler decoding JSON, whose command would leave a mark
    mark = tmp_path / "ran"
    cfg = ConsumersConfig(command=("sh", "-c", f"touch {mark}"), decode="json")
    run_item = build(cfg, ())
    # When a malformed item runs
    with pytest.raises(MalformedItem):
        run_item(b"{not json")
    # Then the command never ran
    assert not mark.exists()


# --- command handlers -------------------------------------------------------------------------


def test_command_exit_zero_is_done() -> None:
    CommandHandler(("true",), 5.0)(b"good1")


def test_command_gets_the_item_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out"
    CommandHandler(("sh", "-c", f"cat > {out}"), 5.0)(b"good\x001\n")
    assert out.read_bytes() == b"good\x001\n"


def test_command_failure_carries_exit_status_and_stderr() -> None:
    run = CommandHandler(("sh", "-c", "echo 'bad item' >&2; exit 3"), 5.0)
    with pytest.raises(RuntimeError) as caught:
        run(b"good1")
    assert str(caught.value) == "command failed (exit status 3): bad item"


def test_command_failure_without_stderr_has_no_trailing_colon() -> None:
    with pytest.raises(RuntimeError) as caught:
        CommandHandler(("false",), 5.0)(b"x")
    assert str(caught.value) == "command failed (exit status 1)"


def test_command_killed_by_a_signal_says_so() -> None:
    with pytest.raises(RuntimeError) as caught:
        CommandHandler(("sh", "-c", "kill -9 $$"), 5.0)(b"x")
    assert str(caught.value) == "command failed (killed by signal 9)"


def test_command_stderr_is_cut_to_its_tail() -> None:
    # Given a command that writes far more than STDERR_TAIL bytes before failing
    script = "i=0; while [ $i -lt 500 ]; do echo line$i >&2; i=$((i+1)); done; exit 2"
    with pytest.raises(RuntimeError) as caught:
        CommandHandler(("sh", "-c", script), 5.0)(b"x")
    # Then the error keeps the end of it, bounded
    message = str(caught.value)
    assert message.endswith("line499")
    assert len(message) <= len("command failed (exit status 2): ") + STDERR_TAIL


def test_command_past_its_timeout_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    # Given a command that starts a background process and then waits forever
    pidfile = tmp_path / "bg.pid"
    script = 'sleep 60 & echo $! > "$1"; wait'
    run = CommandHandler(("sh", "-c", script, "sh", str(pidfile)), 1.0)
    # When it runs past its timeout
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^command timed out after 1s and was killed$"):
        run(b"x")
    # Then it was stopped at the timeout, and its background process died with it (SIGKILL
    # is delivered at once, but a loaded machine may take a moment to show it dead)
    assert time.monotonic() - started < 5
    background = int(pidfile.read_text())
    _wait_until(lambda: process_start(background) is None, 5, "the background process to die")


def test_without_setpriv_a_command_handler_cannot_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a PATH without setpriv, which ties each command to its consumer's life
    monkeypatch.setenv("PATH", str(tmp_path))
    # Then the handler cannot load (the consumer exits 78), instead of leaving orphans later
    with pytest.raises(HandlerLoadError, match="setpriv"):
        CommandHandler(("true",), 5.0)


def test_a_missing_command_fails_the_item() -> None:
    with pytest.raises(OSError):
        CommandHandler((os.devnull + "/no-such-command",), 5.0)(b"x")


def test_a_command_is_done_when_it_exits_whatever_it_left_running() -> None:
    # Given a command that exits 0 at once, leaving a background process that holds its
    # stdout and stderr open
    run = CommandHandler(("sh", "-c", "cat >/dev/null; sleep 30 &"), 10.0)
    # When it runs
    started = time.monotonic()
    run(b"good1")
    # Then its exit status decides at once: goodsd does not wait for the background process
    assert time.monotonic() - started < 5


def test_a_failing_command_is_judged_at_its_exit_with_the_stderr_it_wrote() -> None:
    run = CommandHandler(("sh", "-c", "echo bad >&2; sleep 30 & exit 3"), 10.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^command failed \(exit status 3\): bad$"):
        run(b"x")
    assert time.monotonic() - started < 5


def test_a_large_item_reaches_the_command_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    item = bytes(range(256)) * 40_000  # 10 MB, far more than a pipe holds
    CommandHandler(("sh", "-c", f"cat > {out}"), 20.0)(item)
    assert out.read_bytes() == item


def test_a_command_that_ignores_its_stdin_is_judged_by_its_exit_status() -> None:
    CommandHandler(("true",), 5.0)(b"x" * 5_000_000)
    with pytest.raises(RuntimeError, match=r"exit status 4"):
        CommandHandler(("sh", "-c", "exit 4"), 5.0)(b"x" * 5_000_000)


def test_a_command_s_stdout_is_passed_on_line_by_line() -> None:
    # Given a command writing lines, one of them split across writes and one unfinished
    lines: list[str] = []
    script = "cat; printf 'two '; sleep 0.1; printf 'halves\\nno newline'"
    run = CommandHandler(("sh", "-c", script), 5.0, output=lines.append)
    # When it runs
    run(b"first line\n")
    # Then each line is passed on whole, the last one at the command's exit
    assert lines == ["first line", "two halves", "no newline"]


# --- several commands at once -----------------------------------------------------------------

# Each command marks its item as started in the directory $0, then waits until $1 commands have
# started, so the calls of a test surely overlap; then good* prints its item and exits 0, bad*
# complains on stderr and exits 3, hang* sleeps far past any timeout here.
TOGETHER = (
    'item=$(cat); : > "$0/$item"; '
    'while [ "$(ls "$0" | wc -l)" -lt "$1" ]; do sleep 0.01; done; '
    'case $item in bad*) echo "cannot take $item" >&2; exit 3;; hang*) exec sleep 30;; esac; '
    'echo "$item"'
)


def _run_in_threads(run: CommandHandler, items: list[str]) -> dict[str, Future[None]]:
    """Start one thread per item, each calling ``run`` with it; item -> its call's future."""
    pool = ThreadPoolExecutor(len(items))
    calls = {item: pool.submit(run, item.encode()) for item in items}
    pool.shutdown(wait=False)
    return calls


def _outcome(call: Future[None], timeout: float) -> str | None:
    """What the call raised, as text, or None when the item was done."""
    error = call.exception(timeout)
    return None if error is None else str(error)


@pytest.mark.parametrize("seed", range(4))
def test_overlapping_calls_each_get_their_own_outcome(tmp_path: Path, seed: int) -> None:
    # Given one command handler, and 2 to 8 items that succeed or fail at random
    rng = random.Random(seed)
    items = [f"{rng.choice(['good', 'bad'])}{i}" for i in range(rng.randint(2, 8))]
    lines: list[str] = []
    run = CommandHandler(
        ("sh", "-c", TOGETHER, str(tmp_path), str(len(items))), 20.0, output=lines.append
    )
    # When each item runs in its own thread, all at once
    calls = _run_in_threads(run, items)
    # Then each call reports its own item's outcome
    outcomes = {item: _outcome(call, 30) for item, call in calls.items()}
    assert outcomes == {
        item: None
        if item.startswith("good")
        else f"command failed (exit status 3): cannot take {item}"
        for item in items
    }
    # And only the good ones printed, each its own line
    assert sorted(lines) == sorted(item for item in items if item.startswith("good"))


@pytest.mark.parametrize("count", [2, 3])
def test_a_timeout_kills_only_the_command_that_ran_too_long(tmp_path: Path, count: int) -> None:
    # Given commands that hang, started one after another on one handler with a short timeout
    run = CommandHandler(("sh", "-c", TOGETHER, str(tmp_path), "1"), 0.5)
    calls = []
    for i in range(count):
        calls.append(_run_in_threads(run, [f"hang{i}"])[f"hang{i}"])
        _wait_until(lambda n=i + 1: len(list(tmp_path.iterdir())) == n, 10, f"command {i}")
    # Then each call is stopped by its own timeout, at its own deadline, not by another's
    started = time.monotonic()
    for call in calls:
        assert _outcome(call, 10) == "command timed out after 0.5s and was killed"
    assert time.monotonic() - started < 5


def _wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
