"""A queue's state in Redis: every key, script and stored value goodsd uses, and nowhere else.

By audience: ``worker`` (the consumer's and producer's hot path), ``upkeep`` (what a master
does), ``views`` (operator views and actions); under them ``keys`` (every key name),
``records`` (the values goodsd stores) and ``scripts`` (the Lua in ``scripts/*.lua``).
"""

from goodsd.store.keys import STAT_FIELDS, QueueKeys
from goodsd.store.records import (
    MAX_ERROR,
    NO_DELIVERIES,
    TAG_LEN,
    TAG_MARK,
    Batch,
    DeadRecord,
    Delivery,
    MasterEntry,
    ProducerRecord,
    Registration,
    clip,
)
from goodsd.store.upkeep import Upkeep
from goodsd.store.views import ConsumerLoad, Overview, Views
from goodsd.store.worker import (
    NOT_HOLDER,
    PUSHED,
    ConsumerStore,
    Failure,
    InFlightLost,
    ProducerStore,
    PushResult,
    RedisConsumerStore,
    RetryPolicy,
    Settlement,
)

__all__ = [
    "MAX_ERROR",
    "NOT_HOLDER",
    "NO_DELIVERIES",
    "PUSHED",
    "STAT_FIELDS",
    "TAG_LEN",
    "TAG_MARK",
    "Batch",
    "ConsumerLoad",
    "ConsumerStore",
    "DeadRecord",
    "Delivery",
    "Failure",
    "InFlightLost",
    "MasterEntry",
    "Overview",
    "ProducerRecord",
    "ProducerStore",
    "PushResult",
    "QueueKeys",
    "RedisConsumerStore",
    "Registration",
    "RetryPolicy",
    "Settlement",
    "Upkeep",
    "Views",
    "clip",
]
