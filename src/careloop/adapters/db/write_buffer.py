"""Deferred writes for an optimistic unit of work (the outbox relay's batches).

An optimistic batch undoes nothing piecemeal: any failure rolls the whole transaction
back and the batch runs again with savepoints (careloop.engine.outbox). So the rows its
events and rules write need not reach the database one statement each. They wait here
and go out per statement in one driver call (on PostgreSQL one round trip, INSERTs as
a COPY or multi-row statements: see multi_row), when the transaction commits or just before a
statement that may read a table they belong to. The relay sent about forty statements
per referral before; a batch now sends a handful per table.

Reads stay correct: any SQL the connection runs that names a buffered table flushes
first (see ``start``), and the cases the batch works on are kept as loaded or last saved
(``cases``), so a rule sees what earlier rules did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, event

from careloop.adapters.db.driver_sql import DriverStatement
from careloop.domain.audit import AuditRecord
from careloop.domain.case import Case
from careloop.services.ports import OptimisticAbort

# Tables whose rows wait here. A statement naming one flushes the buffer first.
_BUFFERED = re.compile(
    r"\b(cases|case_history|tasks|audit_log|audit_heads|outbox|automation_runs|timers)\b"
)
# Writes that may change what a kept case shows (its row, its open tasks, its documents).
_CHANGES_CASES = re.compile(
    r"^\s*(UPDATE|INSERT|DELETE)\b.*\b(cases|tasks|documents)\b", re.S | re.I
)


# Which timers a replan covers: (kinds, names or None for every name).
TimerScope = tuple[tuple[str, ...], tuple[str, ...] | None]
# Cancels the other pending timers of (scope, cases, keys kept, when): the timer store's.
ReplanSink = Callable[[TimerScope, list[int], list[str], datetime], None]


# Execution option of a read that may see the database as the batch found it: it need
# not wait for the batch's own writes (see AutomationStore.duplicate_candidates).
COMMITTED_READ = "careloop_committed_read"


class WriteBuffer:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.active = False
        # The batch's cases by id, as loaded or as last saved (the identity map).
        self.cases: dict[int, Case] = {}
        # Case saves by case: (statement, expected version, the row's maker). The version
        # is the one the database holds, however many saves the batch made since; the row
        # is made at the flush, once, from the last save.
        self._saves: dict[int, tuple[DriverStatement, int, Callable[[], dict[str, Any]]]] = {}
        self._inserts: dict[DriverStatement, list[Mapping[str, Any]]] = {}
        self._audit: list[AuditRecord] = []
        # Deferred timer replans: scope -> (case ids, keys kept), cancelled in one go.
        self._replans: dict[TimerScope, tuple[list[int], list[str], datetime]] = {}
        self.replan_sink: ReplanSink = _no_replans
        self.audit_sink: Callable[[list[AuditRecord]], None] | None = None
        self._ids: dict[str, list[int]] = {}  # table -> ids reserved, last to use first
        self._flushing = False
        self._watching = False
        self.flushes = 0  # how many times the buffer went out: a row added before is written

    # -- switching on --------------------------------------------------------------
    def start(self) -> None:
        """Defer from now on, and flush before any statement that may read what waits."""
        self.active = True
        if not self._watching:
            event.listen(self._connection, "before_cursor_execute", self._before_statement)
            self._watching = True

    def _before_statement(
        self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool
    ) -> None:
        if self._flushing:
            return
        if (
            self.pending
            and _BUFFERED.search(sql)
            and not (context is not None and context.execution_options.get(COMMITTED_READ))
        ):
            self.flush()
        if self.cases and _CHANGES_CASES.match(sql):
            self.cases.clear()  # written outside the buffer: load afresh next time

    # -- deferring ---------------------------------------------------------------------
    def save_case(
        self,
        case_id: int,
        statement: DriverStatement,
        expected_version: int,
        row: Callable[[], dict[str, Any]],
    ) -> None:
        earlier = self._saves.get(case_id)
        if earlier is not None:
            expected_version = earlier[1]
        self._saves[case_id] = (statement, expected_version, row)

    def insert(self, statement: DriverStatement, row: Mapping[str, Any]) -> None:
        self._inserts.setdefault(statement, []).append(row)

    def audit(self, record: AuditRecord) -> None:
        self._audit.append(record)

    def replan_timers(self, case_id: int, scope: TimerScope, keep: list[str], at: datetime) -> None:
        case_ids, kept, _ = self._replans.setdefault(scope, ([], [], at))
        case_ids.append(case_id)
        kept.extend(keep)

    def next_id(self, table: str, allocate: Callable[[int], list[int]]) -> int:
        """An id for a row of ``table`` inserted later; ``allocate(n)`` reserves n ids."""
        reserved = self._ids.setdefault(table, [])
        if not reserved:
            reserved.extend(reversed(allocate(128)))
        return reserved.pop()

    @property
    def pending(self) -> bool:
        return bool(self._saves or self._inserts or self._audit or self._replans)

    # -- writing -----------------------------------------------------------------------
    def flush(self) -> None:
        if self._flushing or not self.pending:
            return
        self._flushing = True
        self.flushes += 1
        try:
            self._flush_saves()
            replans, self._replans = self._replans, {}
            for scope, (case_ids, keep, at) in replans.items():
                self.replan_sink(scope, case_ids, keep, at)
            inserts, self._inserts = self._inserts, {}
            for statement, rows in inserts.items():
                statement.execute_many(self._connection, list(rows))
            records, self._audit = self._audit, []
            if records:
                assert self.audit_sink is not None, "the unit of work wires the audit log"
                self.audit_sink(records)
        except OptimisticAbort:
            raise
        except Exception as error:
            # Whichever statement asked for the flush, the batch is the one to re-run:
            # a row recorded before, a taken key or a constraint fails it the same way.
            raise OptimisticAbort(f"deferred writes failed: {error!r}") from error
        finally:
            self._flushing = False

    def _flush_saves(self) -> None:
        saves, self._saves = self._saves, {}
        by_statement: dict[DriverStatement, list[dict[str, Any]]] = {}
        for statement, expected_version, make_row in saves.values():
            row = make_row()
            row["expected_version"] = expected_version
            by_statement.setdefault(statement, []).append(row)
        for statement, rows in by_statement.items():
            changed = statement.execute_many(self._connection, rows)
            if changed != len(rows):
                # Someone saved one of these cases since the batch loaded it; the batch
                # runs again carefully and that event is retried on the fresh case.
                raise OptimisticAbort(f"{len(rows) - changed} case(s) changed meanwhile")


def _no_replans(scope: TimerScope, case_ids: list[int], keep: list[str], at: datetime) -> None:
    raise AssertionError("the unit of work wires the timer store")


def copy_case(case: Case) -> Case:
    """A case nobody else holds: the kept one must not change under its holder's edits.

    What dataclasses.replace() gives, made from the instance's fields directly: replace()
    looks the fields up and runs __init__ every time, twice the cost, and the relay copies
    a case at every save. (Case has no __post_init__ for __init__ to run.)"""
    copied: Case = object.__new__(Case)
    copied.__dict__.update(case.__dict__)
    copied.data = orjson.loads(orjson.dumps(case.data))
    copied.document_types = list(case.document_types)
    copied.events = []
    return copied
