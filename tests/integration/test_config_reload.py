"""A reload reads the config through the same checks as `check` and `run`: a path that is no
regular file, or a file nested too deep, is rejected at once, and the master keeps serving."""

from __future__ import annotations

import os
import signal

from test_reload import reload


def test_a_fifo_at_the_config_path_is_rejected_without_blocking_the_master(
    r, make_config, start_daemon, notify
):
    # Given a running master
    config = make_config(consumers={"processes": 1})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When its config file is replaced by a FIFO with no writer and it is told to reload
    config.unlink()
    os.mkfifo(config)
    reload(daemon, notify)
    # Then the reload is rejected at once (READY=1 follows), naming why
    daemon.wait_log(rf"reload rejected.*{config}: cannot read: a FIFO, not a regular file")
    # And the master still answers: a second reload is served too
    reload(daemon, notify)
    daemon.send(signal.SIGTTIN)
    daemon.wait_log(r"SIGTTIN: one consumer more \(2 wanted\)")


def test_a_deeply_nested_file_is_rejected_on_reload(r, make_config, start_daemon, notify):
    # Given a running master
    config = make_config(consumers={"processes": 1})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the file is rewritten with the 300 nested brackets and it is reloaded
    config.write_text(config.read_text() + "pythonpath: " + "[" * 300 + "]" * 300 + "\n")
    reload(daemon, notify)
    # Then the reload is rejected with one line, no traceback, and the master runs on
    line = daemon.wait_log(r"reload rejected.*nested deeper than 32 levels").group(0)
    assert "pythonpath" in line
    assert "Traceback" not in daemon.log()
