"""Producer sources the integration tests configure (this directory is on the daemon's
pythonpath). Sizes come from the environment, so one function serves several tests."""

from __future__ import annotations

import os
from collections.abc import Iterator


def finite() -> Iterator[str]:
    """item-0 .. item-<N-1>, N from $TEST_SOURCE_ITEMS (default 1000), then the end."""
    for i in range(int(os.environ.get("TEST_SOURCE_ITEMS", "1000"))):
        yield f"item-{i}"


def crashing() -> Iterator[str]:
    """Three items, then an error: the producer must push them and be restarted."""
    yield from ("early-0", "early-1", "early-2")
    raise RuntimeError("source broke")


def not_iterable() -> int:
    return 42
