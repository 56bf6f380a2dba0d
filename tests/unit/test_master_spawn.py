"""The master without Redis or children: a failed fork backs off instead of killing it, and
the signals it reads are counted."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from goodsd.children import State
from goodsd.config import parse
from goodsd.master import Master, signals_to_handle
from goodsd.notify import Notifier


def test_a_failed_fork_backs_off_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a master wanting two consumers, on a host out of processes (a task limit)
    config = parse(
        "consumers: {processes: 2, handler: goodsd.handlers:noop}\n"
        "supervisor: {restart_delay: 2s, restart_delay_max: 8s}\n",
        "goodsd.yaml",
    )
    now = [100.0]
    master = Master(config, Notifier(environ={}), clock=lambda: now[0])

    def no_more_processes() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_more_processes)
    # When it tries to start them, and again when their backoff is over
    master.manage_children()
    first = [(c.state, c.restart_at, c.failures) for c in master.children]
    now[0] += 2.0
    master.manage_children()
    # Then both wait in backoff, with a growing delay, and nothing is left open
    assert first == [(State.BACKOFF, 102.0, 1), (State.BACKOFF, 102.0, 1)]
    assert [(c.state, c.restart_at, c.failures) for c in master.children] == [
        (State.BACKOFF, 106.0, 2),
        (State.BACKOFF, 106.0, 2),
    ]
    assert all(c.board is None and c.events == -1 and c.pid == 0 for c in master.children)


def test_every_signal_read_counts_but_a_burst_of_chld_or_hup_is_handled_once() -> None:
    ttin, chld, hup, term = signal.SIGTTIN, signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM
    data = bytes([ttin, chld, ttin, hup, chld, ttin, hup, term, term])
    assert signals_to_handle(data) == [ttin, chld, ttin, hup, ttin, term, term]
