"""Capped exponential backoff: the one schedule for restarting children and retrying Redis."""


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """``base`` after the first failure, doubling with each further one, never above ``cap``;
    0.0 before any failure."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 32))
