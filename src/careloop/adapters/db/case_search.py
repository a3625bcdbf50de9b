"""The work-queue query: filters, the record rule as SQL, free text and keyset paging."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, String, any_, bindparam, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import ColumnElement, Select

from careloop.adapters.db.tables import TZ, Id, cases
from careloop.adapters.field_crypto import FieldCipher
from careloop.domain.errors import FieldProblem, InvalidInput
from careloop.domain.record_rules import CaseScope

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


# The record rule as SQL, built once: its values travel as bind parameters, so a scoped
# query costs one more WHERE on a cached statement rather than a new expression tree.
# PostgreSQL takes the lists as arrays (= ANY), which keeps the statement text fixed;
# SQLite expands them.
_IN_ORGANISATION = cases.c.organisation == bindparam("scope_organisation")
_REACH_BY_ARRAY = or_(
    cases.c.clinic == any_(bindparam("scope_clinics", type_=ARRAY(String()))),
    cases.c.team == any_(bindparam("scope_teams", type_=ARRAY(String()))),
    cases.c.assignee == bindparam("scope_assignee"),
    cases.c.created_by == bindparam("scope_submitter"),
)
_REACH_BY_LIST = or_(
    cases.c.clinic.in_(bindparam("scope_clinics", expanding=True)),
    cases.c.team.in_(bindparam("scope_teams", expanding=True)),
    cases.c.assignee == bindparam("scope_assignee"),
    cases.c.created_by == bindparam("scope_submitter"),
)


def _apply_scope(
    query: Select[Any], flt: CaseFilter, scope: CaseScope, dialect: str
) -> tuple[Select[Any], dict[str, Any]]:
    """The same cases ``CaseScope.reaches`` admits, and the parameters to bind."""
    params: dict[str, Any] = {"scope_organisation": scope.organisation}
    query = query.where(_IN_ORGANISATION)
    if scope.everything or _inside_reach(flt, scope):
        return query, params
    params.update(
        scope_clinics=sorted(scope.clinics),
        scope_teams=sorted(scope.teams),
        # NULL never equals anything: an absent assignee or submitter matches no row.
        scope_assignee=scope.assignee,
        scope_submitter=scope.submitted_by,
    )
    reach = _REACH_BY_ARRAY if dialect == "postgresql" else _REACH_BY_LIST
    return query.where(reach), params


def _inside_reach(flt: CaseFilter, scope: CaseScope) -> bool:
    """True when the query's own filter already keeps it inside the reach: a queue of
    one of the actor's clinics (or of the actor's own assignments) needs no more."""
    return (flt.clinic is not None and flt.clinic in scope.clinics) or (
        flt.assignee is not None and flt.assignee == scope.assignee
    )


def search_cases(
    connection: Connection,
    cipher: FieldCipher | None,
    flt: CaseFilter,
    now: datetime,
    limit: int,
    cursor: str | None,
    scope: CaseScope | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    query = _apply_filter(select(*_SUMMARY_COLUMNS), flt, now, cipher)
    params: dict[str, Any] = {}
    if scope is not None:
        query, params = _apply_scope(query, flt, scope, connection.dialect.name)
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
    result = connection.execute(query.order_by(*order).limit(limit + 1), params)
    keys = list(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
    return rows, next_cursor


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
