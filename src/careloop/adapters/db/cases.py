"""Case repository: cases and what hangs off them (history, notes, documents, tasks).
The work-queue query is in ``case_search``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    any_,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from careloop.adapters.db.case_search import CaseFilter, search_cases
from careloop.adapters.db.driver_sql import DriverStatement, insert_into, insert_row
from careloop.adapters.db.tables import case_history, cases, documents, notes, tasks
from careloop.adapters.db.write_buffer import WriteBuffer, copy_case
from careloop.adapters.field_crypto import SEALED_FIELDS, FieldCipher
from careloop.domain.case import Case
from careloop.domain.errors import NotFound, StaleVersion
from careloop.domain.record_rules import CaseScope
from careloop.domain.referral import lookup

__all__ = ["CaseFilter", "CaseRepository", "search_text"]

_INSERT_CASE = insert_into(cases, returning_id=True)
_INSERT_HISTORY = insert_into(case_history)
_INSERT_TASK_WITH_ID = DriverStatement(insert_row(tasks, with_id=True))
# A deferred save (see write_buffer): bind names differ from the columns they set, which
# are those of _saved_values.
_SAVED = (
    "state",
    "version",
    "assignee",
    "data",
    "updated_at",
    "state_entered_at",
    "clinic",
    "specialty",
    "urgency",
    "payer",
    "team",
    "patient_ref",
    "search_text",
)
_SAVE_CASE = DriverStatement(
    update(cases)
    .where(cases.c.id == bindparam("case_id"), cases.c.version == bindparam("expected_version"))
    .values({name: bindparam(f"new_{name}", type_=cases.c[name].type) for name in _SAVED})
)
# PostgreSQL: a new case and its first history row in one statement (one round trip).
_NEW_CASE = insert_row(cases).returning(cases.c.id).cte("new_case")
_INSERT_CASE_WITH_HISTORY = DriverStatement(
    select(_NEW_CASE.c.id).add_cte(
        insert(case_history)
        .from_select(
            ["case_id", "to_state", "actor_id", "actor_name", "reason", "occurred_at"],
            select(
                _NEW_CASE.c.id,
                bindparam("state", type_=cases.c.state.type),
                bindparam("created_by", type_=cases.c.created_by.type),
                bindparam("actor_name", type_=case_history.c.actor_name.type),
                literal("", case_history.c.reason.type),
                bindparam("created_at", type_=cases.c.created_at.type),
            ),
        )
        .cte("first_history")
    )
)
_TEXT_FIELDS = (
    "patient.family_name",
    "patient.given_name",
    "patient.mrn",
    "patient.member_id",
    "reason",
    "referring_provider.name",
    "specialty",
    "clinic",
)


# A case with what its conditions read besides its row (document types, open tasks) in
# one statement: every use case and every relayed event loads a case this way.
_GET_CASE = select(
    cases,
    select(func.aggregate_strings(documents.c.doc_type, ","))
    .where(documents.c.case_id == cases.c.id)
    .scalar_subquery()
    .label("doc_types"),
    select(func.count())
    .select_from(tasks)
    .where(tasks.c.case_id == cases.c.id, tasks.c.status == "open")
    .scalar_subquery()
    .label("open_tasks"),
)
_GET_CASE_BY_ID = _GET_CASE.where(cases.c.id == bindparam("case_id"))
# Many cases by id: on PostgreSQL one array parameter (= ANY), one statement text that
# psycopg prepares, where an IN list is rendered and parsed anew for every batch size.
_GET_CASES = {
    "postgresql": _GET_CASE.where(
        cases.c.id == any_(bindparam("case_ids", type_=ARRAY(BigInteger)))
    ),
}
_GET_CASES_DEFAULT = _GET_CASE.where(cases.c.id.in_(bindparam("case_ids", expanding=True)))


def search_text(data: dict[str, Any], cipher: FieldCipher | None = None) -> str:
    """The work queue's free text. An encrypted field is in it only as its blind index
    token, so this column never shows what the data column hides."""
    parts = []
    for path in _TEXT_FIELDS:
        value = lookup(data, path)
        if value and cipher is not None and path in SEALED_FIELDS:
            value = cipher.blind_index(str(value))
        parts.append(value)
    return " ".join(str(p) for p in parts if p).lower()


def _denormalised(case: Case, cipher: FieldCipher | None) -> dict[str, Any]:
    data = case.data
    return {
        "clinic": str(data.get("clinic", "")),
        "specialty": str(data.get("specialty", "")),
        "urgency": str(data.get("urgency", "routine")),
        "payer": lookup(data, "payer.name"),
        "team": case.team,
        "patient_ref": lookup(data, "patient.mrn"),
        "search_text": search_text(data, cipher),
    }


class CaseRepository:
    """Services and the domain only ever see plaintext: with a field cipher the chosen
    identifiers are sealed on the way in and opened on the way out."""

    def __init__(
        self,
        connection: Connection,
        cipher: FieldCipher | None = None,
        buffer: WriteBuffer | None = None,
    ) -> None:
        self._connection = connection
        self._cipher = cipher
        self._buffer = buffer
        self._next_sqlite_task_id = 0

    def _deferring(self) -> WriteBuffer | None:
        return self._buffer if self._buffer is not None and self._buffer.active else None

    def _sealed(self, data: dict[str, Any]) -> dict[str, Any]:
        return data if self._cipher is None else self._cipher.seal_data(data)

    def _opened(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data) if self._cipher is None else self._cipher.open_data(data)

    def add(self, case: Case, created_by: int, created_by_name: str) -> int:
        """Insert a new case with its first status-history row (no previous state)."""
        row = {
            "case_type": case.case_type,
            "workflow_key": case.workflow_key,
            "workflow_version": case.workflow_version,
            "state": case.state,
            "version": case.version,
            "assignee": case.assignee,
            "data": self._sealed(case.data),
            "organisation": case.organisation,
            "created_by": created_by,
            "created_at": case.created_at,
            "updated_at": case.updated_at,
            "state_entered_at": case.state_entered_at,
            **_denormalised(case, self._cipher),
        }
        case.created_by = created_by
        if self._connection.dialect.name == "postgresql":
            row["actor_name"] = created_by_name
            case.id = int(_INSERT_CASE_WITH_HISTORY.execute(self._connection, row).fetchone()[0])
        else:
            case.id = int(_INSERT_CASE.execute(self._connection, row).fetchone()[0])
            self.add_history(
                case.id, None, case.state, None, created_by, created_by_name, "", case.created_at
            )
        return case.id

    def get(self, case_id: int) -> Case:
        buffer = self._deferring()
        if buffer is not None and case_id in buffer.cases:
            return copy_case(buffer.cases[case_id])
        row = self._connection.execute(_GET_CASE_BY_ID, {"case_id": case_id}).first()
        if row is None:
            raise NotFound(f"case {case_id} does not exist")
        case = self._case(row)
        if buffer is not None:
            buffer.cases[case_id] = copy_case(case)
        return case

    def prefetch(self, case_ids: set[int]) -> None:
        """Load the cases a deferring batch will work on in one statement; no-op otherwise."""
        buffer = self._deferring()
        if buffer is None:
            return
        wanted = [i for i in case_ids if i not in buffer.cases]
        if not wanted:
            return
        query = _GET_CASES.get(self._connection.dialect.name, _GET_CASES_DEFAULT)
        # all(): one fetch of every row, where iterating the result fetched row by row.
        for row in self._connection.execute(query, {"case_ids": wanted}).all():
            buffer.cases[row.id] = self._case(row)

    def _case(self, row: Any) -> Case:
        doc_types = list(dict.fromkeys(row.doc_types.split(","))) if row.doc_types else []
        return Case(
            id=row.id,
            case_type=row.case_type,
            workflow_key=row.workflow_key,
            workflow_version=row.workflow_version,
            state=row.state,
            version=row.version,
            data=self._opened(row.data),
            created_at=row.created_at,
            updated_at=row.updated_at,
            state_entered_at=row.state_entered_at,
            assignee=row.assignee,
            organisation=row.organisation,
            created_by=row.created_by,
            document_types=doc_types,
            open_tasks=int(row.open_tasks),
        )

    def save(self, case: Case, expected_version: int) -> None:
        """Write the case if nobody changed it since ``expected_version``; bump the version."""
        buffer = self._deferring()
        if buffer is not None:
            self._defer_save(buffer, case, expected_version)
            return
        result = self._connection.execute(
            update(cases)
            .where(cases.c.id == case.id, cases.c.version == expected_version)
            .values(self._saved_values(case, expected_version + 1))
        )
        if result.rowcount != 1:
            actual = self._connection.execute(
                select(cases.c.version).where(cases.c.id == case.id)
            ).scalar_one_or_none()
            if actual is None:
                raise NotFound(f"case {case.id} does not exist")
            raise StaleVersion(expected_version, int(actual))
        case.version = expected_version + 1

    def _saved_values(self, case: Case, version: int) -> dict[str, Any]:
        """The columns a save writes (the ones ``_SAVED`` names)."""
        return {
            "state": case.state,
            "version": version,
            "assignee": case.assignee,
            "data": self._sealed(case.data),
            "updated_at": case.updated_at,
            "state_entered_at": case.state_entered_at,
            **_denormalised(case, self._cipher),
        }

    def _defer_save(self, buffer: WriteBuffer, case: Case, expected_version: int) -> None:
        kept = buffer.cases.get(case.id)
        if kept is None:
            kept = self.get(case.id)  # the version the database holds, kept from now on
        if kept.version != expected_version:
            raise StaleVersion(expected_version, kept.version)
        case.version = expected_version + 1
        saved = copy_case(case)

        def row() -> dict[str, Any]:
            # Made at the flush: a case saved by five rules is written, and encoded, once.
            values = self._saved_values(saved, saved.version)
            return {"case_id": saved.id, **{f"new_{k}": v for k, v in values.items()}}

        buffer.save_case(case.id, _SAVE_CASE, expected_version, row)
        # What hangs off the case is the store's to count: the caller's copy may predate
        # tasks added since it was loaded.
        saved.open_tasks, saved.document_types = kept.open_tasks, kept.document_types
        buffer.cases[case.id] = saved

    def add_history(
        self,
        case_id: int,
        from_state: str | None,
        to_state: str,
        transition: str | None,
        actor_id: int,
        actor_name: str,
        reason: str,
        at: datetime,
    ) -> None:
        row = {
            "case_id": case_id,
            "from_state": from_state,
            "to_state": to_state,
            "transition": transition,
            "actor_id": actor_id,
            "actor_name": actor_name,
            "reason": reason,
            "occurred_at": at,
        }
        buffer = self._deferring()
        if buffer is not None:
            buffer.insert(_INSERT_HISTORY, row)
        else:
            _INSERT_HISTORY.execute(self._connection, row)

    def history(self, case_id: int) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            select(case_history)
            .where(case_history.c.case_id == case_id)
            .order_by(case_history.c.id)
        ).mappings()
        return [dict(row) for row in rows]

    def search(
        self,
        flt: CaseFilter,
        now: datetime,
        limit: int,
        cursor: str | None,
        scope: CaseScope | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        return search_cases(self._connection, self._cipher, flt, now, limit, cursor, scope)

    # --- notes, documents and tasks -------------------------------------------------

    def add_note(
        self, case_id: int, author_id: int, author_name: str, body: str, at: datetime
    ) -> int:
        return int(
            self._connection.execute(
                notes.insert().returning(notes.c.id),
                {
                    "case_id": case_id,
                    "author_id": author_id,
                    "author_name": author_name,
                    "body": body,
                    "created_at": at,
                },
            ).scalar_one()
        )

    def notes(self, case_id: int) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            select(notes).where(notes.c.case_id == case_id).order_by(notes.c.id)
        ).mappings()
        return [dict(r) for r in rows]

    def add_document(self, case_id: int, values: dict[str, Any]) -> int:
        return int(
            self._connection.execute(
                documents.insert().returning(documents.c.id), {"case_id": case_id, **values}
            ).scalar_one()
        )

    def documents(self, case_id: int) -> list[dict[str, Any]]:
        columns = [c for c in documents.c if c.name != "content"]
        rows = self._connection.execute(
            select(*columns).where(documents.c.case_id == case_id).order_by(documents.c.id)
        ).mappings()
        return [dict(r) for r in rows]

    def document(self, case_id: int, document_id: int) -> dict[str, Any]:
        row = (
            self._connection.execute(
                select(documents).where(
                    documents.c.case_id == case_id, documents.c.id == document_id
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"document {document_id} of case {case_id} does not exist")
        return dict(row)

    def add_task(self, case_id: int, values: dict[str, Any]) -> int:
        buffer = self._deferring()
        if buffer is not None:
            task_id = buffer.next_id("tasks", self._allocate_task_ids)
            row = {"completed_at": None, **values, "id": task_id, "case_id": case_id}
            buffer.insert(_INSERT_TASK_WITH_ID, row)
            kept = buffer.cases.get(case_id)
            if kept is not None and values.get("status", "open") == "open":
                kept.open_tasks += 1
            return task_id
        return int(
            self._connection.execute(
                tasks.insert().returning(tasks.c.id), {"case_id": case_id, **values}
            ).scalar_one()
        )

    def tasks(self, case_id: int) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            select(tasks).where(tasks.c.case_id == case_id).order_by(tasks.c.id)
        ).mappings()
        return [dict(r) for r in rows]

    def _allocate_task_ids(self, count: int) -> list[int]:
        """Reserve ``count`` task ids for deferred inserts: from the sequence on
        PostgreSQL; on SQLite past the largest id (the transaction holds the only write
        lock, and a clash would fail the insert and re-run the batch carefully)."""
        cursor = self._connection.connection.cursor()
        if self._connection.dialect.name == "postgresql":
            # The sequence looked up once (a subquery), not per id: pg_get_serial_sequence
            # in the select list ran for every row and cost seven times the nextval.
            cursor.execute(
                "SELECT nextval((SELECT pg_get_serial_sequence('tasks', 'id'))::regclass)"
                " FROM generate_series(1, %s)",
                (count,),
            )
            return sorted(int(r[0]) for r in cursor.fetchall())
        (largest,) = cursor.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()
        # Ids reserved earlier may not be written yet: start past them too.
        start = max(int(largest) + 1, self._next_sqlite_task_id)
        self._next_sqlite_task_id = start + count
        return list(range(start, start + count))
