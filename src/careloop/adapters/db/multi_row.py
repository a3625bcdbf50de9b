"""Many rows of one INSERT as a few multi-row statements, on PostgreSQL through psycopg.

psycopg's executemany pipelines one statement per row: a single round trip, but the
server still executes every row as a statement of its own. ``INSERT ... VALUES (...),
(...), ...`` does the same work in a handful of statements; on the relay's rows it
takes about half the time. Two details decide whether it pays at all:

- The placeholders are PostgreSQL's own ``$1, $2, ...`` (psycopg's RawCursor). psycopg
  does not cache its parse of a query with more than 50 parameters, and splitting the
  ``%s`` of a long multi-row query costs more than the rows save.
- Statement sizes come from a fixed ladder (64, 32, 16, ... 1 rows), so each text
  recurs and psycopg prepares it on the server after a few uses. A statement of an odd
  size would be parsed and planned afresh every time, which is as slow as executemany.

An INSERT of plain values (no ON CONFLICT, no RETURNING, no expression among its
values) goes as ``COPY ... FROM STDIN`` once it has ``COPY_FROM_ROWS`` rows or more:
the server's fastest way in, which on the relay's tables took about a third of the
time of multi-row statements, on both sides of the connection (bench/automation_e2e.py
writes forty rows per referral this way). A refused row fails the COPY as it would fail
its statement: the whole transaction. When every column's type has a binary form
known to driver_sql (integers, booleans, text, JSON as its text, datetimes) the COPY is
binary: psycopg packs each value in C instead of formatting text and the server reads
it without parsing, where text COPY spent a third of a row's cost on its timestamps.

SQLite gains nothing (its executemany steps one prepared statement in C), so it keeps
executemany. Rows go in the order given: the ids a sequence hands out follow it, as the
outbox relies on (events of a case are relayed in id order).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg

# SQLAlchemy's psycopg placeholders, e.g. %(case_id)s in %(case_id)s::BIGINT.
_NAMED = re.compile(r"%\((\w+)\)s")
_VALUES = " VALUES ("
# 64 rows of the widest buffered table (15 columns) is 960 parameters, far below
# PostgreSQL's 65,535; larger statements measured no faster.
MAX_ROWS = 64
# Below this a COPY's extra round trip costs more than the rows save.
COPY_FROM_ROWS = 8
# Between two placeholders of a plain VALUES group: a cast at most, then the comma.
_PLAIN_GAP = re.compile(r"(::[A-Z][A-Z0-9 ]*(\(\d+(, *\d+)?\))?)?\s*,\s*")


class MultiRowInsert:
    """A single-row INSERT ... VALUES (...) [tail] as statements of several rows."""

    def __init__(
        self, head: str, pieces: tuple[str, ...], tail: str, order: tuple[int, ...]
    ) -> None:
        self._head = head
        self._pieces = pieces  # the VALUES group cut at its placeholders
        self._tail = tail  # ON CONFLICT, RETURNING: once per statement, as written
        self._order = order  # per placeholder, its index in a row's values
        self._in_order = order == tuple(range(len(order)))  # a row's values in column order
        self._texts: dict[int, str] = {}  # by rows: only ladder sizes, so a few
        self.copy_sql = _copy_sql(head, pieces, tail)  # None: not plain values

    @classmethod
    def from_compiled(cls, sql: str, names: Sequence[str]) -> MultiRowInsert | None:
        """From SQLAlchemy's psycopg SQL for one row, whose bind parameters are ``names``
        in the order a row's values come; None when the SQL is not of that shape (an
        INSERT from a SELECT, a literal holding a placeholder): it keeps executemany."""
        parts = _split_values(sql)
        if parts is None:
            return None
        head, group, tail = parts
        found = _NAMED.findall(group)
        if _NAMED.search(head) or _NAMED.search(tail) or sorted(found) != sorted(names):
            return None
        if len(set(found)) != len(found):
            return None
        pieces = tuple(_unescape(piece) for piece in _NAMED.split(group)[::2])
        order = tuple(list(names).index(name) for name in found)
        return cls(_unescape(head), pieces, _unescape(tail), order)

    def run(self, connection: psycopg.Connection[Any], rows: Sequence[Sequence[Any]]) -> int:
        """Insert ``rows`` (each a row's bound values) in one round trip: a COPY, or
        statements in one pipeline. Returns the rows inserted (fewer than given when ON
        CONFLICT DO NOTHING skips)."""
        if self.copies(len(rows)):
            return self.copy(connection, rows)
        cursors = []
        start = 0
        with connection.pipeline():
            for size in _ladder(len(rows)):
                params = [row[index] for row in rows[start : start + size] for index in self._order]
                cursor = psycopg.RawCursor(connection)
                cursor.execute(self.text(size), params)
                cursors.append(cursor)  # one cursor each: a cursor counts its last statement
                start += size
        return sum(cursor.rowcount for cursor in cursors)

    def copies(self, count: int) -> bool:
        """Whether ``count`` rows go as a COPY (``run`` sends them so, as text)."""
        return self.copy_sql is not None and count >= COPY_FROM_ROWS

    def copy(
        self,
        connection: psycopg.Connection[Any],
        rows: Sequence[Sequence[Any]],
        types: Sequence[str] | None = None,
    ) -> int:
        """Insert ``rows`` as one COPY: text, or binary with each value of the PostgreSQL
        type named in ``types`` (in a row's order). The caller has checked ``copies``."""
        assert self.copy_sql is not None
        order = self._order
        sql = self.copy_sql if types is None else f"{self.copy_sql} (FORMAT BINARY)"
        with connection.cursor() as cursor:
            with cursor.copy(sql) as copy:
                if types is not None:
                    copy.set_types([types[index] for index in order])
                if self._in_order:
                    for row in rows:
                        copy.write_row(row)
                else:
                    for row in rows:
                        copy.write_row([row[index] for index in order])
            return cursor.rowcount

    def text(self, rows: int) -> str:
        text = self._texts.get(rows)
        if text is None:
            width = len(self._order)
            groups = (self._group(row * width) for row in range(rows))
            text = self._texts[rows] = f"{self._head}{', '.join(groups)}{self._tail}"
        return text

    def _group(self, offset: int) -> str:
        first, *rest = self._pieces
        return first + "".join(f"${offset + n}{piece}" for n, piece in enumerate(rest, 1))


def _copy_sql(head: str, pieces: tuple[str, ...], tail: str) -> str | None:
    """``COPY table (columns) FROM STDIN`` for ``INSERT INTO table (columns) VALUES``
    whose values are placeholders alone (casts aside: the server knows the columns'
    types); None for anything else."""
    first, *gaps, last = pieces
    plain = (
        not tail.strip()
        and head.startswith("INSERT INTO ")
        and head.rstrip().endswith(") VALUES")
        and first.strip() == "("
        and all(_PLAIN_GAP.fullmatch(gap) for gap in gaps)
        and _PLAIN_GAP.fullmatch(last.rstrip().removesuffix(")") + ",")
    )
    if not plain:
        return None
    target = head.rstrip().removesuffix("VALUES").strip().removeprefix("INSERT INTO ")
    return f"COPY {target} FROM STDIN"


def _ladder(count: int) -> list[int]:
    """Statement sizes for ``count`` rows: full statements of MAX_ROWS, then the rest in
    powers of two, largest first (100 rows: 64, 32, 4)."""
    sizes = [MAX_ROWS] * (count // MAX_ROWS)
    rest, size = count % MAX_ROWS, MAX_ROWS // 2
    while rest:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    return sizes


def _split_values(sql: str) -> tuple[str, str, str] | None:
    """(text up to VALUES, the parenthesised row, the rest); None unless exactly one."""
    start = sql.find(_VALUES)
    if start < 0 or sql.find(_VALUES, start + 1) >= 0:
        return None
    opening = start + len(_VALUES) - 1
    depth, quote = 0, ""
    for index in range(opening, len(sql)):
        char = sql[index]
        if quote:
            if char == quote:
                quote = ""  # a doubled quote closes and reopens: still inside
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return sql[:opening], sql[opening : index + 1], sql[index + 1 :]
    return None


def _unescape(text: str) -> str:
    # %% is a literal % in psycopg's %-style SQL; RawCursor's SQL goes to the server as is.
    return text.replace("%%", "%")
