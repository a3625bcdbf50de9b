"""Audit reports (ONC 170.315(d)(3)): a period's entries, filtered, sorted, paged or CSV."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from careloop.api.security import CurrentActor
from careloop.services.audit_reports import audit_report, build_query, export_audit_csv
from careloop.services.deps import Deps
from careloop.services.ports import AuditQuery

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


def _query(
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    user: Annotated[str | None, Query()] = None,
    patient: Annotated[str | None, Query()] = None,
    action: Annotated[str | None, Query(description="exact, or a prefix such as 'case.*'")] = None,
    category: Annotated[str | None, Query()] = None,
    sort: Annotated[str, Query(description="time|user|action|patient|...; '-' descends")] = "time",
    offset: Annotated[int, Query()] = 0,
    limit: Annotated[int, Query()] = 100,
) -> AuditQuery:
    return build_query(
        start=start,
        end=end,
        user=user,
        patient=patient,
        action=action,
        category=category,
        sort=sort,
        offset=offset,
        limit=limit,
    )


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


Filters = Annotated[AuditQuery, Depends(_query)]


@router.get("/report", summary="One page of the audit report (reading it is audited)")
def report(request: Request, actor: CurrentActor, query: Filters) -> Any:
    return audit_report(_deps(request), actor, query)


@router.get("/report.csv", summary="The whole report as CSV, streamed (offset and limit unused)")
def export(request: Request, actor: CurrentActor, query: Filters) -> Any:
    lines = export_audit_csv(_deps(request), actor, query)
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit-report.csv"'},
    )
