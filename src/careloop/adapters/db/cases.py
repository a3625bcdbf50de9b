"""Case repository: cases and what hangs off them (history, notes, documents, tasks)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.sql import ColumnElement, Select

from careloop.adapters.db.driver_sql import DriverStatement, insert_into, insert_row
from careloop.adapters.db.tables import TZ, Id, case_history, cases, documents, notes, tasks
from careloop.adapters.field_crypto import SEALED_FIELDS, FieldCipher
from careloop.domain.case import Case
from careloop.domain.errors import FieldProblem, InvalidInput, NotFound, StaleVersion
from careloop.domain.record_rules import CaseScope
from careloop.domain.referral import lookup

_INSERT_CASE = insert_into(cases, returning_id=True)
_INSERT_HISTORY = insert_into(case_history)
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
_SUMMARY_COLUMNS = (
    cases.c.id,
    cases.c.case_type,
    cases.c.state,
    cases.c.version,
    cases.c.clinic,
    cases.c.specialty,
    cases.c.urgency,
    cases.c.payer,
    cases.c.assignee,
    cases.c.patient_ref,
    cases.c.created_at,
    cases.c.updated_at,
    cases.c.state_entered_at,
    cases.c.workflow_key,
    cases.c.workflow_version,
)


@dataclass(frozen=True)
class CaseFilter:
    states: tuple[str, ...] = ()
    specialty: str | None = None
    urgency: str | None = None
    clinic: str | None = None
    payer: str | None = None
    assignee: str | None = None
    min_age_hours: float | None = None
    max_age_hours: float | None = None
    text: str | None = None
    newest_first: bool = False


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


# The record rule as SQL, built once: its values travel as bind parameters, so a scoped
# query costs one more WHERE on a cached statement rather than a new expression tree.
_IN_ORGANISATION = cases.c.organisation == bindparam("scope_organisation")
_IN_REACH = or_(
    cases.c.clinic.in_(bindparam("scope_clinics", expanding=True)),
    cases.c.team.in_(bindparam("scope_teams", expanding=True)),
    cases.c.assignee == bindparam("scope_assignee"),
    cases.c.created_by == bindparam("scope_submitter"),
)


def _apply_scope(query: Select[Any], scope: CaseScope) -> tuple[Select[Any], dict[str, Any]]:
    """The same cases ``CaseScope.reaches`` admits, and the parameters to bind."""
    params: dict[str, Any] = {"scope_organisation": scope.organisation}
    query = query.where(_IN_ORGANISATION)
    if scope.everything:
        return query, params
    params.update(
        scope_clinics=sorted(scope.clinics),
        scope_teams=sorted(scope.teams),
        # NULL never equals anything: an absent assignee or submitter matches no row.
        scope_assignee=scope.assignee,
        scope_submitter=scope.submitted_by,
    )
    return query.where(_IN_REACH), params


class CaseRepository:
    """Services and the domain only ever see plaintext: with a field cipher the chosen
    identifiers are sealed on the way in and opened on the way out."""

    def __init__(self, connection: Connection, cipher: FieldCipher | None = None) -> None:
        self._connection = connection
        self._cipher = cipher

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
        row = self._connection.execute(select(cases).where(cases.c.id == case_id)).first()
        if row is None:
            raise NotFound(f"case {case_id} does not exist")
        doc_types = (
            self._connection.execute(
                select(documents.c.doc_type).where(documents.c.case_id == case_id).distinct()
            )
            .scalars()
            .all()
        )
        open_tasks = self._connection.execute(
            select(func.count())
            .select_from(tasks)
            .where(tasks.c.case_id == case_id, tasks.c.status == "open")
        ).scalar_one()
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
            document_types=list(doc_types),
            open_tasks=int(open_tasks),
        )

    def save(self, case: Case, expected_version: int) -> None:
        """Write the case if nobody changed it since ``expected_version``; bump the version."""
        result = self._connection.execute(
            update(cases)
            .where(cases.c.id == case.id, cases.c.version == expected_version)
            .values(
                state=case.state,
                version=expected_version + 1,
                assignee=case.assignee,
                data=self._sealed(case.data),
                updated_at=case.updated_at,
                state_entered_at=case.state_entered_at,
                **_denormalised(case, self._cipher),
            )
        )
        if result.rowcount != 1:
            actual = self._connection.execute(
                select(cases.c.version).where(cases.c.id == case.id)
            ).scalar_one_or_none()
            if actual is None:
                raise NotFound(f"case {case.id} does not exist")
            raise StaleVersion(expected_version, int(actual))
        case.version = expected_version + 1

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
        _INSERT_HISTORY.execute(
            self._connection,
            {
                "case_id": case_id,
                "from_state": from_state,
                "to_state": to_state,
                "transition": transition,
                "actor_id": actor_id,
                "actor_name": actor_name,
                "reason": reason,
                "occurred_at": at,
            },
        )

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
        query = _apply_filter(select(*_SUMMARY_COLUMNS), flt, now, self._cipher)
        params: dict[str, Any] = {}
        if scope is not None:
            query, params = _apply_scope(query, scope)
        order = (
            (cases.c.created_at.desc(), cases.c.id.desc())
            if flt.newest_first
            else (cases.c.created_at.asc(), cases.c.id.asc())
        )
        if cursor:
            created_at, case_id = _decode_cursor(cursor)
            # A row-value comparison lets the index seek straight to the cursor; the
            # equivalent OR form makes both databases scan the queue from its start.
            key = tuple_(cases.c.created_at, cases.c.id)
            position = tuple_(literal(created_at, TZ), literal(case_id, Id))
            query = query.where(key < position if flt.newest_first else key > position)
        result = self._connection.execute(query.order_by(*order).limit(limit + 1), params)
        keys = list(result.keys())
        rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
        return rows, next_cursor

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


def _apply_filter(
    query: Select[Any], flt: CaseFilter, now: datetime, cipher: FieldCipher | None = None
) -> Select[Any]:
    if flt.states:
        query = query.where(cases.c.state.in_(flt.states))
    for column, value in (
        (cases.c.specialty, flt.specialty),
        (cases.c.urgency, flt.urgency),
        (cases.c.clinic, flt.clinic),
        (cases.c.payer, flt.payer),
        (cases.c.assignee, flt.assignee),
    ):
        if value is not None:
            query = query.where(column == value)
    if flt.min_age_hours is not None:
        query = query.where(cases.c.created_at <= now - timedelta(hours=flt.min_age_hours))
    if flt.max_age_hours is not None:
        query = query.where(cases.c.created_at >= now - timedelta(hours=flt.max_age_hours))
    if flt.text:
        words = [w for w in flt.text.lower().split() if w][:5]
        query = query.where(*(_text_match(word, cipher) for word in words))
    return query


def _text_match(word: str, cipher: FieldCipher | None) -> ColumnElement[bool]:
    found = cases.c.search_text.contains(word, autoescape=True)
    token = cipher.blind_index(word) if cipher is not None else ""
    # An encrypted identifier is in search_text only as its token: an exact search
    # for the identifier finds the token.
    return or_(found, cases.c.search_text.contains(token)) if token else found


def _encode_cursor(created_at: datetime, case_id: int) -> str:
    raw = f"{created_at.isoformat()}|{case_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, case_id = raw.partition("|")
        return datetime.fromisoformat(created), int(case_id)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput([FieldProblem("cursor", "not a cursor returned by this API")]) from error
