"""Built-in handlers: ``log`` for trying goodsd out, ``noop`` for measuring its own overhead."""

from __future__ import annotations

import logging

log_items = logging.getLogger("goodsd.handlers")


def log(item: object) -> None:
    """Log each item; the example config uses it so a first run shows something."""
    log_items.info("handled %r", item)


def noop(item: object) -> None:
    """Do nothing: what is left is goodsd's own cost per item."""
