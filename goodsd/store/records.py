"""The values goodsd keeps in Redis besides the items themselves, and how they are read back.

A failed item waits in the retry set inside an *envelope*: ``TAG_MARK + <16 hex> + ":" + <item>``.
The tag (64 random bits) makes each delivery distinct, so equal items never merge in the retry
set or the attempts hash. Any bytes are a valid item, envelope-shaped ones included, so a value
counts as a retry only when it has the envelope's exact shape *and* the attempts hash holds its
tag (``retry_tag`` in scripts/lib/shared.lua). Retries never pass through the ready list: a
claim moves due ones from the retry set straight into the claimer's in-flight list, and an
unstarted one given back returns to the retry set, due at once. So the ready list holds only
what was pushed, and no program that can read only the ready list ever sees a live tag it
could copy.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import NamedTuple

TAG_MARK = b"\x1egoodsd:"
TAG_LEN = 16
# Length of an envelope's head: the mark, the tag and the ":" before the item.
ENVELOPE_HEAD = len(TAG_MARK) + TAG_LEN + 1
# Longest error text kept in a dead record (a handler's exception message may be any size).
MAX_ERROR = 4000


class Delivery(NamedTuple):
    """One claimed item: ``claimed`` is the exact value in the in-flight list, ``payload`` the
    user's item inside it, ``tag`` the delivery tag when the item failed before (else None).
    A tuple, not a dataclass: one is made per item on the hot path."""

    claimed: bytes
    payload: bytes
    tag: str | None


def deliveries(values: list[bytes], retries: list[int]) -> list[Delivery]:
    """Claimed values as deliveries: ``retries`` holds the 1-based positions of the values that
    Redis found to be retry envelopes (``retry_tag`` in scripts/lib/shared.lua); every other
    value is the raw item, taken as it is whatever bytes it holds."""
    out = [Delivery(value, value, None) for value in values]
    for position in retries:
        out[position - 1] = from_envelope(values[position - 1])
    return out


def from_envelope(value: bytes) -> Delivery:
    """A retry envelope (checked by Redis) as the delivery it carries: tag and exact item."""
    tag = value[len(TAG_MARK) : len(TAG_MARK) + TAG_LEN].decode("ascii")
    return Delivery(value, value[ENVELOPE_HEAD:], tag)


def new_tag() -> str:
    """A fresh delivery tag: 16 hex digits, 64 random bits."""
    return secrets.token_hex(TAG_LEN // 2)


def tagged_value(tag: str, payload: bytes) -> bytes:
    """The retry envelope of ``payload`` under ``tag``; ``from_envelope`` reverses it."""
    return TAG_MARK + tag.encode("ascii") + b":" + payload


def dead_record_head(payload: bytes, error: str, consumer: str, at: float) -> bytes:
    """The JSON of a dead record up to its attempts count, which only the script knows:
    the script appends ``<attempts>}``. Items that are not UTF-8 are kept as base64."""
    tail = {"error": clip(error, MAX_ERROR), "at": round(at, 3), "consumer": consumer}
    try:
        text = json.dumps({"item": payload.decode("utf-8"), **tail}, ensure_ascii=False)
    except UnicodeDecodeError:
        text = ""
    # JSON escapes a control character in six bytes: an item made of them would grow past what
    # Redis takes in one argument. base64 grows it by a third, whatever it holds.
    if not text or len(text) > len(payload) * 4 // 3 + 1024:
        item_b64 = base64.b64encode(payload).decode("ascii")
        text = json.dumps({"item_b64": item_b64, **tail}, ensure_ascii=False)
    return (text[:-1] + ', "attempts": ').encode("utf-8")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_dead_record(raw: bytes) -> dict[str, object]:
    """Decode one entry of the dead list; an entry some other program pushed is shown raw."""
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"item": raw.decode("utf-8", "replace"), "error": "", "attempts": 0, "at": 0}
    return record


def dead_payload(raw: bytes) -> bytes:
    """The user's item inside a dead record, byte for byte; an entry some other program pushed
    (not one of our JSON records) is taken as the item itself."""
    try:
        record = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(record, dict) and isinstance(record.get("item_b64"), str):
        return base64.b64decode(record["item_b64"])
    if isinstance(record, dict) and isinstance(record.get("item"), str):
        return record["item"].encode("utf-8")
    return raw


def json_records(raw: dict[bytes, bytes]) -> dict[str, dict[str, object]]:
    """A hash of JSON objects; an entry that is not one is skipped, not fatal."""
    out: dict[str, dict[str, object]] = {}
    for key, value in raw.items():
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if isinstance(record, dict):
            out[key.decode("utf-8", "replace")] = record
    return out
