"""Audit reports (ONC 170.315(d)(3)): the entries of a period, filtered by user, patient,
action and data category, sorted by any field of the (d)(2) set, a page at a time or
streamed as CSV. Reading a report is itself an audited action.

The (d)(2) field set (ASTM E2147-18 7.1.1, 7.1.2, 7.1.6-7.1.9): date and time, patient
identification, source of access, user identification, action and data category;
careloop adds the outcome and the reason given.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.errors import FieldProblem, InvalidInput
from careloop.services.deps import Deps
from careloop.services.ports import AuditQuery, UnitOfWork
from careloop.services.recording import audit

SORT_FIELDS = ("time", "user", "action", "patient", "category", "outcome", "source")
MAX_PAGE = 500
COLUMNS = (
    "occurred_at",
    "user",
    "user_id",
    "action",
    "outcome",
    "patient",
    "case_id",
    "data_category",
    "source_address",
    "reason",
    "detail",
    "entry",
)
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_LIMITS = {"user": 150, "patient": 100, "action": 100, "category": 50}


def build_query(
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    user: str | None = None,
    patient: str | None = None,
    action: str | None = None,
    category: str | None = None,
    sort: str = "time",
    offset: int = 0,
    limit: int = 100,
) -> AuditQuery:
    """Check a report's parameters, naming every bad one."""
    problems = []
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            problems.append(FieldProblem(name, "give a time zone, e.g. 2026-03-01T00:00:00Z"))
    if start is not None and end is not None and not problems and end <= start:
        problems.append(FieldProblem("to", "must be after 'from'"))
    texts = {"user": user, "patient": patient, "action": action, "category": category}
    for name, text in texts.items():
        if text is not None and not 0 < len(text) <= _LIMITS[name]:
            problems.append(FieldProblem(name, f"1 to {_LIMITS[name]} characters"))
    if action is not None and "*" in action[:-1]:
        problems.append(FieldProblem("action", "'*' may only end a prefix, as in 'case.*'"))
    field, descending = _parse_sort(sort, problems)
    if offset < 0:
        problems.append(FieldProblem("offset", "must be 0 or more"))
    if not 1 <= limit <= MAX_PAGE:
        problems.append(FieldProblem("limit", f"must be from 1 to {MAX_PAGE}"))
    if problems:
        raise InvalidInput(problems)
    return AuditQuery(start, end, user, patient, action, category, field, descending, offset, limit)


def _parse_sort(sort: str, problems: list[FieldProblem]) -> tuple[str, bool]:
    """'time', '-time' (descending), 'user:asc' or 'user:desc'."""
    text = sort.strip()
    descending = text.startswith("-")
    field, _, direction = text.lstrip("-").partition(":")
    if direction:
        descending = direction == "desc"
    if field not in SORT_FIELDS or direction not in ("", "asc", "desc"):
        problems.append(
            FieldProblem("sort", f"one of {list(SORT_FIELDS)}, '-' first or ':desc' for descending")
        )
        return "time", False
    return field, descending


def audit_report(deps: Deps, actor: Actor, query: AuditQuery) -> dict[str, Any]:
    """One page of the report; the reading is recorded in the same transaction."""
    actor.require(Action.AUDIT_READ)
    now = deps.clock.now()
    with deps.uow() as uow:
        rows = uow.audit.report(query)
        total = uow.audit.count(query)
        _record_reading(uow, actor, now, "audit.report.read", query, total)
        uow.commit()
    following = query.offset + len(rows)
    return {
        "items": [present_entry(r) for r in rows],
        "total": total,
        "offset": query.offset,
        "limit": query.limit,
        "next_offset": following if following < total else None,
    }


def export_audit_entries(deps: Deps, actor: Actor, query: AuditQuery) -> Iterator[dict[str, Any]]:
    """Every matching entry, read as it is consumed. The export is recorded before the
    first entry leaves."""
    actor.require(Action.AUDIT_READ)
    now = deps.clock.now()
    with deps.uow() as uow:
        _record_reading(uow, actor, now, "audit.report.export", query, None)
        uow.commit()
    return _entries(deps, query)


def export_audit_csv(deps: Deps, actor: Actor, query: AuditQuery) -> Iterator[str]:
    """The export as CSV lines, the header first (permission and record come first)."""
    return _csv_lines(export_audit_entries(deps, actor, query))


def _csv_lines(entries: Iterable[dict[str, Any]]) -> Iterator[str]:
    yield csv_line(COLUMNS)
    for entry in entries:
        yield csv_line(entry[column] for column in COLUMNS)


def _entries(deps: Deps, query: AuditQuery) -> Iterator[dict[str, Any]]:
    with deps.read_uow() as uow:
        for row in uow.audit.stream(query):
            yield present_entry(row)


def _record_reading(
    uow: UnitOfWork, actor: Actor, now: datetime, action: str, query: AuditQuery, total: int | None
) -> None:
    filters = {
        "from": query.start.isoformat() if query.start else None,
        "to": query.end.isoformat() if query.end else None,
        "user": query.user,
        "patient": query.patient,
        "action": query.action,
        "category": query.category,
        "sort": f"{'-' if query.descending else ''}{query.sort}",
    }
    detail: dict[str, Any] = {"filters": {k: v for k, v in filters.items() if v is not None}}
    if total is not None:
        detail.update(total=total, offset=query.offset, limit=query.limit)
    audit(uow, actor, action, now, category="audit", detail=detail)


def present_entry(row: dict[str, Any]) -> dict[str, Any]:
    """An entry in the (d)(2) vocabulary."""
    return {
        "occurred_at": row["occurred_at"].isoformat(),
        "user": row["actor_name"],
        "user_id": row["actor_id"],
        "action": row["action"],
        "outcome": row["outcome"],
        "patient": row["patient_ref"],
        "case_id": row["case_id"],
        "data_category": row["data_category"],
        "source_address": row["source_address"],
        "reason": row["reason"],
        "detail": row["detail"],
        "entry": f"{row['chain']}:{row['seq']}",
    }


def csv_line(values: Iterable[Any]) -> str:
    """One CSV line; a cell a spreadsheet would run as a formula is prefixed with '."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([spreadsheet_safe(v) for v in values])
    return buffer.getvalue()


def spreadsheet_safe(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, default=str)
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
