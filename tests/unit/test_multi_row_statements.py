"""How a single-row INSERT becomes statements of several rows for PostgreSQL."""

import pytest
from sqlalchemy import (
    Column,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.sql.compiler import SQLCompiler

from careloop.adapters.db.multi_row import MAX_ROWS, MultiRowInsert, _ladder

DIALECT = psycopg.dialect()  # type: ignore[no-untyped-call]
TABLE = Table(
    "things",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(20)),
    Column("size", Integer),
)


def _multi(statement: Insert) -> MultiRowInsert | None:
    compiled = statement.compile(dialect=DIALECT, for_executemany=True)
    assert isinstance(compiled, SQLCompiler)
    return MultiRowInsert.from_compiled(str(compiled), tuple(compiled.binds))


@pytest.mark.parametrize("count", [1, 2, 37, MAX_ROWS - 1, MAX_ROWS, MAX_ROWS + 1, 1000])
def test_statement_sizes_cover_every_row_with_few_distinct_sizes(count: int) -> None:
    sizes = _ladder(count)
    assert sum(sizes) == count
    assert sizes == sorted(sizes, reverse=True)
    # Sizes repeat across batches (so PostgreSQL keeps them prepared): powers of two.
    assert all(size <= MAX_ROWS and size & (size - 1) == 0 for size in sizes)
    assert len(sizes) - sizes.count(MAX_ROWS) == bin(count % MAX_ROWS).count("1")


def test_rows_are_numbered_in_postgresql_placeholders_with_the_tail_once() -> None:
    statement = (
        pg_insert(TABLE)
        .values(name=bindparam("name", type_=String()), size=bindparam("size", type_=Integer()))
        .on_conflict_do_nothing()
        .returning(TABLE.c.id)
    )
    multi = _multi(statement)
    assert multi is not None
    assert multi.text(2) == (
        "INSERT INTO things (name, size) VALUES ($1::VARCHAR, $2::INTEGER), "
        "($3::VARCHAR, $4::INTEGER) ON CONFLICT DO NOTHING RETURNING things.id"
    )


def test_literals_keep_their_parentheses_quotes_and_percent_signs() -> None:
    statement = insert(TABLE).values(
        name=bindparam("name", type_=String()) + literal_column("'50% (it''s)'"),
        size=bindparam("size"),
    )
    multi = _multi(statement)
    assert multi is not None
    assert multi.text(2) == (
        "INSERT INTO things (name, size) VALUES (($1::VARCHAR || '50% (it''s)'), $2::INTEGER), "
        "(($3::VARCHAR || '50% (it''s)'), $4::INTEGER)"
    )


def test_an_insert_from_a_select_keeps_executemany() -> None:
    statement = insert(TABLE).from_select(["name"], select(bindparam("name", type_=String())))
    assert _multi(statement) is None


def test_plain_values_go_as_a_copy() -> None:
    statement = insert(TABLE).values(
        name=bindparam("name", type_=String()), size=bindparam("size", type_=Integer())
    )
    multi = _multi(statement)
    assert multi is not None
    assert multi.copy_sql == "COPY things (name, size) FROM STDIN"


@pytest.mark.parametrize(
    "statement",
    [
        # A conflict clause or RETURNING needs the statement: COPY has neither.
        pg_insert(TABLE)
        .values(name=bindparam("name", type_=String()), size=bindparam("size"))
        .on_conflict_do_nothing(),
        insert(TABLE)
        .values(name=bindparam("name", type_=String()), size=bindparam("size"))
        .returning(TABLE.c.id),
        # An expression among the values is computed by the statement.
        insert(TABLE).values(
            name=bindparam("name", type_=String()) + literal_column("'x'"),
            size=bindparam("size"),
        ),
    ],
    ids=["on-conflict", "returning", "expression"],
)
def test_anything_but_plain_values_keeps_statements(statement: Insert) -> None:
    multi = _multi(statement)
    assert multi is not None and multi.copy_sql is None
