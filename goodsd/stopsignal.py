"""How every child takes SIGTERM: the first asks it to stop after its current step, the second
ends it at once. (HUP, INT, TTIN and TTOU are the master's; it ignores them for children at
fork.)"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Protocol

from goodsd import output


class Stoppable(Protocol):
    running: bool  # the child's loop goes on while this is true


def install(worker: Stoppable, on_second: Callable[[], None] = lambda: None) -> None:
    """``on_second`` runs just before the hard exit (a consumer kills its running command)."""

    def on_term(signum: int, frame: object) -> None:
        if not worker.running:
            on_second()
            output.flush_everything()
            os._exit(1)
        worker.running = False

    signal.signal(signal.SIGTERM, on_term)
