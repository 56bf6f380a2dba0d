"""A handler that forks cannot clone its worker.

A handler that calls ``os.fork()`` and lets the child return (instead of ending it with
``os._exit``) would send a copy of the worker back into goodsd's loop: a second consumer with
the same identity, Redis connection and scoreboard, running items twice and outliving the
master. Python runs ``os.register_at_fork`` hooks in every child it forks, so the worker marks
such a child, and its loop ends it the moment control comes back from the handler.
(``subprocess`` and ``multiprocessing``'s workers never come back: they exec or exit.)
"""

from __future__ import annotations

import logging
import os
from typing import NoReturn

from goodsd import output

log = logging.getLogger("goodsd.forkguard")


class ForkGuard:
    """``cloned`` turns true in any process forked from this one after ``install``."""

    def __init__(self) -> None:
        self.cloned = False
        self.home = os.getpid()

    def install(self) -> None:
        os.register_at_fork(after_in_child=self._mark)

    def _mark(self) -> None:
        self.cloned = True

    def leave(self) -> NoReturn:
        """End a clone at once: it must not touch the worker's Redis connection or items."""
        log.error(
            "a handler forked (worker pid %d) and the child returned into goodsd: ending the "
            "child; end a forked child with os._exit()",
            self.home,
        )
        output.flush_everything()
        os._exit(1)
