"""Statements compiled once per dialect and run on the DBAPI cursor.

Used only for the handful of INSERT/SELECT/UPDATE statements that every write path
runs (case, history, audit, outbox). There SQLAlchemy's per-execution bookkeeping cost
several times the database work; values still go through each column type's own bind
processor, so what is stored is exactly what SQLAlchemy would store. Many rows of an
INSERT go to PostgreSQL as multi-row statements (see multi_row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import Any, NamedTuple
from weakref import WeakSet

import psycopg
from sqlalchemy import Connection, Insert, Table, bindparam, insert
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import Null
from sqlalchemy.sql.schema import ColumnDefault
from sqlalchemy.types import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    SmallInteger,
    String,
    TypeDecorator,
    TypeEngine,
)

from careloop.adapters.db.multi_row import MultiRowInsert

Processor = Callable[[Any], Any]


class _Plan(NamedTuple):
    sql: str
    positional: bool  # qmark/format (SQLite) or named (psycopg's pyformat)
    names: tuple[str, ...]  # parameter order
    processors: tuple[tuple[int, Processor], ...]  # (index, bind processor), only typed ones
    copy_processors: tuple[tuple[int, Processor], ...]  # the same, for a COPY's text rows
    # For a binary COPY: per name its PostgreSQL type, and the processors it needs (JSON
    # as its text, datetimes as aware datetimes); None where a type has no binary form here.
    binary_types: tuple[str, ...] | None
    binary_processors: tuple[tuple[int, Processor], ...]
    rows: MultiRowInsert | None  # an INSERT's multi-row form, on psycopg only
    defaults: dict[str, Any]  # per name, its value where the caller leaves it out
    pick: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # the values in parameter order


class DriverStatement:
    def __init__(self, statement: ClauseElement, defaults: Mapping[str, Any] | None = None) -> None:
        self._statement = statement
        self._defaults = dict(defaults or {})
        # By dialect class: the SQL and bind processors differ per database and driver.
        self._plans: dict[type[Dialect], _Plan] = {}
        _MADE.add(self)

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """Run with ``params``; returns the DBAPI cursor (fetch RETURNING rows from it)."""
        plan = self._plan(connection)
        cursor = connection.connection.cursor()
        cursor.execute(plan.sql, _bound(plan, params))
        return cursor

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run once per row, in one round trip on PostgreSQL; returns the rows changed
        (for an UPDATE, those its WHERE still matched; sqlite3 counts none for a
        statement with RETURNING)."""
        if not rows:
            return 0
        plan = self._plan(connection)
        driver = connection.connection.driver_connection
        if plan.rows is not None and isinstance(driver, psycopg.Connection):
            copying = plan.rows.copies(len(rows))
            if copying and plan.binary_types is not None:
                binary = [_values(plan, params, plan.binary_processors) for params in rows]
                return plan.rows.copy(driver, binary, plan.binary_types)
            processors = plan.copy_processors if copying else plan.processors
            return plan.rows.run(driver, [_values(plan, params, processors) for params in rows])
        cursor = connection.connection.cursor()
        # One plan binds every row alike: all positional or all by name. psycopg
        # pipelines an executemany, and its rowcount sums the rows', as sqlite3's does.
        batch: Any = [_bound(plan, params) for params in rows]
        cursor.executemany(plan.sql, batch)
        return int(cursor.rowcount)

    def _plan(self, connection: Connection) -> _Plan:
        return self._plan_for(connection.dialect)

    def _plan_for(self, dialect: Dialect) -> _Plan:
        return self._plans.get(type(dialect)) or self._compile(dialect)

    def _compile(self, dialect: Dialect) -> _Plan:
        result = self._statement.compile(dialect=dialect)
        assert isinstance(result, SQLCompiler)
        names = tuple(result.positiontup or ()) if result.positional else tuple(result.binds)
        processors, copy_processors, binary_processors = [], [], []
        binary_types: list[str] | None = []
        for index, name in enumerate(names):
            bind_type = result.binds[name].type
            # dialect_impl: the type as this dialect stores it (SQLite's DATETIME text
            # format, PostgreSQL's JSON), exactly as SQLAlchemy itself would bind it.
            process = (
                _datetime_processor(bind_type, dialect)
                if _is_datetime(bind_type)
                else bind_type.dialect_impl(dialect).bind_processor(dialect)
            )
            if process is not None:
                processors.append((index, process))
            copy_text = _as_copy_text(bind_type, dialect, process) or process
            if copy_text is not None:
                copy_processors.append((index, copy_text))
            binary_type = _binary_type(bind_type, dialect)
            if binary_types is not None and binary_type is not None:
                binary_types.append(binary_type)
                if binary_type == "timestamptz":
                    # As it is: the binary form is the instant, in whatever zone it
                    # comes (a naive one is refused by psycopg, as by the column type's
                    # processor, and the batch re-runs carefully).
                    binary = None
                elif _is_datetime(bind_type):
                    binary = process  # a naive timestamp: the datetime, not its text
                else:
                    binary = copy_text  # JSON as its text: a json column's binary form
                if binary is not None:
                    binary_processors.append((index, binary))
            else:
                binary_types = None
        # A bind built with a value (a literal) keeps it unless the caller passes one.
        defaults = {name: self._defaults.get(name, result.binds[name].value) for name in names}
        plan = _Plan(
            str(result),
            bool(result.positional),
            names,
            tuple(processors),
            tuple(copy_processors),
            None if binary_types is None else tuple(binary_types),
            tuple(binary_processors),
            self._multi_row(dialect, names),
            defaults,
            _picker(names),
        )
        self._plans[type(dialect)] = plan
        return plan

    def _multi_row(self, dialect: Dialect, names: tuple[str, ...]) -> MultiRowInsert | None:
        if not isinstance(self._statement, Insert) or dialect.driver != "psycopg":
            return None
        # Compiled for executemany: without the RETURNING of the new id that PostgreSQL's
        # compiler adds to a single-row INSERT nobody reads it from.
        result = self._statement.compile(dialect=dialect, for_executemany=True)
        assert isinstance(result, SQLCompiler)
        if tuple(result.binds) != names:
            return None
        return MultiRowInsert.from_compiled(str(result), names)


# Every statement made, for compile_all (held weakly: one made per call goes away).
_MADE: WeakSet[DriverStatement] = WeakSet()


def compile_all(dialect: Dialect) -> int:
    """Compile every statement made so far for ``dialect``; returns how many were new.
    Start-up calls it, so that a fresh worker's first batch, or a server's first
    requests (several threads at once, each compiling the same statement), do not."""
    fresh = [s for s in list(_MADE) if type(dialect) not in s._plans]
    for statement in fresh:
        statement._plan_for(dialect)
    return len(fresh)


def _bound(plan: _Plan, params: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
    """``params`` as the driver takes them: in the plan's order, or by name."""
    values = _values(plan, params, plan.processors)
    return values if plan.positional else dict(zip(plan.names, values, strict=True))


def _values(
    plan: _Plan, params: Mapping[str, Any], processors: tuple[tuple[int, Processor], ...]
) -> list[Any]:
    """``params`` in the plan's order, each value through its column type's bind processor
    (``processors``: the plan's own, or its COPY ones)."""
    # C calls (itemgetter, and a merge only when a value is left out) where a loop of
    # dict.get cost twice as much: every row the relay writes comes through here, most
    # of them with every column given.
    try:
        values = list(plan.pick(params))
    except KeyError:
        values = list(plan.pick({**plan.defaults, **params}))
    for index, process in processors:
        values[index] = process(values[index])
    return values


def _as_copy_text(
    type_: TypeEngine[Any], dialect: Dialect, process: Processor | None
) -> Processor | None:
    """For a JSON or datetime column, what its bind processor (``process``) gives as the
    text a COPY sends. None for any other type: its own processor serves.

    JSON: the serializer's JSON text itself, where the processor wraps the value for
    psycopg to serialize with that same serializer through a Python-level dumper per
    value. A datetime: ``str()`` of what the processor gives, the text psycopg's own
    dumper sends, without its per-value choice of dumper (a third of a COPY row's cost
    on the relay's tables); the moment a write stamps on many rows is converted once."""
    if _is_datetime(type_):
        return _reuse_last(partial(_datetime_text, process))
    impl = type_.dialect_impl(dialect)
    if not isinstance(impl, JSON):
        return None
    serialize: Callable[[Any], str] = getattr(dialect, "_json_serializer", None) or json.dumps
    null, none_as_null = impl.NULL, impl.none_as_null

    def json_text(value: Any) -> str | None:
        # As JSON's bind processor decides what is SQL NULL and what JSON null.
        if value is null:
            value = None
        elif isinstance(value, Null) or (value is None and none_as_null):
            return None
        return serialize(value)

    return json_text


def _binary_type(type_: TypeEngine[Any], dialect: Dialect) -> str | None:
    """The PostgreSQL type a binary COPY sends a column's values as, or None if this
    module does not know its binary form (the COPY then goes as text). A JSON value goes
    as its serialized text: a json column's binary input is that text; jsonb's is not."""
    impl = type_.dialect_impl(dialect)
    while isinstance(impl, TypeDecorator):
        impl = impl.impl_instance.dialect_impl(dialect)
    if isinstance(impl, JSON):
        return None if isinstance(impl, JSONB) else "text"
    if isinstance(impl, DateTime):
        return "timestamptz" if impl.timezone else "timestamp"
    return next((name for kind, name in _BINARY_TYPES if isinstance(impl, kind)), None)


# Most specific first: BigInteger is an Integer, Text and Enum are Strings. Not here:
# floats and numerics (psycopg's dialect binds them as Numeric, float4 or float8).
_BINARY_TYPES: tuple[tuple[type[TypeEngine[Any]], str], ...] = (
    (BigInteger, "int8"),
    (SmallInteger, "int2"),
    (Integer, "int4"),
    (Boolean, "bool"),
    (String, "text"),
)


def _datetime_text(process: Processor | None, value: Any) -> str | None:
    if process is not None:
        value = process(value)
    return None if value is None else str(value)


def _picker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(names) == 1:  # itemgetter of one name gives the value, not a tuple
        name = names[0]
        return lambda params: (params[name],)
    if not names:
        return lambda params: ()
    return itemgetter(*names)


def _is_datetime(type_: TypeEngine[Any]) -> bool:
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    try:
        return type_.python_type is datetime
    except NotImplementedError:
        return False


# (dialect class, column type) -> its bind processor, shared by every statement.
_DATETIME_PROCESSORS: dict[tuple[type[Dialect], TypeEngine[Any]], Processor | None] = {}


def _datetime_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor | None:
    key = (type(dialect), type_)
    if key not in _DATETIME_PROCESSORS:
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        _DATETIME_PROCESSORS[key] = None if process is None else _reuse_last(process)
    return _DATETIME_PROCESSORS[key]


def _reuse_last(process: Processor) -> Processor:
    """Remember the last datetime converted: one write stamps the same moment on several
    columns of several rows, and a datetime is immutable, so that object converts alike."""
    last: list[tuple[Any, Any]] = [(object(), None)]

    def processed(value: Any) -> Any:
        seen, result = last[0]  # one tuple, read and replaced whole: safe across threads
        if value is seen:
            return result
        result = process(value)
        last[0] = (value, result)
        return result

    return processed


def insert_into(table: Table, returning_id: bool = False) -> DriverStatement:
    """INSERT of every column but a generated ``id``, with the table's scalar defaults."""
    statement = insert_row(table)
    if returning_id:
        statement = statement.returning(table.c.id)
    return DriverStatement(statement, insert_defaults(table))


def insert_row(table: Table, with_id: bool = False) -> Insert:
    """INSERT of every column but a generated ``id`` (unless ``with_id``: the caller
    allocated it), one bind parameter per column key."""
    columns = [c for c in table.columns if with_id or not (c.key == "id" and c.autoincrement)]
    return insert(table).values({c.key: bindparam(c.key, type_=c.type) for c in columns})


def insert_defaults(table: Table) -> dict[str, Any]:
    """Scalar Python-side column defaults, which SQLAlchemy would otherwise fill in."""
    return {
        column.key: column.default.arg
        for column in table.columns
        if isinstance(column.default, ColumnDefault) and not callable(column.default.arg)
    }
