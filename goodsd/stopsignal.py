"""How every child takes SIGTERM: as a request to stop after its current step, however many
times it comes. (HUP, INT, TTIN and TTOU are the master's; it ignores them for children at
fork.)

A TERM often reaches a child twice for one stop: ``kill -TERM -- -PGID`` (``systemctl kill``,
supervisord's ``stopasgroup``, init scripts) hits the child and the master together, and the
master then relays the stop to its children. So a child never takes a second TERM as "stop now":
only a deliberate second stop request to the master may cut items, and the master does that
with SIGKILL (what the children held is requeued by the master).
"""

from __future__ import annotations

import signal
from typing import Protocol


class Stoppable(Protocol):
    running: bool  # the child's loop goes on while this is true


def install(worker: Stoppable) -> None:
    """Every SIGTERM sets ``worker.running`` to False; the worker's loop ends after its step."""

    def on_term(signum: int, frame: object) -> None:
        worker.running = False

    signal.signal(signal.SIGTERM, on_term)
