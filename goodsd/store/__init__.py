"""A queue's state in Redis: every key, script and stored value goodsd uses, and nowhere else."""

from goodsd.store.queue import (
    MAX_ERROR,
    NOT_HOLDER,
    PUSHED,
    STAT_FIELDS,
    TAG_LEN,
    TAG_MARK,
    ConsumerLoad,
    Delivery,
    Failure,
    InFlightLost,
    Overview,
    Queue,
    clip,
    dead_payload,
    parse_dead_record,
)

__all__ = [
    "MAX_ERROR",
    "NOT_HOLDER",
    "PUSHED",
    "STAT_FIELDS",
    "TAG_LEN",
    "TAG_MARK",
    "ConsumerLoad",
    "Delivery",
    "Failure",
    "InFlightLost",
    "Overview",
    "Queue",
    "clip",
    "dead_payload",
    "parse_dead_record",
]
