"""JSON columns read back what was written, on both databases, whichever JSON reader
reads them (orjson for speed, json.loads where orjson would read differently)."""

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert, select
from sqlalchemy.engine import Engine

from careloop.adapters.db.engine import json_value, make_engine

VALUES: list[Any] = [
    {"name": "Zoë Ørsted", "mrn": "MRN-001", "tags": ["a", "b"], "nested": {"x": [1, 2.5]}},
    {"id": 2**64 + 1, "ids": [-(2**70), 2**63 - 1]},  # past 64 bits: stays a whole number
    {"phone": "1234567890123456789", "count": 0, "flag": False, "none": None},
    {"ratio": 0.1, "tiny": 5e-324, "big": 1.7976931348623157e308},
    ["plain", "list", 1],
]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_json_columns_read_back_what_was_written(engine: Engine) -> None:
    table = Table(
        "json_roundtrip", MetaData(), Column("id", Integer, primary_key=True), Column("v", JSON)
    )
    table.create(engine)
    try:
        with engine.begin() as connection:
            connection.execute(insert(table), [{"id": i, "v": v} for i, v in enumerate(VALUES)])
        with engine.connect() as connection:
            read = [row.v for row in connection.execute(select(table).order_by(table.c.id))]
    finally:
        table.drop(engine)
    assert read == VALUES
    assert type(read[1]["id"]) is int and read[1]["ids"][0] == -(2**70)


@pytest.mark.parametrize("text", [b'{"n": 123456789012345678901234567890}', "[NaN, Infinity]"])
def test_what_orjson_reads_differently_goes_to_json_loads(text: str | bytes) -> None:
    value = json_value(text)
    expected = json.loads(text)
    if isinstance(expected, list):
        assert all(math.isnan(v) or math.isinf(v) for v in value)
    else:
        assert value == expected and type(value["n"]) is int
