"""How items are wrapped for Redis: delivery tags and dead records. Pure functions, no Redis."""

from __future__ import annotations

import base64
import json

import pytest

from goodsd.store.records import (
    MAX_ERROR,
    TAG_LEN,
    TAG_MARK,
    Batch,
    DeadRecord,
    Delivery,
    Suspect,
    deliveries,
    from_envelope,
    new_tag,
    tagged_value,
)

PAYLOADS = [
    b"good7",
    b"",
    b'{"id": 1}',
    b"\xff\xfe\x00binary\x1e",
    TAG_MARK,  # a user item that merely looks like the mark
    b"caf\xc3\xa9 \xe2\x9c\x93",
    b"line one\nline two",
]


# --- tags -------------------------------------------------------------------------------------


def test_new_tags_are_hex_of_the_fixed_length_and_distinct() -> None:
    tags = {new_tag() for _ in range(100)}
    assert len(tags) == 100
    assert all(len(t) == TAG_LEN and int(t, 16) >= 0 for t in tags)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_envelope_gives_back_the_same_tag_and_payload(payload: bytes) -> None:
    # Given a payload in a retry envelope
    tag = new_tag()
    value = tagged_value(tag, payload)
    # When it is claimed again
    delivery = from_envelope(value)
    # Then the tag and the exact payload come back, and the claimed value is kept as is
    assert delivery == (value, payload, tag)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_values_redis_did_not_mark_as_retries_are_the_raw_item(payload: bytes) -> None:
    # Given claimed values, envelope-shaped or not, that Redis did not find to be retries
    values = [payload, tagged_value(new_tag(), payload)]
    # Then each is delivered whole, untouched, with no tag
    assert deliveries(values, []) == [(v, v, None) for v in values]


def test_only_the_positions_redis_marked_are_unwrapped() -> None:
    tag = new_tag()
    values = [b"good1", tagged_value(tag, b"good2"), b"good3"]
    assert deliveries(values, [2]) == [
        (b"good1", b"good1", None),
        (values[1], b"good2", tag),
        (b"good3", b"good3", None),
    ]


def test_a_batch_reads_as_the_deliveries_it_holds() -> None:
    # Given claimed values, the second of them a retry
    tag = new_tag()
    values = [b"good1", tagged_value(tag, b"good2"), b"good3"]
    first, second, third = (
        Delivery(b"good1", b"good1", None),
        Delivery(values[1], b"good2", tag),
        Delivery(b"good3", b"good3", None),
    )
    # When they are read as a batch
    batch = deliveries(values, [2])
    # Then it reads as those deliveries: whole, by index, in slices, picked, joined
    assert list(batch) == [first, second, third] and len(batch) == 3
    assert batch[1] == second and batch[-1] == third
    assert batch[1:] == [second, third] and batch.pick([2, 0]) == [third, first]
    assert batch[:1] + batch[2:] == [first, third] and batch != [first, second]
    assert Batch.of([first, second, third]) == batch
    # And its payloads are the items inside the values
    assert batch.payloads == [b"good1", b"good2", b"good3"]


def test_a_batch_keeps_its_suspects_however_it_is_cut_or_joined() -> None:
    # Given claimed values, the second a retry and the third a suspect (negative position)
    retry_tag, suspect_tag = new_tag(), new_tag()
    values = [b"good1", tagged_value(retry_tag, b"good2"), tagged_value(suspect_tag, b"good3")]
    batch = deliveries([*values, b"good4"], [2, -3])
    # Then the suspect is a Suspect with its own payload and tag, the others are not
    assert [type(d) for d in batch] == [Delivery, Delivery, Suspect, Delivery]
    assert batch[2] == (values[2], b"good3", suspect_tag) and batch[-2].suspect
    assert batch.payloads == [b"good1", b"good2", b"good3", b"good4"]
    assert batch.tags == [None, retry_tag, suspect_tag, None]
    # And it stays one in slices, picks, joins and batches made of deliveries
    assert [d.suspect for d in batch[1:]] == [False, True, False]
    assert [d.suspect for d in batch[::-1]] == [False, True, False, False]
    assert [d.suspect for d in batch.pick([3, 2, 0])] == [False, True, False]
    assert [d.suspect for d in batch[2:] + batch[:2]] == [True, False, False, False]
    assert [d.suspect for d in batch[:2] + batch[2:]] == [False, False, True, False]
    assert [d.suspect for d in Batch.of(reversed(list(batch)))] == [False, True, False, False]
    assert not deliveries(values, [2]).suspects


# --- dead records -----------------------------------------------------------------------------


def dead_head(payload: bytes, error: str, consumer: str, at: float) -> bytes:
    """The dead record head a consumer writes for ``payload``."""
    return DeadRecord(item=payload, error=error, at=at, consumer=consumer).head()


def complete(head: bytes, attempts: int) -> dict[str, object]:
    """What the settle script does: append the attempts count and the closing brace."""
    return json.loads(head + f"{attempts}}}".encode())


def test_dead_record_head_plus_attempts_is_one_json_object() -> None:
    # Given a failed UTF-8 item
    head = dead_head(b"good7", "ValueError: cannot handle good7", "host-1-abc", 1700000000.1234)
    # When the script appends the attempts count
    record = complete(head, 4)
    # Then it is a JSON object with every field
    assert record == {
        "item": "good7",
        "error": "ValueError: cannot handle good7",
        "at": 1700000000.123,
        "consumer": "host-1-abc",
        "attempts": 4,
    }


def test_dead_record_keeps_non_utf8_items_as_base64() -> None:
    # Given an item that is not UTF-8
    payload = b"\xff\xfe\x00binary"
    # When it is dead-lettered
    record = complete(dead_head(payload, "boom", "c", 1.0), 1)
    # Then the bytes survive exactly, as base64, and there is no "item" field
    assert "item" not in record
    assert base64.b64decode(record["item_b64"]) == payload


def test_dead_record_escapes_awkward_errors_and_keeps_unicode() -> None:
    # Given an error with quotes, a newline, a brace and non-ASCII text
    error = "KeyError: 'x' \"quoted\" }\nsecond line — ünïcode ✓"
    record = complete(dead_head("café".encode(), error, "c", 2.0), 10)
    # Then the JSON is still valid and every character comes back
    assert record["error"] == error
    assert record["item"] == "café"
    assert record["attempts"] == 10


def test_a_dead_record_reads_back_what_goodsd_wrote() -> None:
    raw = dead_head(b"good1", "err", "c", 3.0) + b"2}"
    assert DeadRecord.decode(raw).fields() == {
        "item": "good1",
        "error": "err",
        "at": 3.0,
        "consumer": "c",
        "attempts": 2,
    }


@pytest.mark.parametrize("raw", [b"not json at all", b"[1, 2]", b"42", b'"a string"', b"\xff\xfe"])
def test_foreign_dead_entries_are_shown_raw(raw: bytes) -> None:
    # Given an entry some other program pushed onto the dead list
    record = DeadRecord.decode(raw)
    # Then it is shown as its raw bytes, with empty metadata, instead of failing
    assert record == DeadRecord(item=raw, error="", attempts=0, at=0)


def test_an_item_that_json_would_blow_up_is_kept_as_base64() -> None:
    # Given an item of control characters (six bytes each once escaped as JSON)
    payload = b"\x01" * 100_000
    head = dead_head(payload, "boom", "c1", 1.0)
    # Then the record keeps it as base64, a third larger at most, and it reads back whole
    assert len(head) < len(payload) * 4 // 3 + 1024
    record = complete(head, 1)
    assert base64.b64decode(record["item_b64"]) == payload


def test_a_huge_error_is_clipped_in_the_dead_record() -> None:
    record = complete(dead_head(b"good1", "x" * 100_000, "c1", 1.0), 1)
    assert len(record["error"]) == MAX_ERROR and record["error"].endswith("...")


def test_an_item_of_multibyte_characters_and_controls_stays_within_a_third_more() -> None:
    # Given UTF-8 crafted so that JSON escaping grows it most per byte
    payload = "😀".encode() * 1000 + b"\x01" * 1000
    head = dead_head(payload, "boom", "c1", 1.0)
    # Then the record is at most about a third larger than the item
    assert len(head) <= len(payload) * 4 // 3 + 200
    assert base64.b64decode(complete(head, 1)["item_b64"]) == payload
