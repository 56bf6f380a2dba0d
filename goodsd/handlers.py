"""Built-in handlers: ``log`` for trying goodsd out, ``noop`` for measuring its own overhead,
``demo`` for `goodsd demo`."""

from __future__ import annotations

import logging
import random
import time
import zlib

log_items = logging.getLogger("goodsd.handlers")


def log(item: object) -> None:
    """Log each item; the example config uses it so a first run shows something."""
    log_items.info("handled %r", item)


def noop(item: object) -> None:
    """Do nothing: what is left is goodsd's own cost per item."""


def demo(item: object) -> None:
    """Pretend to work for 5-50 ms, and fail now and then, so the demo shows every path: about
    1 item in 100 is broken for good (retried, then dead), 4 in 100 fail by bad luck once
    (a retry gets them through)."""
    text = str(item)
    time.sleep(random.uniform(0.005, 0.05))
    if zlib.crc32(text.encode("utf-8", "replace")) % 100 == 0:
        raise ValueError(f"cannot parse {text!r}: simulated broken record")
    if random.random() < 0.04:
        raise TimeoutError("simulated: the warehouse did not answer in time")
