"""INSERT unless the row's unique key is taken, in one statement on either database.

``ON CONFLICT DO NOTHING`` (PostgreSQL, and SQLite since 3.24) instead of a savepoint
around an INSERT that may fail: one statement where that took three, and no failed
statement to roll back. The relay runs one of these per rule per event.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, Table, bindparam
from sqlalchemy.dialects.postgresql import insert

from careloop.adapters.db.driver_sql import DriverStatement, insert_defaults


@cache
def _statement(table: Table, keys: tuple[str, ...]) -> DriverStatement:
    # SQLAlchemy does not cache ON CONFLICT statements (it compiled one per row), so
    # each column set is compiled once per dialect here. The PostgreSQL construct
    # renders the same clause on SQLite. Only the given columns are bound: the others
    # keep their server defaults.
    key = next(iter(table.primary_key.columns))
    values = {name: bindparam(name, type_=table.c[name].type) for name in keys}
    statement = insert(table).values(values).on_conflict_do_nothing().returning(key)
    return DriverStatement(statement, _defaults(table))


@cache
def _defaults(table: Table) -> dict[str, Any]:
    return insert_defaults(table)


def insert_new_statement(table: Table, keys: set[str]) -> DriverStatement:
    """The statement ``insert_new`` runs for rows with these keys (for executemany)."""
    return _statement(table, tuple(sorted(keys | _defaults(table).keys())))


def insert_new(connection: Connection, table: Table, values: dict[str, Any]) -> bool:
    """Insert ``values`` into ``table``; False (and nothing written) when a row with the
    same primary or unique key exists already."""
    keys = tuple(sorted(values.keys() | _defaults(table).keys()))
    # Whether RETURNING gave a row is the answer: the cursor's rowcount is not reliable
    # for INSERT ... RETURNING across drivers.
    return _statement(table, keys).execute(connection, values).fetchone() is not None
