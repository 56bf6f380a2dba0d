"""Log lines: journald priority prefixes when stderr is the journal, JSON when asked, and
every line naming the process that wrote it."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket

from support import wait_for

from goodsd import logs


def test_under_the_journal_every_line_carries_its_priority(
    tmp_path, r, make_config, start_daemon, notify
):
    # Given goodsd whose stderr is the stream JOURNAL_STREAM names (the daemon's output file)
    # (a Daemon writes to goodsd-<number of such files already there>.log, truncating it in
    # place, so the inode made here is the one its stderr will be)
    output = tmp_path / "goodsd-1.log"
    output.touch()
    st = os.stat(output)
    config = make_config(consumers={"handler": "sample_handlers:fail", "retries": 0})
    daemon = start_daemon(config, notify=notify, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert daemon.log_path == output
    notify.wait("READY", "1")
    # When a handler fails (a warning) and a child is killed (an error)
    r.lpush("q", "bad")
    daemon.wait_log(r"handler failed on")
    child = min(daemon.children())
    os.kill(child, signal.SIGKILL)
    daemon.wait_log(rf"pid {child}\) killed by SIGKILL")
    # Then each line starts with its syslog priority and carries no timestamp (journald
    # adds one), and child lines name role, index and pid
    lines = [line for line in daemon.log().splitlines() if line]
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert re.search(r"^<6>info \[master\] goodsd master \d+ starting", daemon.log(), re.M)
    assert re.search(r"^<4>warning \[consumer \d pid \d+\] handler failed on", daemon.log(), re.M)
    assert re.search(
        rf"^<3>error \[master\] consumer \d \(pid {child}\) killed", daemon.log(), re.M
    )


def test_json_format_gives_one_object_per_line(r, make_config, start_daemon, notify):
    # Given goodsd logging JSON, with a handler that fails
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:fail", "retries": 0},
        logging={"level": "info", "format": "json"},
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", "bad")
    wait_for(lambda: r.llen("goodsd:{q}:dead") == 1, 10, "the item dead")
    assert daemon.stop() == 0
    # Then every line of output is one JSON object, master and child alike
    entries = [json.loads(line) for line in daemon.log().splitlines() if line]
    procs = {e["proc"] for e in entries}
    assert "master" in procs
    (child,) = [e for e in entries if e["proc"].startswith("consumer 0 pid")][:1]
    assert child["proc"] == f"consumer 0 pid {child['pid']}"
    failed = [e for e in entries if e["msg"].startswith("handler failed on")]
    assert failed and failed[0]["level"] == "warning"
    assert all({"ts", "level", "proc", "pid", "logger", "msg"} <= set(e) for e in entries)


def test_detached_without_a_log_file_goodsd_logs_to_syslog(tmp_path, monkeypatch):
    # Given a syslog socket (a stand-in for /dev/log)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log"))
    server.settimeout(5)
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "log"))
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        # When logging is set up for syslog and an error is logged
        logs.setup("info", "text", "master", target=logs.SYSLOG)
        logging.getLogger("goodsd.master").error("cannot %s", "cope")
        message = server.recv(4096).decode()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        server.close()
    # Then syslog gets the daemon facility at error priority, the pid, and no timestamp
    assert message.rstrip("\0") == f"<27>goodsd[{os.getpid()}]: error [master] cannot cope"


def test_items_and_errors_cannot_forge_log_lines(r, make_config, start_daemon, notify):
    # Given a handler whose error message carries newlines, a carriage return and a terminal
    # escape sequence
    config = make_config(
        consumers={"processes": 1, "handler": "sample_handlers:fail_forging", "retries": 0}
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When an item that also carries them fails
    r.lpush("q", "line one\nwarning [master] forged item\x1b[31m")
    daemon.wait_log(r"handler failed on")
    assert daemon.stop() == 0
    # Then every line of output is a whole log line of goodsd's own, and the item and the
    # error are shown on the one warning line, readably escaped
    output = daemon.log()
    assert "\x1b" not in output and "\r" not in output
    lines = [line for line in output.splitlines() if line]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \w+ \[", line) for line in lines)
    [warning] = [line for line in lines if "handler failed on" in line]
    assert warning.endswith(
        "handler failed on line one\\nwarning [master] forged item\\x1b[31m: "
        "ValueError: bad\\nerror [master] forged line\\r\\x1b[2J "
        "line one\\nwarning [master] forged item\\x1b[31m"
    )
