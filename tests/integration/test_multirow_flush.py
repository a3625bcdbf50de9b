"""Deferred INSERTs go to PostgreSQL as multi-row statements (adapters/db/multi_row.py);
SQLite keeps executemany. Either way the rows, their order and their conflicts come out
as one statement per row would leave them."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from careloop.adapters.db.automation_tables import timers
from careloop.adapters.db.driver_sql import insert_into
from careloop.adapters.db.insert_new import insert_new_statement
from careloop.adapters.db.multi_row import MAX_ROWS
from careloop.adapters.db.tables import outbox
from careloop.bootstrap import App
from careloop.services.cases import apply_update, update_case
from careloop.services.ports import ManualClock, OptimisticAbort
from careloop.services.referral_input import validate_changes
from tests.conftest import INTAKE, new_case
from tests.integration.test_deferred_writes import ROBOT

# More than two full statements and a remainder that needs several ladder sizes.
MANY = 2 * MAX_ROWS + 37


def test_deferred_outbox_rows_keep_their_order_and_values(app: App, clock: ManualClock) -> None:
    case_id = new_case(app)
    now = clock.now()
    with app.deps.uow() as work:
        work.optimistic = True
        for n in range(MANY):
            payload = {"n": n, "nested": {"text": "50% off (maybe)", "list": [n, None]}}
            at = now + timedelta(seconds=n)
            work.outbox.add(case_id, "test.many", payload, f"many-{n}", at)
        work.commit()
    with app.deps.read_uow() as work:
        rows = [row for row in work.outbox.for_case(case_id) if row["event_type"] == "test.many"]
    # Ids follow the order the rows were added in: the relay delivers a case's events
    # in id order.
    assert [row["idempotency_key"] for row in rows] == [f"many-{n}" for n in range(MANY)]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    last = rows[-1]
    assert last["payload"] == {
        "n": MANY - 1,
        "nested": {"text": "50% off (maybe)", "list": [MANY - 1, None]},
    }
    assert last["created_at"] == now + timedelta(seconds=MANY - 1)
    assert (last["attempts"], last["published_at"], last["dead_at"]) == (0, None, None)


def test_rows_written_by_copy_read_back_as_written(app: App, clock: ManualClock) -> None:
    """Text COPY has its own escaping: tabs, newlines, backslashes, quotes, NULL-like
    text, non-ASCII and JSON come back unchanged."""
    case_id = new_case(app)
    now = clock.now()
    awkward = [
        "tab\there",
        "line\nbreak\r\n",
        "back\\slash \\N",
        "\\N",
        "",
        "'quoted' \"twice\"",
        "naïve café ☕",
        "50% {braces} [x]",
        "comma, separated",
    ]
    with app.deps.uow() as work:
        work.optimistic = True
        for n, text in enumerate(awkward * 2):
            payload = {"text": text, "n": n, "none": None, "list": [text, 1.5, True]}
            work.outbox.add(case_id, text or "empty", payload, f"copy-{n}", now)
        work.commit()
    with app.deps.read_uow() as work:
        rows = [
            r for r in work.outbox.for_case(case_id) if r["idempotency_key"].startswith("copy-")
        ]
    assert [r["event_type"] for r in rows] == [t or "empty" for t in awkward * 2]
    assert [r["payload"]["text"] for r in rows] == awkward * 2
    assert rows[0]["payload"] == {
        "text": awkward[0],
        "n": 0,
        "none": None,
        "list": [awkward[0], 1.5, True],
    }
    assert all(r["created_at"] == now and r["last_error"] is None for r in rows)


def test_json_by_copy_is_stored_as_by_a_statement(pg_app: App, clock: ManualClock) -> None:
    """A COPY (PostgreSQL's) sends a JSON column's serialized text; a statement sends
    the value for the driver to serialize. Both must store the same JSON, a JSON null
    included."""
    app = pg_app
    case_id = new_case(app)
    now = clock.now()
    payloads: list[Any] = [
        {"nested": {"a": [1, None, "x\ty"]}, "é": "ü ☕", "n": 2**40, "f": 0.1},
        None,
        [],
        "a JSON string",
        {"quote": '"', "newline": "\n", "backslash": "\\"},
    ]
    with app.deps.uow() as work:
        work.optimistic = True
        for n, payload in enumerate(payloads * 2):  # 10 rows: a COPY
            work.outbox.add(case_id, "by-copy", payload, f"json-copy-{n}", now)
        work.commit()
    for n, payload in enumerate(payloads):  # one row each: a statement
        with app.deps.uow() as work:
            work.optimistic = True
            work.outbox.add(case_id, "by-statement", payload, f"json-one-{n}", now)
            work.commit()
    with app.engine.connect() as connection:
        stored = dict(
            connection.exec_driver_sql(
                "SELECT idempotency_key, payload::text FROM outbox WHERE case_id = %(c)s",
                {"c": case_id},
            ).all()
        )
    for n in range(len(payloads)):
        assert stored[f"json-copy-{n}"] == stored[f"json-one-{n}"], payloads[n]
    assert stored["json-copy-1"] == "null"  # JSON null, not SQL NULL: the column is NOT NULL


def test_datetimes_by_copy_are_stored_as_by_a_statement(pg_app: App, clock: ManualClock) -> None:
    """A COPY sends a datetime as text; a statement lets the driver dump it. Both store
    the same instant, whatever the zone it came in and down to the microsecond."""
    app = pg_app
    case_id = new_case(app)
    now = clock.now()
    india, samoa = timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))
    moments = [
        now,
        now + timedelta(microseconds=1),
        (now + timedelta(microseconds=999_999)).astimezone(india),
        datetime(1999, 12, 31, 23, 59, 59, 500_000, tzinfo=samoa),
        datetime(2400, 2, 29, tzinfo=UTC),
    ]
    with app.deps.uow() as work:
        work.optimistic = True
        for n, at in enumerate(moments * 2):  # 10 rows: a COPY
            work.outbox.add(case_id, "by-copy", {}, f"at-copy-{n}", at)
        work.commit()
    for n, at in enumerate(moments):  # one row each: a statement
        with app.deps.uow() as work:
            work.optimistic = True
            work.outbox.add(case_id, "by-statement", {}, f"at-one-{n}", at)
            work.commit()
    with app.engine.connect() as connection:
        stored = {
            key: (created, epoch)
            for key, created, epoch in connection.exec_driver_sql(
                "SELECT idempotency_key, created_at, extract(epoch FROM available_at)"
                " FROM outbox WHERE case_id = %(c)s",
                {"c": case_id},
            ).all()
        }
    for n, at in enumerate(moments):
        assert stored[f"at-copy-{n}"] == stored[f"at-one-{n}"], at
        assert stored[f"at-copy-{n}"][0] == at
        assert stored[f"at-copy-{n + len(moments)}"] == stored[f"at-one-{n}"]


def test_a_timer_planned_twice_in_one_batch_is_stored_once(app: App, clock: ManualClock) -> None:
    case_id = new_case(app)
    now = clock.now()
    rows: list[dict[str, Any]] = [
        {
            "case_id": case_id,
            "kind": "rule",
            "key": f"multirow:{case_id}:{n}",
            "name": "multirow",
            "due_at": now + timedelta(hours=n),
            "payload": {"n": n},
            "created_at": now,
        }
        for n in range(MANY)
    ]
    with app.deps.uow() as work:
        work.optimistic = True
        work.timers.replan(case_id, ("rule",), rows, now, names=("multirow",))
        # The same keys again in the same batch: ON CONFLICT DO NOTHING skips them, even
        # inside one multi-row statement.
        work.timers.replan(case_id, ("rule",), rows[:5] + rows[-5:], now, names=("multirow",))
        work.commit()
    with app.deps.read_uow() as work:
        stored = [t for t in work.timers.for_case(case_id) if t["name"] == "multirow"]
    assert sorted(str(t["key"]) for t in stored) == sorted(str(row["key"]) for row in rows)
    assert {t["status"] for t in stored} == {"pending"}


def test_execute_many_counts_rows_and_skips_taken_keys(app: App, clock: ManualClock) -> None:
    now = clock.now()
    rows: list[dict[str, Any]] = [
        {
            "case_id": None,
            "kind": "rule",
            "key": f"count-{n}",
            "name": "count",
            "due_at": now,
            "status": "pending",
            "fired_at": None,
            "payload": {},
            "created_at": now,
        }
        for n in range(MANY)
    ]
    plain = insert_into(outbox)
    events: list[dict[str, Any]] = [
        {
            "case_id": None,
            "event_type": "count",
            "payload": {},
            "idempotency_key": f"count-{n}",
            "created_at": now,
            "available_at": now,
        }
        for n in range(MANY)
    ]
    with app.engine.begin() as connection:
        assert plain.execute_many(connection, events) == MANY
        assert plain.execute_many(connection, []) == 0
        statement = insert_new_statement(timers, set(rows[0]))
        statement.execute_many(connection, rows[:10])
        statement.execute_many(connection, rows)  # the first ten are there already
        keys = connection.execute(select(timers.c.key).order_by(timers.c.id)).scalars().all()
    assert keys == [row["key"] for row in rows]


def test_a_stale_case_among_many_fails_the_batch_and_writes_nothing(
    pg_app: App, clock: ManualClock
) -> None:
    # PostgreSQL only: on SQLite the batch holds the one write lock, so nobody can save
    # a case meanwhile.
    app = pg_app
    case_ids = [new_case(app) for _ in range(3)]
    now = clock.now()
    with app.deps.uow() as work:
        work.optimistic = True
        # Loaded up front, as the relay does: a read of cases would flush the saves so far.
        work.cases.prefetch(set(case_ids))
        for case_id in case_ids:
            case = work.cases.get(case_id)
            for n in range(MAX_ROWS + 3):  # multi-row outbox and audit rows wait too
                work.outbox.add(case_id, "test.stale", {"n": n}, f"stale-{case_id}-{n}", now)
            apply_update(work, app.deps, ROBOT, case, validate_changes({"priority": "high"}), now)
        update_case(app.deps, INTAKE, case_ids[1], 1, validate_changes({"priority": "critical"}))
        with pytest.raises(OptimisticAbort):
            work.commit()
    with app.deps.read_uow() as work:
        versions = [work.cases.get(case_id).version for case_id in case_ids]
        events = [
            row
            for case_id in case_ids
            for row in work.outbox.for_case(case_id)
            if row["event_type"] == "test.stale"
        ]
    assert versions == [1, 2, 1]
    assert events == []


def test_a_binary_copy_stores_every_column_type_as_a_statement_does(pg_app: App) -> None:
    """A COPY of ten rows goes in binary (each value in its column type's binary form)
    where every column's type has one; a table with a type that has none here (float,
    numeric, bytea) goes as text. Both store what one INSERT per row stores."""
    from decimal import Decimal

    from sqlalchemy import (
        JSON,
        BigInteger,
        Boolean,
        Column,
        DateTime,
        Float,
        Integer,
        LargeBinary,
        MetaData,
        Numeric,
        SmallInteger,
        String,
        Table,
        Text,
    )

    from careloop.adapters.db.tables import TZ

    def columns() -> list[Column[Any]]:
        return [
            Column("id", BigInteger, primary_key=True, autoincrement=True),
            Column("label", String(20)),
            Column("big", BigInteger),
            Column("whole", Integer),
            Column("small", SmallInteger),
            Column("flag", Boolean),
            Column("note", Text),
            Column("aware", TZ),
            Column("naive", DateTime(timezone=False)),
            Column("doc", JSON),
        ]

    metadata = MetaData()
    binary = Table("copy_binary_types", metadata, *columns())
    text = Table(
        "copy_text_types",
        metadata,
        *columns(),
        Column("ratio", Float),
        Column("amount", Numeric(12, 2)),
        Column("blob", LargeBinary),
    )
    metadata.create_all(pg_app.engine)
    moment = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))

    def row(n: int, label: str) -> dict[str, Any]:
        return {
            "label": label,
            "big": 2**62 + n,
            "whole": -(2**31) + n,
            "small": 2**15 - 1 - n,
            "flag": n % 2 == 0,
            "note": "tab\there, line\nbreak, back\\slash, naïve ☕" if n else None,
            "aware": moment + timedelta(microseconds=n),
            "naive": datetime(1999, 12, 31, 23, 59, 59) + timedelta(days=n),
            "doc": {"n": n, "list": [None, True, 'x"y']} if n != 3 else None,
        }

    text_only = {"ratio": 0.1, "amount": Decimal("12.34"), "blob": b"\x00\xff"}
    for table, extra in ((binary, {}), (text, text_only)):
        statement = insert_into(table)
        with pg_app.engine.begin() as connection:
            assert (
                statement.execute_many(connection, [{**row(n, "copy"), **extra} for n in range(10)])
                == 10
            )
            for n in range(10):
                statement.execute(connection, {**row(n, "one"), **extra})
        with pg_app.engine.connect() as connection:
            stored = [
                dict(r) for r in connection.execute(select(table).order_by(table.c.id)).mappings()
            ]
        copied = [{k: v for k, v in r.items() if k not in ("id", "label")} for r in stored[:10]]
        single = [{k: v for k, v in r.items() if k not in ("id", "label")} for r in stored[10:]]
        assert copied == single, table.name
        assert copied[1]["aware"] == moment + timedelta(microseconds=1)
        assert copied[3]["doc"] is None and copied[1]["doc"] == {
            "n": 1,
            "list": [None, True, 'x"y'],
        }
