"""Change governance: change requests (four-eyes), diffs, rollbacks and the report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from careloop.api.security import CurrentActor
from careloop.services import governance, governance_queries
from careloop.services.audit_reports import csv_line
from careloop.services.automation_registry import AutomationRegistry
from careloop.services.deps import Deps
from careloop.services.governance_report import REPORT_COLUMNS, governance_report

router = APIRouter(prefix="/api/v1/governance", tags=["governance"])

Reason = Annotated[str, Field(max_length=4000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ChangeIn(_Body):
    kind: Annotated[str, Field(min_length=1, max_length=30)]
    key: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[int, Field(ge=1)]
    reason: Reason = ""
    rollback: bool = False


class SubmitIn(_Body):
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    source: Annotated[str, Field(min_length=1, max_length=300)] = "api"
    reason: Reason = ""


class DecisionIn(_Body):
    reason: Reason = ""


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _registry(request: Request) -> AutomationRegistry:
    registry: AutomationRegistry = request.app.state.automation
    return registry


@router.get("/changes", summary="Change requests, newest first")
def list_changes(
    request: Request,
    actor: CurrentActor,
    status: Annotated[str | None, Query()] = None,
    kind: Annotated[str | None, Query()] = None,
    key: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> Any:
    return {
        "items": governance_queries.list_changes(_deps(request), actor, status, kind, key, limit)
    }


@router.get("/changes/{change_id}", summary="One change request with its diff")
def show_change(request: Request, actor: CurrentActor, change_id: int) -> Any:
    return governance_queries.get_change(_deps(request), actor, change_id)


@router.post("/changes", status_code=201, summary="Propose activating (or rolling back to) one")
def propose(request: Request, actor: CurrentActor, body: ChangeIn) -> Any:
    return governance.propose_change(
        _deps(request), actor, body.kind, body.key, body.version, body.reason, body.rollback
    )


@router.post("/definitions", status_code=201, summary="Store a new version and propose it")
def submit(request: Request, actor: CurrentActor, body: SubmitIn) -> Any:
    return governance.submit_definition(
        _deps(request), _registry(request), actor, body.text, body.source, body.reason
    )


@router.post("/changes/{change_id}/approve", summary="Approve as a second administrator")
def approve(request: Request, actor: CurrentActor, change_id: int, body: DecisionIn) -> Any:
    return governance.approve_change(
        _deps(request), _registry(request), actor, change_id, body.reason
    )


@router.post("/changes/{change_id}/reject", summary="Reject, with a reason")
def reject(request: Request, actor: CurrentActor, change_id: int, body: DecisionIn) -> Any:
    return governance.reject_change(_deps(request), actor, change_id, body.reason)


@router.post("/changes/{change_id}/withdraw", summary="Withdraw your own proposal")
def withdraw(request: Request, actor: CurrentActor, change_id: int, body: DecisionIn) -> Any:
    return governance.withdraw_change(_deps(request), actor, change_id, body.reason)


@router.get("/diff/{kind}/{key}", summary="Unified diff between two stored versions")
def diff(
    request: Request,
    actor: CurrentActor,
    kind: str,
    key: str,
    from_version: Annotated[int, Query(alias="from", ge=1)],
    to_version: Annotated[int, Query(alias="to", ge=1)],
) -> Any:
    return governance_queries.diff_versions(
        _deps(request), actor, kind, key, from_version, to_version
    )


@router.get("/report", summary="Every active definition's steps, labelled, with provenance")
def report(
    request: Request,
    actor: CurrentActor,
    output: Annotated[str, Query(alias="format", pattern="^(json|csv)$")] = "json",
) -> Any:
    sources = request.app.state.step_sources
    rows = governance_report(_deps(request), _registry(request), actor, sources)
    if output == "json":
        return {"items": rows}

    def lines() -> Iterator[str]:
        yield csv_line(REPORT_COLUMNS)
        for row in rows:
            yield csv_line(row[column] for column in REPORT_COLUMNS)

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="governance-report.csv"'},
    )
