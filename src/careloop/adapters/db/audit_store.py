"""The hash-chained, append-only audit log in the database."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from sqlalchemy import Connection, Engine, Select, bindparam, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from careloop.adapters.db.driver_sql import DriverStatement, insert_into, insert_row
from careloop.adapters.db.insert_new import insert_new
from careloop.adapters.db.tables import audit_heads, audit_log
from careloop.adapters.db.write_buffer import WriteBuffer
from careloop.domain.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    VerifyResult,
    chain_entry,
    is_plain_json,
    record_fields,
    verify_chain,
)
from careloop.services.ports import AuditQuery

# Built once: these run in every write transaction.
_SELECT_HEAD = DriverStatement(
    select(audit_heads.c.seq, audit_heads.c.hash)
    .where(audit_heads.c.chain == bindparam("chain"))
    .with_for_update()
)
_ADVANCE_HEAD = (
    update(audit_heads)
    .where(audit_heads.c.chain == bindparam("head_chain"))
    .values(seq=bindparam("seq"), hash=bindparam("hash"))
)
_INSERT = insert_into(audit_log)
_UPDATE_HEAD = DriverStatement(_ADVANCE_HEAD)
# PostgreSQL: the entry and the head's advance in one statement (one round trip).
_INSERT_AND_ADVANCE = DriverStatement(_ADVANCE_HEAD.add_cte(insert_row(audit_log).cte("entry")))
# The head moves from (prev_seq, prev_hash) to the new entry only if it is still there;
# the UPDATE takes the head's row lock, as SELECT ... FOR UPDATE does.
_ADVANCE_HEAD_FROM = (
    update(audit_heads)
    .where(
        audit_heads.c.chain == bindparam("chain"),
        audit_heads.c.seq == bindparam("prev_seq"),
        audit_heads.c.hash == bindparam("prev_hash"),
    )
    .values(seq=bindparam("seq"), hash=bindparam("hash"))
)
_ADVANCE_FROM = DriverStatement(_ADVANCE_HEAD_FROM)
# PostgreSQL: the entry is inserted only if its head advanced (one round trip, no read).
_ADVANCED = _ADVANCE_HEAD_FROM.returning(audit_heads.c.chain).cte("advanced")
_INSERT_IF_ADVANCED = DriverStatement(
    insert(audit_log).from_select(
        [c.key for c in audit_log.columns],
        select(*(bindparam(c.key, type_=c.type) for c in audit_log.columns)).select_from(_ADVANCED),
    )
)


class _ThreadChain(threading.local):
    """The chain a thread appends to, and its head as this thread last advanced it."""

    chain: int | None = None
    head: tuple[int, str] | None = None


_THREAD_CHAINS: WeakKeyDictionary[Engine, _ThreadChain] = WeakKeyDictionary()


class AuditStore:
    """Appends to one chain per transaction; each thread keeps to a chain of its own (picked
    at random, and again when another writer turns up on it), so writers rarely wait and
    an append usually needs no read: it advances the head it left last time."""

    def __init__(
        self, connection: Connection, chains: int, buffer: WriteBuffer | None = None
    ) -> None:
        self._connection = connection
        self._chains = chains
        self._chain: int | None = None
        self._buffer = buffer

    def append(self, record: AuditRecord) -> AuditEntry | None:
        """Append ``record``; None when a deferring batch keeps it for ``append_many``."""
        if self._buffer is not None and self._buffer.active:
            self._buffer.audit(record)
            return None
        mine, chain = self._my_chain()
        entry = None
        if mine.head is not None and mine.chain == chain:
            entry = chain_entry(chain, mine.head[0], mine.head[1], record)
            if not self._append_if_head_unchanged(entry):
                entry = None
                mine.chain, mine.head = self._pick_chain(), None  # from the next transaction
        if entry is None:
            head = self._lock_head(chain)
            entry = chain_entry(chain, head[0], head[1], record)
            self._append_at_locked_head(entry)
        if mine.chain == chain:
            mine.head = (entry.seq, entry.hash)
        return entry

    def append_many(self, records: list[AuditRecord]) -> None:
        """Append ``records`` in order: one head advance and one driver call for all."""
        mine, chain = self._my_chain()
        entries = None
        if mine.head is not None and mine.chain == chain:
            entries = _chained(chain, mine.head, records)
            moved = {
                "chain": chain,
                "prev_seq": mine.head[0],
                "prev_hash": mine.head[1],
                "seq": entries[-1].seq,
                "hash": entries[-1].hash,
            }
            if _ADVANCE_FROM.execute(self._connection, moved).rowcount != 1:
                entries = None
                mine.chain, mine.head = self._pick_chain(), None  # from the next transaction
        if entries is None:
            entries = _chained(chain, self._lock_head(chain), records)
            last = entries[-1]
            _UPDATE_HEAD.execute(
                self._connection, {"head_chain": chain, "seq": last.seq, "hash": last.hash}
            )
        _INSERT.execute_many(self._connection, [_row(entry) for entry in entries])
        if mine.chain == chain:
            mine.head = (entries[-1].seq, entries[-1].hash)

    def _my_chain(self) -> tuple[_ThreadChain, int]:
        mine = _THREAD_CHAINS.get(self._connection.engine) or _thread_chain(self._connection)
        if self._chain is None:
            # One chain per transaction: two transactions can never lock heads in
            # opposite orders, so appends cannot deadlock.
            if mine.chain is None or mine.chain >= self._chains:
                mine.chain, mine.head = self._pick_chain(), None
            self._chain = mine.chain
        return mine, self._chain

    def _pick_chain(self) -> int:
        return random.randrange(self._chains)  # noqa: S311 - load spreading only

    def _append_if_head_unchanged(self, entry: AuditEntry) -> bool:
        row = _row(entry)
        row["prev_seq"] = entry.seq - 1
        if self._connection.dialect.name == "postgresql":
            return bool(_INSERT_IF_ADVANCED.execute(self._connection, row).rowcount == 1)
        if _ADVANCE_FROM.execute(self._connection, row).rowcount != 1:
            return False
        _INSERT.execute(self._connection, row)
        return True

    def _append_at_locked_head(self, entry: AuditEntry) -> None:
        row = _row(entry)
        if self._connection.dialect.name == "postgresql":
            _INSERT_AND_ADVANCE.execute(self._connection, {**row, "head_chain": entry.chain})
        else:
            _INSERT.execute(self._connection, row)
            _UPDATE_HEAD.execute(
                self._connection, {"head_chain": entry.chain, "seq": entry.seq, "hash": entry.hash}
            )

    def _lock_head(self, chain: int) -> tuple[int, str]:
        head = _SELECT_HEAD.execute(self._connection, {"chain": chain}).fetchone()
        if head is None:
            # First use of this chain: create its head, tolerating a concurrent creator,
            # then lock it like any other head so appends stay strictly serial per chain.
            head_row = {"chain": chain, "seq": 0, "hash": GENESIS_HASH}
            insert_new(self._connection, audit_heads, head_row)
            head = _SELECT_HEAD.execute(self._connection, {"chain": chain}).fetchone()
        return int(head[0]), str(head[1])

    def for_case(self, case_id: int) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            select(audit_log)
            .where(audit_log.c.case_id == case_id)
            .order_by(audit_log.c.occurred_at, audit_log.c.chain, audit_log.c.seq)
        ).mappings()
        return [_public(dict(r)) for r in rows]

    # -- reports -----------------------------------------------------------------------
    def report(self, query: AuditQuery) -> list[dict[str, Any]]:
        statement = _report_select(query).offset(query.offset).limit(query.limit)
        return [_reported(r) for r in self._connection.execute(statement).mappings()]

    def count(self, query: AuditQuery) -> int:
        statement = select(func.count()).select_from(audit_log).where(*_conditions(query))
        return int(self._connection.execute(statement).scalar_one())

    def stream(self, query: AuditQuery, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every matching entry in order, read in batches through one cursor."""
        result = self._connection.execution_options(yield_per=batch).execute(_report_select(query))
        for row in result.mappings():
            yield _reported(row)


_SORT_COLUMNS: dict[str, ColumnElement[Any]] = {
    "time": audit_log.c.occurred_at,
    "user": audit_log.c.actor_name,
    "action": audit_log.c.action,
    "patient": audit_log.c.patient_ref,
    "category": audit_log.c.data_category,
    "outcome": audit_log.c.outcome,
    "source": audit_log.c.source_address,
}
SORT_FIELDS = frozenset(_SORT_COLUMNS)
_REPORTED = [c for c in audit_log.columns if c.key not in ("prev_hash", "hash")]


def _conditions(query: AuditQuery) -> list[ColumnElement[bool]]:
    table = audit_log.c
    found: list[ColumnElement[bool]] = []
    if query.start is not None:
        found.append(table.occurred_at >= query.start)
    if query.end is not None:
        found.append(table.occurred_at < query.end)
    for column, value in (
        (table.actor_name, query.user),
        (table.patient_ref, query.patient),
        (table.data_category, query.category),
    ):
        if value is not None:
            found.append(column == value)
    if query.action is not None:
        if query.action.endswith("*"):
            prefix = query.action[:-1]
            found.append(table.action.startswith(prefix, autoescape=True))
        else:
            found.append(table.action == query.action)
    return found


def _report_select(query: AuditQuery) -> Select[Any]:
    def ordered(column: ColumnElement[Any]) -> ColumnElement[Any]:
        # Entries without a patient come last either way, on both databases.
        return (column.desc() if query.descending else column.asc()).nulls_last()

    keys = [_SORT_COLUMNS[query.sort], audit_log.c.occurred_at, audit_log.c.chain, audit_log.c.seq]
    return select(*_REPORTED).where(*_conditions(query)).order_by(*(ordered(k) for k in keys))


def _reported(row: Any) -> dict[str, Any]:
    return _public(dict(row))


def _thread_chain(connection: Connection) -> _ThreadChain:
    return _THREAD_CHAINS.setdefault(connection.engine, _ThreadChain())


def _chained(chain: int, head: tuple[int, str], records: list[AuditRecord]) -> list[AuditEntry]:
    entries = []
    seq, previous = head
    for record in records:
        entry = chain_entry(chain, seq, previous, record)
        entries.append(entry)
        seq, previous = entry.seq, entry.hash
    return entries


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        **record_fields(entry.record),
        "detail": _detail_text(entry.record.detail),
        "chain": entry.chain,
        "seq": entry.seq,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


# json.dumps(detail, sort_keys=True, default=str), without building an encoder per call.
_DETAIL_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def _detail_text(detail: Mapping[str, Any]) -> str:
    """The stored detail. Verification reads it back with json.loads and hashes that,
    so it must load as the detail that was hashed: plain JSON does from orjson's text
    (a quarter of json.dumps's cost); anything else (a date, an enum) is written as
    the hash wrote it, by json.dumps with default=str."""
    if not detail:
        return "{}"  # most entries (every intake) carry no detail
    if is_plain_json(detail):
        try:
            return orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            pass  # a number too large for orjson
    return _DETAIL_ENCODER.encode(detail)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row["detail"] = json.loads(row["detail"])
    return row


def _entry(row: Any) -> AuditEntry:
    values = {f.name: getattr(row, f.name) for f in fields(AuditRecord)}
    record = AuditRecord(**{**values, "detail": json.loads(row.detail)})
    return AuditEntry(row.chain, row.seq, record, row.prev_hash, row.hash)


def verify_audit_log(engine: Engine, batch: int = 5000) -> list[VerifyResult]:
    """Verify every chain; returns one result per chain, bad ones naming the first bad entry."""
    with engine.connect() as connection:
        heads = {r.chain: (r.seq, r.hash) for r in connection.execute(select(audit_heads))}
        chains = set(heads) | set(
            connection.execute(select(audit_log.c.chain).distinct()).scalars()
        )
        return [
            verify_chain(chain, _stream(connection, chain, batch), heads.get(chain))
            for chain in sorted(chains)
        ]


def _stream(connection: Connection, chain: int, batch: int) -> Iterator[AuditEntry]:
    last: int | None = None  # no lower bound at first: forged seq 0 or negatives count too
    while True:
        query = select(audit_log).where(audit_log.c.chain == chain)
        if last is not None:
            query = query.where(audit_log.c.seq > last)
        rows = connection.execute(query.order_by(audit_log.c.seq).limit(batch)).all()
        if not rows:
            return
        for row in rows:
            yield _entry(row)
        last = rows[-1].seq
