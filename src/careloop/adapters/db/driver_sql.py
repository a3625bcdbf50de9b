"""Statements compiled once per dialect and run on the DBAPI cursor.

Used only for the handful of INSERT/SELECT/UPDATE statements that every write path
runs (case, history, audit, outbox). There SQLAlchemy's per-execution bookkeeping cost
several times the database work; values still go through each column type's own bind
processor, so what is stored is exactly what SQLAlchemy would store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ColumnDefault

Processor = Callable[[Any], Any] | None


class DriverStatement:
    def __init__(self, statement: ClauseElement, defaults: Mapping[str, Any] | None = None) -> None:
        self._statement = statement
        self._defaults = dict(defaults or {})
        self._compiled: dict[str, tuple[str, list[str] | None, dict[str, Processor]]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, list[str] | None, dict[str, Processor]]:
        cached = self._compiled.get(dialect.name)
        if cached is not None:
            return cached
        result = self._statement.compile(dialect=dialect)
        assert isinstance(result, SQLCompiler)
        names = list(result.positiontup or []) if result.positional else None
        processors: dict[str, Processor] = {
            # dialect_impl: the type as this dialect stores it (SQLite's DATETIME text
            # format, PostgreSQL's JSON), exactly as SQLAlchemy itself would bind it.
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in result.binds.items()
        }
        compiled = (str(result), names, processors)
        self._compiled[dialect.name] = compiled
        return compiled

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """Run with ``params``; returns the DBAPI cursor (fetch RETURNING rows from it)."""
        sql, names, processors = self._for(connection.dialect)
        defaults = self._defaults

        def value(name: str) -> Any:
            raw = params[name] if name in params else defaults.get(name)
            processor = processors[name]
            return processor(raw) if processor is not None else raw

        cursor = connection.connection.cursor()
        if names is not None:
            cursor.execute(sql, [value(name) for name in names])
        else:
            cursor.execute(sql, {name: value(name) for name in processors})
        return cursor


def insert_into(table: Table, returning_id: bool = False) -> DriverStatement:
    """INSERT of every column but a generated ``id``, with the table's scalar defaults."""
    columns = [c for c in table.columns if not (c.key == "id" and c.autoincrement)]
    statement = insert(table).values({c.key: bindparam(c.key, type_=c.type) for c in columns})
    if returning_id:
        statement = statement.returning(table.c.id)
    return DriverStatement(statement, insert_defaults(table))


def insert_defaults(table: Table) -> dict[str, Any]:
    """Scalar Python-side column defaults, which SQLAlchemy would otherwise fill in."""
    return {
        column.key: column.default.arg
        for column in table.columns
        if isinstance(column.default, ColumnDefault) and not callable(column.default.arg)
    }
