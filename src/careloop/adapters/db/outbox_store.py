"""Outbox rows: written in the same transaction as the change that caused them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, Select, Update, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import BindParameter

from careloop.adapters.db.driver_sql import insert_into
from careloop.adapters.db.outbox_signal import announce
from careloop.adapters.db.tables import outbox
from careloop.adapters.db.write_buffer import COMMITTED_READ, WriteBuffer

_INSERT = insert_into(outbox)
_PENDING = outbox.c.published_at.is_(None) & outbox.c.dead_at.is_(None)
# Pending rows oldest first (the partial index ix_outbox_ready), locked as they are read.
_CLAIM = (
    select(outbox)
    .where(_PENDING, outbox.c.available_at <= bindparam("now"))
    .order_by(outbox.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# The pending events of some cases up to an id (the partial index ix_outbox_case_pending).
_PENDING_UP_TO = select(outbox.c.case_id, outbox.c.id).where(
    _PENDING, outbox.c.id <= bindparam("below")
)
_MARK_PUBLISHED = update(outbox).values(
    published_at=bindparam("at"), attempts=outbox.c.attempts + 1, last_error=None
)


def _by_ids(array: bool) -> tuple[Update, Select[Any]]:
    """(mark published, pending of cases) for a list of ids bound as ``ids``.

    On PostgreSQL the list is one array parameter (= ANY): one statement text whatever
    the batch's size, which psycopg parses once, where an IN list of a hundred
    parameters is parsed again on every call. SQLite has no arrays: an expanding IN."""

    def ids() -> BindParameter[Any]:
        if array:
            return bindparam("ids", type_=ARRAY(BigInteger))
        return bindparam("ids", expanding=True)

    if array:
        return (
            _MARK_PUBLISHED.where(outbox.c.id == any_(ids())),
            _PENDING_UP_TO.where(outbox.c.case_id == any_(ids())),
        )
    return (
        _MARK_PUBLISHED.where(outbox.c.id.in_(ids())),
        _PENDING_UP_TO.where(outbox.c.case_id.in_(ids())),
    )


_MARK_PUBLISHED_BY_KEY = _MARK_PUBLISHED.where(
    outbox.c.idempotency_key.in_(bindparam("keys", expanding=True))
)
_NO_LIMIT = 2**62
_BY_IDS = {"postgresql": _by_ids(array=True)}
_BY_IDS_DEFAULT = _by_ids(array=False)


class OutboxStore:
    def __init__(self, connection: Connection, buffer: WriteBuffer | None = None) -> None:
        self._connection = connection
        self._buffer = buffer
        # Rows added while capturing (see capture), each with the buffer's flush count
        # when it was added: unless the buffer went out since, the row is still held.
        self._caused: list[dict[str, Any]] | None = None
        self._held_at: dict[int, int] = {}
        # Rows this transaction leaves pending: if any, its commit wakes idle workers.
        self._pending = 0

    def add(
        self,
        case_id: int | None,
        event_type: str,
        payload: dict[str, Any],
        idempotency_key: str,
        at: datetime,
    ) -> None:
        row = {
            "case_id": case_id,
            "event_type": event_type,
            "payload": payload,
            "idempotency_key": idempotency_key,
            "created_at": at,
            "available_at": at,
            "attempts": 0,
            # Every column given: the deferred writer then picks the values without
            # filling in defaults (driver_sql._values).
            "published_at": None,
            "last_error": None,
            "dead_at": None,
        }
        self._pending += 1
        if self._buffer is not None and self._buffer.active:
            self._buffer.insert(_INSERT, row)
            if self._caused is not None:
                self._caused.append(row)
                self._held_at[id(row)] = self._buffer.flushes
        else:
            _INSERT.execute(self._connection, row)

    def capture(self) -> None:
        """Keep, from now on, the events added while writes are deferred, for
        ``take_caused``: the relay handles what its own handlers cause in the same
        transaction."""
        self._caused = []

    def take_caused(self) -> list[dict[str, Any]]:
        """The events added since the last call, in the order they were added."""
        caused = self._caused or []
        if self._caused is not None:
            self._caused = []
        return caused

    def cases_waiting(self, case_ids: set[int], claimed_ids: set[int]) -> set[int]:
        """Those of ``case_ids`` with a pending event outside ``claimed_ids`` (held back,
        claimed by another worker, or added by another transaction): what their handlers
        caused must queue behind it. Reads without flushing; an event of this batch
        that has already been written counts too, which only errs on the side of
        waiting."""
        if not case_ids:
            return set()
        _, pending_of_cases = self._by_ids()
        probe = pending_of_cases.execution_options(**{COMMITTED_READ: True})
        rows = self._connection.execute(probe, {"ids": sorted(case_ids), "below": _NO_LIMIT}).all()
        return {int(case_id) for case_id, outbox_id in rows if outbox_id not in claimed_ids}

    def publish_caused(self, rows: list[dict[str, Any]], at: datetime) -> None:
        """Mark rows from ``take_caused`` published: those still held are written so;
        those written meanwhile are updated by their idempotency key."""
        self._pending -= len(rows)
        written = []
        for row in rows:
            if self._buffer is not None and self._held_at.pop(id(row), -1) == self._buffer.flushes:
                row.update(published_at=at, attempts=1)
            else:
                written.append(row["idempotency_key"])
        if written:
            self._connection.execute(_MARK_PUBLISHED_BY_KEY, {"keys": written, "at": at})

    def claim_pending(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Lock a batch of due rows, oldest first; other workers skip them (PostgreSQL
        SKIP LOCKED). A row is kept only if every earlier pending event of its case is
        in the batch too: a later event never overtakes one that waits out a retry
        backoff or that another worker holds. Rows left out stay pending."""
        # all(): one fetch of every row, where iterating the result fetched row by row.
        claimed = self._connection.execute(_CLAIM, {"now": now, "limit": limit}).mappings().all()
        rows = [dict(r) for r in claimed]
        cases = {row["case_id"] for row in rows if row["case_id"] is not None}
        if not cases:
            return rows
        earlier: dict[int, list[int]] = {}
        _, pending_of_cases = self._by_ids()
        probe = {"ids": sorted(cases), "below": rows[-1]["id"]}
        for case_id, outbox_id in self._connection.execute(pending_of_cases, probe).all():
            earlier.setdefault(int(case_id), []).append(int(outbox_id))
        kept: list[dict[str, Any]] = []
        taken: set[int] = set()
        for row in rows:
            case_id = row["case_id"]
            if case_id is None or all(
                i in taken for i in earlier.get(case_id, ()) if i < row["id"]
            ):
                kept.append(row)
                taken.add(row["id"])
        return kept

    def mark_published(self, outbox_ids: list[int], at: datetime) -> None:
        """One statement for a whole delivered batch."""
        if outbox_ids:
            mark, _ = self._by_ids()
            self._connection.execute(mark, {"ids": outbox_ids, "at": at})

    def _by_ids(self) -> tuple[Update, Select[Any]]:
        return _BY_IDS.get(self._connection.dialect.name, _BY_IDS_DEFAULT)

    def mark_failed(
        self, outbox_id: int, error: str, retry_at: datetime | None, at: datetime
    ) -> None:
        """Schedule a retry at ``retry_at``, or dead-letter the row when it is None."""
        values: dict[str, Any] = {"attempts": outbox.c.attempts + 1, "last_error": error[:2000]}
        if retry_at is None:
            values["dead_at"] = at
        else:
            values["available_at"] = retry_at
        self._connection.execute(update(outbox).where(outbox.c.id == outbox_id).values(values))

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        query = (
            select(outbox).where(outbox.c.dead_at.is_not(None)).order_by(outbox.c.id).limit(limit)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def replay(self, outbox_ids: list[int] | None, now: datetime) -> int:
        """Put dead letters back in line, with a fresh retry schedule."""
        query = (
            update(outbox)
            .where(outbox.c.dead_at.is_not(None))
            .values(dead_at=None, attempts=0, available_at=now)
        )
        if outbox_ids is not None:
            query = query.where(outbox.c.id.in_(outbox_ids))
        replayed = int(self._connection.execute(query).rowcount or 0)
        self._pending += replayed
        return replayed

    def announce(self) -> None:
        """Before the commit: if it leaves events to relay, wake listening workers."""
        if self._pending > 0:
            announce(self._connection)

    def for_case(self, case_id: int) -> list[dict[str, Any]]:
        query = select(outbox).where(outbox.c.case_id == case_id).order_by(outbox.c.id)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def counts(self) -> dict[str, int]:
        pending = outbox.c.published_at.is_(None) & outbox.c.dead_at.is_(None)
        query = select(
            func.count().filter(pending), func.count().filter(outbox.c.dead_at.is_not(None))
        )
        waiting, dead = self._connection.execute(query).one()
        return {"pending": int(waiting), "dead": int(dead)}
