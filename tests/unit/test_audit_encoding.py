"""The audit hash's canonical encoding keeps its bytes: stored hashes depend on them.

The definition is json.dumps with sorted keys, no spaces, UTF-8 and str() for what JSON
cannot hold; the fast path (orjson for plain JSON) must give the very same bytes for
every value, and hand anything it would write differently to json.dumps."""

from __future__ import annotations

import enum
import json
import random
import uuid
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from careloop.domain.audit import AuditRecord, canonical_encoding, compute_hash, record_fields

T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


def _definition(chain: int, seq: int, record: AuditRecord) -> bytes:
    body = {
        **record_fields(record),
        "chain": chain,
        "seq": seq,
        "occurred_at": record.occurred_at.isoformat(timespec="microseconds"),
    }
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def _record(**changes: Any) -> AuditRecord:
    base = AuditRecord(
        occurred_at=T0,
        actor_id=7,
        actor_name="automation:review-queue",
        action="case.update",
        case_id=123,
        patient_ref="MRN123",
        data_category="demographics",
        source_address="10.0.0.1",
        reason="rule review-queue",
        detail={"fields": ["queue", "team"]},
    )
    return replace(base, **changes)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Kind(str, enum.Enum):  # noqa: UP042 - the mixin, whose str() is not its value
    TASK = "task"


class Text(str):
    def __str__(self) -> str:
        return "not the value"


@dataclass
class Point:
    x: int


ODD_DETAILS: list[Any] = [
    {},
    {"n": 0, "neg": -1, "top": 2**63 - 1, "bottom": -(2**63), "u64": 2**64 - 1},
    {"past_64_bits": 2**64, "below": -(2**63) - 1, "huge": 10**30},
    {"float": 1.5, "exp": 1e16, "tiny": 5e-324, "nan": float("nan"), "inf": float("inf")},
    {"when": T0, "day": date(2026, 3, 2), "delta": timedelta(hours=2)},
    {"enum": Colour.RED, "int_enum": Level.HIGH, "str_enum": Kind.TASK},
    {"sub": Text("value"), "uuid": uuid.UUID(int=7), "decimal": Decimal("1.10")},
    {"dataclass": Point(1), "set": {1}, "bytes": b"x"},
    {1: "int key", 20: "another"},
    {True: "bool key"},
    {2.5: "float key"},
    {"tuple": (1, "a", None), "nested": [{"b": [True, False, None]}, []]},
    {"é": "ü", "z": "a", "Z": "b", "ä": 1, "\u2028": "line sep", "𝄞": "astral"},
    {"controls": "".join(chr(c) for c in range(32)) + '"\\\x7f'},
]


@pytest.mark.parametrize("detail", ODD_DETAILS, ids=lambda d: ",".join(map(str, d)) or "empty")
def test_odd_details_encode_as_the_definition(detail: Any) -> None:
    record = _record(detail=detail)
    assert canonical_encoding(4, 99, record) == _definition(4, 99, record)


def test_keys_json_cannot_sort_fail_as_the_definition_does() -> None:
    record = _record(detail={1: "int key", "2": "str key"})
    with pytest.raises(TypeError):
        _definition(1, 1, record)
    with pytest.raises(TypeError):
        canonical_encoding(1, 1, record)


def test_every_character_encodes_as_the_definition() -> None:
    # All of Unicode but the surrogates (json.dumps writes those, then .encode() fails).
    characters = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for start in range(0, len(characters), 4096):
        text = "".join(characters[start : start + 4096])
        record = _record(reason=text, detail={text[:50]: text, "k": text[::-1]})
        assert canonical_encoding(1, 1, record) == _definition(1, 1, record), start


def test_random_plain_values_encode_as_the_definition() -> None:
    rng = random.Random(20261121)

    def text() -> str:
        ranges = ((32, 127), (0, 32), (0x80, 0x800), (0x800, 0xD800), (0x10000, 0x110000))
        return "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(6)))

    def value(depth: int) -> Any:
        pick = rng.randrange(8 if depth < 3 else 5)
        if pick == 0:
            return text()
        if pick == 1:
            return rng.randrange(-(2**70), 2**70) if rng.random() < 0.2 else rng.randrange(-9, 99)
        if pick == 2:
            return rng.choice([True, False, None])
        if pick == 3:
            return rng.uniform(-1e20, 1e20)
        if pick == 4:
            return T0 + timedelta(minutes=rng.randrange(10_000))
        if pick == 5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        if pick == 6:
            return tuple(value(depth + 1) for _ in range(rng.randrange(3)))
        return {text(): value(depth + 1) for _ in range(rng.randrange(5))}

    for _ in range(3000):
        record = _record(
            actor_name=text(),
            reason=text(),
            patient_ref=rng.choice([None, text()]),
            case_id=rng.choice([None, rng.randrange(2**40)]),
            detail={text(): value(0) for _ in range(rng.randrange(4))},
        )
        assert canonical_encoding(2, 5, record) == _definition(2, 5, record)


def test_the_occurred_at_kept_from_the_last_record_is_never_reused_wrongly() -> None:
    first = _record()
    same_moment = _record(occurred_at=datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC))
    later = _record(occurred_at=T0 + timedelta(microseconds=1))
    for record in (first, later, same_moment, first, later):
        assert canonical_encoding(1, 2, record) == _definition(1, 2, record)


def test_record_fields_are_the_record_fields_in_order() -> None:
    record = _record()
    assert list(record_fields(record)) == [f.name for f in fields(AuditRecord)]
    assert record_fields(record) == {f.name: getattr(record, f.name) for f in fields(AuditRecord)}


def test_a_known_hash_never_changes() -> None:
    # Computed with the definition when the encoding was first written: a change of
    # encoding that moves it would break every stored chain.
    record = _record(detail={"fields": ["queue"], "é": [1, None, True]})
    assert compute_hash("0" * 64, 3, 17, record) == (
        "0d1a1955bd023d25d37c8684ae45acae84a8a0c9314bc39c4de76311178a98fc"
    )
