"""The values goodsd keeps in Redis besides the items themselves: each has one encoding here and
one decoding, and no other module knows their fields.

- ``Registration``: a consumer's entry in the consumers hash (who it is, where it runs).
- ``MasterEntry``: a master's entry in the masters hash (refreshed every few seconds).
- ``ProducerRecord``: a producer's entry in the producers hash (its state, for status views).
- ``DeadRecord``: an entry of the dead list (the item, its last error, its attempts).
- retry envelopes: ``TAG_MARK + <16 hex> + ":" + <item>``, below; a suspect (an item that
  was running beside others when their worker died) is a retry envelope too, its tag in the
  suspects hash.

Registry records are flat JSON objects whose keys are the dataclass's field names; a reader
takes a field only when it has the expected JSON type, so a record some other version (or
program) wrote never breaks one.

A failed item waits in the retry set inside a retry *envelope*. Its tag (64 random bits) makes
each delivery distinct, so equal items never merge in the retry set or the attempts hash. Any
bytes are a valid item, envelope-shaped ones included, so a value counts as a retry only when it
has the envelope's exact shape *and* the attempts hash holds its tag (``retry_tag`` in
scripts/lib/shared.lua). Retries never pass through the ready list: a claim moves due ones from
the retry set straight into the claimer's in-flight list, and an unstarted one given back
returns to the retry set, due at once. So the ready list holds only what was pushed, and no
program that can read only the ready list ever sees a live tag it could copy.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple, Self, TypeVar, overload

TAG_MARK = b"\x1egoodsd:"
TAG_LEN = 16
# Length of an envelope's head: the mark, the tag and the ":" before the item.
ENVELOPE_HEAD = len(TAG_MARK) + TAG_LEN + 1
# Longest error text kept in a dead record (a handler's exception message may be any size).
MAX_ERROR = 4000
T = TypeVar("T")


class Delivery(NamedTuple):
    """One claimed item: ``claimed`` is the exact value in the in-flight list, ``payload`` the
    user's item inside it, ``tag`` the delivery tag when the item failed before or is a
    suspect (else None). A tuple, not a dataclass: with several items at a time, one is made
    per item."""

    claimed: bytes
    payload: bytes
    tag: str | None

    # Not a field: only a Suspect is one, and a delivery stays the 3-tuple it always was.
    suspect = False


class Suspect(Delivery):
    """A delivery that was running beside others when their worker died, so it may be what
    killed it: it is to run alone (see scripts/lib/shared.lua ``suspect_delivery``)."""

    __slots__ = ()
    suspect = True


class Batch(Sequence[Delivery]):
    """Deliveries in claimed order, kept as three parallel lists: ``values`` (the exact values
    in the in-flight list), ``payloads`` (the items inside them) and ``tags`` (the delivery
    tag of each, None for an item that never failed), and ``suspects``, the positions (from 0)
    of the suspects among them: the delivery at such a position is a ``Suspect``, to run
    alone. Not to be changed once made.

    A Delivery is built only when one is looked at: iterating a batch makes one per item
    (what a consumer running several items at once holds), while a consumer running one at a
    time runs straight down ``payloads`` and settles slices of the batch, so an item costs it
    no object of its own (a Delivery per claimed item cost about 0.2 µs, a sixth of what
    goodsd added to a bare loop per item at batch 100). Equal to any list or tuple of the same
    deliveries. Code run per batch counts ``values`` or ``payloads`` rather than the batch:
    ``len()`` of a list costs no Python call.
    """

    __slots__ = ("payloads", "suspects", "tags", "values")

    def __init__(
        self,
        values: list[bytes] | None = None,
        payloads: list[bytes] | None = None,
        tags: list[str | None] | None = None,
        suspects: frozenset[int] = frozenset(),
    ) -> None:
        """Without ``payloads`` and ``tags``: values that are not retry envelopes, each its own
        payload, untagged. Without anything: an empty batch. ``suspects``: positions (from 0,
        each below ``len(values)``) whose delivery is a Suspect; a suspect is tagged."""
        self.values = [] if values is None else values
        self.payloads = self.values if payloads is None else payloads
        self.tags = [None] * len(self.values) if tags is None else tags
        self.suspects = suspects

    @classmethod
    def of(cls, items: Iterable[Delivery]) -> Batch:
        """Deliveries from anywhere as a batch; its Suspects stay suspects."""
        chosen = list(items)
        return cls(
            [d.claimed for d in chosen],
            [d.payload for d in chosen],
            [d.tag for d in chosen],
            frozenset(i for i, d in enumerate(chosen) if d.suspect),
        )

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> Delivery: ...

    @overload
    def __getitem__(self, index: slice) -> Batch: ...

    def __getitem__(self, index: int | slice) -> Delivery | Batch:
        if isinstance(index, slice):
            suspects = self.suspects
            if suspects:  # renumbered from the slice's start
                taken = range(len(self.values))[index]
                suspects = frozenset(i for i, p in enumerate(taken) if p in self.suspects)
            return Batch(self.values[index], self.payloads[index], self.tags[index], suspects)
        # % len: a negative index names the same position as its positive twin; an index out of
        # range still raises IndexError from the list below
        suspect = bool(self.suspects) and index % len(self.values) in self.suspects
        return (Suspect if suspect else Delivery)(
            self.values[index], self.payloads[index], self.tags[index]
        )

    def __iter__(self) -> Iterator[Delivery]:
        if self.suspects:
            return map(self.__getitem__, range(len(self.values)))
        return map(Delivery, self.values, self.payloads, self.tags)

    def pick(self, positions: Iterable[int]) -> Batch:
        """The deliveries at ``positions`` (from 0), in that order."""
        chosen = list(positions)
        suspects = self.suspects
        if suspects:
            n = len(self.values)
            suspects = frozenset(i for i, p in enumerate(chosen) if p % n in self.suspects)
        return Batch(
            [self.values[p] for p in chosen],
            [self.payloads[p] for p in chosen],
            [self.tags[p] for p in chosen],
            suspects,
        )

    def __add__(self, other: Batch) -> Batch:
        suspects = self.suspects
        if other.suspects:
            suspects = suspects | {p + len(self.values) for p in other.suspects}
        return Batch(
            self.values + other.values,
            self.payloads + other.payloads,
            self.tags + other.tags,
            suspects,
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Batch | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside, like a list

    def __repr__(self) -> str:
        return f"Batch({list(self)!r})"


# Nothing claimed: shared, as no batch is changed once made.
NO_DELIVERIES = Batch()


def deliveries(values: list[bytes], retries: list[int]) -> Batch:
    """Claimed values as deliveries: ``retries`` holds the 1-based positions of the values that
    Redis found to be retry envelopes (``retry_tag`` in scripts/lib/shared.lua), negative for
    the suspects among them; every other value is the raw item, taken as it is whatever bytes
    it holds."""
    if not retries:
        return Batch(values)
    payloads, tags = list(values), [None] * len(values)
    suspects: set[int] = set()
    for position in retries:
        if position < 0:  # a suspect: counted from the end, -position would read the wrong item
            position = -position
            suspects.add(position - 1)
        _, payloads[position - 1], tags[position - 1] = from_envelope(values[position - 1])
    return Batch(values, payloads, tags, frozenset(suspects))


# Fingerprints are 63 bits, never negative: a scoreboard slot holds -1 when idle.
FINGERPRINT_BITS = (1 << 63) - 1


def fingerprint(claimed: bytes) -> int:
    """A number naming a claimed value (0 to 2**63 - 1), for the scoreboard slot that runs it:
    the master matches it against the values a dead consumer held (``Upkeep.requeue``), so a
    slot names its item whatever order the others are settled in. It is Python's hash of the
    bytes: children are forked from the master without exec, so they share its hash secret and
    the master computes the same number. Equal values share a fingerprint, as they share
    everything in flight: settling and requeueing take them by value too. The loop of one
    item at a time (``Consumer.run_batch``) computes it inline, to spare a call per item: a
    change here is a change there."""
    return hash(claimed) & FINGERPRINT_BITS


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


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- registry records ------------------------------------------------------------------------


class _Record:
    """A registry record: a frozen dataclass whose fields are all it stores, as one JSON
    object. Each field is read back by its declared type; a value of another type (written by
    another version, or by hand) reads as not known."""

    def encode(self) -> str:
        return json.dumps(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def decode(cls, raw: bytes) -> Self | None:
        """None when ``raw`` is not a JSON object."""
        obj = _json_object(raw)
        if obj is None:
            return None
        values = {f.name: _READERS[str(f.type)](obj, f.name) for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**values)


@dataclass(frozen=True)
class Registration(_Record):
    """A consumer's entry in the consumers hash: what a master needs to judge, on this host,
    whether the consumer and its master still run. None: not known (or not written)."""

    host: str | None = None  # the host name it runs on
    pid: int | None = None  # its process id there
    proc_start: int | None = None  # its start time in clock ticks since boot (pid reuse)
    pidns: str | None = None  # boot id and pid namespace: only a peer there can judge pids
    master_pid: int | None = None  # its master's process id
    master_start: int | None = None  # its master's start time in clock ticks since boot
    started: float | None = None  # wall-clock seconds when it registered


@dataclass(frozen=True)
class MasterEntry(_Record):
    """A master's entry in the masters hash; ``seen`` tells whether it is still there."""

    host: str | None = None  # the host name it runs on
    pid: int | None = None  # its process id there
    started: float | None = None  # wall-clock seconds when it started
    seen: float | None = None  # wall-clock seconds of its last refresh
    version: str | None = None  # its goodsd version
    consumers: int | None = None  # its running consumers
    producers: int | None = None  # its running producers
    running: dict[str, int] | None = None  # consumer id -> items it runs now


@dataclass(frozen=True)
class ProducerRecord(_Record):
    """A producer's entry in the producers hash, for status views and for the clean-up of
    entries whose producer is gone."""

    host: str | None = None  # the host name it runs on
    pid: int | None = None  # its process id there
    proc_start: int | None = None  # its start time in clock ticks since boot
    master_pid: int | None = None  # its master's process id
    master_start: int | None = None  # its master's start time in clock ticks since boot
    state: str | None = None  # active, paused, standby or finished
    pushed: int | None = None  # items it pushed
    lock: bool = False  # it holds the singleton lock
    updated: float | None = None  # wall-clock seconds of this record


def decode_hash(raw: dict[bytes, bytes], decode: Callable[[bytes], T | None]) -> dict[str, T]:
    """A registry hash (id -> record) decoded; an entry that is not a record is skipped."""
    out: dict[str, T] = {}
    for key, value in raw.items():
        record = decode(value)
        if record is not None:
            out[key.decode("utf-8", "replace")] = record
    return out


# -- dead records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadRecord:
    """An entry of the dead list: the item byte for byte, its last error, when it died (wall
    clock), the consumer that held it and its failed attempts. None: not in the record."""

    item: bytes
    error: str | None = None
    at: float | None = None
    consumer: str | None = None
    attempts: int | None = None

    def fields(self) -> dict[str, object]:
        """The record as its JSON object: the item as ``item`` (text) or, when it is not UTF-8
        or JSON would blow it up, ``item_b64``; the fields not known are left out."""
        tail: dict[str, object] = {}
        if self.error is not None:
            tail["error"] = clip(self.error, MAX_ERROR)
        if self.at is not None:
            tail["at"] = round(self.at, 3)
        if self.consumer is not None:
            tail["consumer"] = self.consumer
        try:
            text = json.dumps({"item": self.item.decode("utf-8"), **tail}, ensure_ascii=False)
        except UnicodeDecodeError:
            text = ""
        # JSON escapes a control character in six bytes: an item made of them would grow past
        # what Redis takes in one argument. base64 grows it by a third, whatever it holds.
        # Judged in bytes: crafted multibyte UTF-8 can make the text short and its bytes long.
        room = len(self.item) * 4 // 3 + len(json.dumps(tail, ensure_ascii=False).encode()) + 64
        if text and len(text.encode()) <= room:
            out = {"item": self.item.decode("utf-8"), **tail}
        else:
            out = {"item_b64": base64.b64encode(self.item).decode("ascii"), **tail}
        if self.attempts is not None:
            out["attempts"] = self.attempts
        return out

    def head(self) -> bytes:
        """The record's JSON up to its attempts count, which only the script that writes it
        knows: it appends ``<attempts>}``. Needs error, at and consumer, not attempts."""
        text = json.dumps(self.fields(), ensure_ascii=False)
        return (text[:-1] + ', "attempts": ').encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> DeadRecord:
        """One entry of the dead list. An entry some other program pushed (not one of our JSON
        records) is its own item, with an empty error and 0 attempts."""
        obj = _json_object(raw) or {}
        item_b64, text = obj.get("item_b64"), obj.get("item")
        if isinstance(item_b64, str):
            item = base64.b64decode(item_b64)
        elif isinstance(text, str):
            item = text.encode("utf-8")
        else:
            return cls(item=raw, error="", at=0.0, attempts=0)
        return cls(
            item=item,
            error=_text(obj, "error"),
            at=_number(obj, "at"),
            consumer=_text(obj, "consumer"),
            attempts=_int(obj, "attempts"),
        )


# -- reading JSON fields ---------------------------------------------------------------------


def _json_object(raw: bytes) -> dict[str, object] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _text(obj: dict[str, object], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def _int(obj: dict[str, object], name: str) -> int | None:
    value = obj.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(obj: dict[str, object], name: str) -> float | None:
    value = obj.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _flag(obj: dict[str, object], name: str) -> bool:
    return obj.get(name) is True


def _counts(obj: dict[str, object], name: str) -> dict[str, int] | None:
    """A JSON object of counts; entries that are not a name and a whole number are left out."""
    value = obj.get(name)
    if not isinstance(value, dict):
        return None
    return {
        key: count
        for key, count in value.items()
        if isinstance(count, int) and not isinstance(count, bool)
    }


# a record field's declared type -> how it is read from the JSON object
_READERS: dict[str, Callable[[dict[str, object], str], object]] = {
    "str | None": _text,
    "int | None": _int,
    "float | None": _number,
    "bool": _flag,
    "dict[str, int] | None": _counts,
}


def without(held: Sequence[Delivery], taken: Collection[Delivery]) -> list[Delivery]:
    """``held`` less one delivery equal to each of ``taken`` (equal deliveries are
    interchangeable in flight), in ``held``'s order."""
    left = Counter(taken)
    rest = []
    for delivery in held:
        if left[delivery] > 0:
            left[delivery] -= 1
        else:
            rest.append(delivery)
    return rest
