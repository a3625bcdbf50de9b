"""Timers: rows with a due time, claimed with FOR UPDATE SKIP LOCKED, fired once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    Update,
    all_,
    any_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from careloop.adapters.db.automation_tables import scheduled_jobs, timers
from careloop.adapters.db.insert_new import insert_new, insert_new_statement
from careloop.adapters.db.write_buffer import WriteBuffer


def _cancel_statements(array: bool) -> tuple[Update, Update]:
    """(cancel, cancel of named timers), built once: the relay cancels timers on every
    state change, a batch's cases and kept keys in one statement.

    On PostgreSQL each list is one array parameter: one statement text whatever the
    batch, which psycopg parses and the server plans once, where a batch's hundreds of
    kept keys in a NOT IN list made a new text every time. SQLite has no arrays:
    expanding lists."""
    if array:
        case_ids = timers.c.case_id == any_(bindparam("case_ids", type_=ARRAY(BigInteger)))
        kinds = timers.c.kind == any_(bindparam("kinds", type_=ARRAY(String)))
        keep = timers.c.key != all_(bindparam("keep", type_=ARRAY(String)))
        names = timers.c.name == any_(bindparam("names", type_=ARRAY(String)))
    else:
        case_ids = timers.c.case_id.in_(bindparam("case_ids", expanding=True))
        kinds = timers.c.kind.in_(bindparam("kinds", expanding=True))
        keep = timers.c.key.not_in(bindparam("keep", expanding=True))
        names = timers.c.name.in_(bindparam("names", expanding=True))
    cancel = (
        update(timers)
        .where(case_ids, timers.c.status == "pending", kinds, keep)
        .values(status="cancelled", fired_at=bindparam("at"))
    )
    return cancel, cancel.where(names)


_CANCEL = {"postgresql": _cancel_statements(array=True)}
_CANCEL_DEFAULT = _cancel_statements(array=False)


class TimerStore:
    def __init__(self, connection: Connection, buffer: WriteBuffer | None = None) -> None:
        self._connection = connection
        self._buffer = buffer

    def plan(self, values: dict[str, Any]) -> bool:
        """Insert a pending timer; False when one with the same key exists (replanning
        the same moment twice is a no-op)."""
        row = {"status": "pending", "fired_at": None, **values}
        return insert_new(self._connection, timers, row)

    def plan_many(self, rows: list[dict[str, Any]]) -> None:
        """Bulk insert of timers whose keys are known to be new."""
        if rows:
            self._connection.execute(
                timers.insert(), [{"status": "pending", "fired_at": None, **r} for r in rows]
            )

    def replan(
        self,
        case_id: int,
        kinds: tuple[str, ...],
        rows: list[dict[str, Any]],
        at: datetime,
        names: tuple[str, ...] | None = None,
        keep: tuple[str, ...] = (),
    ) -> None:
        """Plan ``rows`` and cancel the case's other pending timers of ``kinds`` (and
        ``names``) but those keyed ``keep`` (timers planned later, which a replan of
        the same moment must leave in place). A deferring batch does this for all its
        cases in two statements at the flush: the result is the same in either order,
        since planned keys are kept."""
        planned = [{"status": "pending", "fired_at": None, **row} for row in rows]
        kept = [row["key"] for row in planned]
        kept.extend(keep)
        buffer = self._buffer
        if buffer is not None and buffer.active:
            buffer.replan_timers(case_id, (kinds, names), kept, at)
            for row in planned:
                buffer.insert(insert_new_statement(timers, set(row)), row)
            return
        self.cancel_for_case(case_id, kinds, at, names=names, keep=tuple(kept))
        for row in planned:
            insert_new(self._connection, timers, row)

    def cancel_replanned(
        self,
        which: tuple[tuple[str, ...], tuple[str, ...] | None],
        case_ids: list[int],
        keep: list[str],
        at: datetime,
    ) -> None:
        """The cancelling half of deferred ``replan`` calls for the same (kinds, names):
        one statement for every case (a kept key names its case, so the lists merge)."""
        kinds, names = which
        self.cancel_for_cases(case_ids, kinds, at, names, keep)

    def cancel_for_case(
        self,
        case_id: int,
        kinds: tuple[str, ...],
        at: datetime,
        names: tuple[str, ...] | None = None,
        keep: tuple[str, ...] = (),
    ) -> int:
        """Cancel pending timers of the case; ``keep`` names keys that stay (a replan
        that plans the very same timers again must not cancel them)."""
        return self.cancel_for_cases([case_id], kinds, at, names, list(keep))

    def cancel_for_cases(
        self,
        case_ids: list[int],
        kinds: tuple[str, ...],
        at: datetime,
        names: tuple[str, ...] | None,
        keep: list[str],
    ) -> int:
        """Cancel pending timers of ``kinds`` (and ``names``) of these cases but the
        ``keep`` keys; returns how many."""
        cancel, cancel_named = _CANCEL.get(self._connection.dialect.name, _CANCEL_DEFAULT)
        params = {"case_ids": case_ids, "kinds": list(kinds), "keep": keep, "at": at}
        if names is None:
            result = self._connection.execute(cancel, params)
        else:
            result = self._connection.execute(cancel_named, {**params, "names": list(names)})
        return int(result.rowcount or 0)

    def claim_due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        query = (
            select(timers)
            .where(timers.c.status == "pending", timers.c.due_at <= now)
            .order_by(timers.c.due_at, timers.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        # all(): one fetch of every row, where iterating the result fetched row by row.
        return [dict(r) for r in self._connection.execute(query).mappings().all()]

    def next_due(self) -> datetime | None:
        """When the earliest pending timer is due (None: no timer pending)."""
        query = select(func.min(timers.c.due_at)).where(timers.c.status == "pending")
        due: datetime | None = self._connection.execute(query).scalar()
        return due

    def mark_fired(self, timer_ids: list[int], at: datetime) -> None:
        if timer_ids:
            self._connection.execute(
                update(timers)
                .where(timers.c.id.in_(timer_ids), timers.c.status == "pending")
                .values(status="fired", fired_at=at)
            )

    def for_case(self, case_id: int) -> list[dict[str, Any]]:
        query = select(timers).where(timers.c.case_id == case_id).order_by(timers.c.due_at)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def pending_count(self) -> int:
        query = select(func.count()).select_from(timers).where(timers.c.status == "pending")
        return int(self._connection.execute(query).scalar_one())

    # -- periodic jobs -------------------------------------------------------------
    def claim_due_jobs(self, names: list[str], now: datetime) -> list[str]:
        existing = {r.name for r in self._connection.execute(select(scheduled_jobs.c.name))}
        for name in names:
            if name not in existing:  # another worker may register it at the same moment
                insert_new(self._connection, scheduled_jobs, {"name": name, "next_run_at": now})
        query = (
            select(scheduled_jobs.c.name)
            .where(scheduled_jobs.c.name.in_(names), scheduled_jobs.c.next_run_at <= now)
            .with_for_update(skip_locked=True)
        )
        return [str(r.name) for r in self._connection.execute(query)]

    def finish_job(self, name: str, at: datetime, next_run_at: datetime, result: str) -> None:
        self._connection.execute(
            update(scheduled_jobs)
            .where(scheduled_jobs.c.name == name)
            .values(last_run_at=at, next_run_at=next_run_at, last_result=result[:2000])
        )

    def jobs(self) -> list[dict[str, Any]]:
        query = select(scheduled_jobs).order_by(scheduled_jobs.c.name)
        return [dict(r) for r in self._connection.execute(query).mappings()]
