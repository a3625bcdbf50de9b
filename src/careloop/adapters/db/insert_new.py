"""INSERT unless the row's unique key is taken, in one statement on either database.

``ON CONFLICT DO NOTHING`` (PostgreSQL, and SQLite since 3.24) instead of a savepoint
around an INSERT that may fail: one statement where that took three, and no failed
statement to roll back. The relay runs one of these per rule per event.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql.dml import ReturningInsert


@cache
def _ignoring_conflicts(table: Table) -> ReturningInsert[Any]:
    # The PostgreSQL construct renders the same clause on SQLite's compiler. Whether a
    # row came back from RETURNING is the answer; the result's rowcount is not (it read
    # 0 on PostgreSQL for inserted rows, with SQLAlchemy fetching the new primary key).
    key = next(iter(table.primary_key.columns))
    return insert(table).on_conflict_do_nothing().returning(key)


def insert_new(connection: Connection, table: Table, values: dict[str, Any]) -> bool:
    """Insert ``values`` into ``table``; False (and nothing written) when a row with the
    same primary or unique key exists already."""
    return connection.execute(_ignoring_conflicts(table), values).first() is not None
