"""Reads. Every read of patient data is audited, in the same transaction as the read.

Record rules decide which cases a read reaches (``services.reach``; the work queue
filters by the same rule in SQL) and field rules mask what the actor's roles may not
see (``domain.masking``).
"""

from __future__ import annotations

from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.case import Case
from careloop.domain.masking import HIDDEN, mask_summaries, view_of
from careloop.domain.record_rules import scope_of
from careloop.domain.workflow import Workflow
from careloop.services.deps import Deps
from careloop.services.reach import ensure_reach
from careloop.services.recording import audit

MAX_PAGE = 200


def get_case(deps: Deps, actor: Actor, case_id: int) -> tuple[Case, Workflow]:
    """The case as stored; the caller presents it through the actor's field view."""
    actor.require(Action.CASE_READ)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = uow.cases.get(case_id)
        grant = ensure_reach(uow, actor, case, now)
        audit(
            uow,
            actor,
            "case.read",
            now,
            case=case,
            category="demographics",
            **_break_glass(grant),
        )
        uow.commit()
    return case, deps.workflows.get(case.workflow_key, case.workflow_version)


def list_cases(
    deps: Deps, actor: Actor, flt: Any, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    actor.require(Action.CASE_READ)
    now = deps.clock.now()
    scope = scope_of(actor)
    if scope.nothing:
        return [], None
    with deps.uow() as uow:
        rows, next_cursor = uow.cases.search(
            flt, now, min(max(limit, 1), MAX_PAGE), cursor, scope=scope
        )
        if rows:
            audit(
                uow,
                actor,
                "case.list",
                now,
                category="demographics",
                detail={"case_ids": [r["id"] for r in rows]},
            )
            uow.commit()
    mask_summaries(view_of(actor), rows)
    return rows, next_cursor


def read_case_part(deps: Deps, actor: Actor, case_id: int, part: str) -> list[dict[str, Any]]:
    """history | notes | documents | tasks | audit of one case."""
    action = {"audit": Action.AUDIT_READ, "documents": Action.CASE_DOCUMENT_READ}.get(
        part, Action.CASE_READ
    )
    actor.require(action)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = uow.cases.get(case_id)
        grant = ensure_reach(uow, actor, case, now)
        rows = {
            "history": uow.cases.history,
            "notes": uow.cases.notes,
            "documents": uow.cases.documents,
            "tasks": uow.cases.tasks,
            "audit": uow.audit.for_case,
        }[part](case_id)
        category = {"notes": "clinical", "documents": "document", "audit": "audit"}.get(
            part, "administrative"
        )
        audit(
            uow,
            actor,
            f"case.{part}.read",
            now,
            case=case,
            category=category,
            **_break_glass(grant),
        )
        uow.commit()
    if part == "notes" and view_of(actor).hides_clinical:
        # Notes are clinical content: the role sees that they exist, not what they say.
        rows = [{**row, "body": HIDDEN, "masked": True} for row in rows]
    return rows


def download_document(deps: Deps, actor: Actor, case_id: int, document_id: int) -> dict[str, Any]:
    actor.require(Action.CASE_DOCUMENT_READ)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = uow.cases.get(case_id)
        grant = ensure_reach(uow, actor, case, now)
        document = uow.cases.document(case_id, document_id)
        audit(
            uow,
            actor,
            "case.document.download",
            now,
            case=case,
            category="document",
            detail={"document_id": document_id, "sha256": document["sha256"]},
            **_break_glass(grant),
        )
        uow.commit()
    return document


def _break_glass(grant: dict[str, Any] | None) -> dict[str, Any]:
    """Audit fields marking a read made under a break-glass grant, with its reason."""
    if grant is None:
        return {}
    return {"reason": f"break-glass: {grant['reason']}", "outcome": "break_glass"}
