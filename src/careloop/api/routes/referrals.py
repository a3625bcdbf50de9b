"""Referral endpoints. Each handler authenticates, parses, calls one use case."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile

from careloop.adapters.db.cases import CaseFilter
from careloop.api.blocking import BlockingPool
from careloop.api.intake_batcher import IntakeBatcher
from careloop.api.presenters import present_case
from careloop.api.problems import error_problem, internal_problem
from careloop.api.responses import JsonResponse
from careloop.api.schemas import (
    AssignIn,
    BulkTransitionIn,
    NoteIn,
    TaskIn,
    TransitionIn,
    UpdateIn,
)
from careloop.api.security import CurrentActor
from careloop.domain.access import Actor
from careloop.domain.case import Case
from careloop.domain.errors import CareloopError, FieldProblem, InvalidInput, PayloadTooLarge
from careloop.domain.workflow import Workflow
from careloop.services import attachments, cases, queries
from careloop.services.automation_registry import AutomationRegistry
from careloop.services.cases import IntakeRequest
from careloop.services.deps import Deps
from careloop.services.recording import record_refusal
from careloop.services.referral_input import ReferralIn

router = APIRouter(prefix="/api/v1/referrals", tags=["referrals"])
log = logging.getLogger("careloop.api")
BULK_REFUSAL = "refused POST /api/v1/referrals/transitions"
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _blocking(request: Request) -> BlockingPool:
    blocking: BlockingPool = request.app.state.blocking
    return blocking


def _present(request: Request, case: Case, workflow: Workflow, actor: Actor) -> dict[str, Any]:
    registry: AutomationRegistry = request.app.state.automation
    return present_case(case, workflow, actor, registry.current().calendar_for(case.clinic))


async def _present_async(
    request: Request, case: Case, workflow: Workflow, actor: Actor
) -> dict[str, Any]:
    """As _present, reading the active calendars off the loop when they are due a check."""
    registry: AutomationRegistry = request.app.state.automation
    config = registry.fresh()
    if config is None:
        config = await _blocking(request).run(registry.current)
    return present_case(case, workflow, actor, config.calendar_for(case.clinic))


async def _workflow_of(request: Request, case: Case) -> Workflow:
    """The case's compiled workflow; read from the database (off the loop) on first use."""
    deps = _deps(request)
    workflow = deps.workflows.compiled(case.workflow_key, case.workflow_version)
    if workflow is None:
        workflow = await _blocking(request).run(
            deps.workflows.get, case.workflow_key, case.workflow_version
        )
    return workflow


@router.post("", status_code=201, summary="Create a referral")
async def create_referral(
    request: Request,
    actor: CurrentActor,
    referral: ReferralIn,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    # Async, the transaction shared with concurrent creates (group commit) on the thread
    # pool: parsing, validation and the response stay on the event loop.
    batcher: IntakeBatcher = request.app.state.intake
    case, created = await batcher.create(IntakeRequest(actor, referral, idempotency_key))
    workflow = await _workflow_of(request, case)
    headers = {"Location": f"/api/v1/referrals/{case.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    body = await _present_async(request, case, workflow, actor)
    return JsonResponse(body, status_code=201, headers=headers)


@router.get("", summary="List and search referrals (work queue)")
def list_referrals(
    request: Request,
    actor: CurrentActor,
    status: Annotated[list[str] | None, Query(max_length=20)] = None,
    specialty: str | None = None,
    urgency: str | None = None,
    clinic: str | None = None,
    payer: str | None = None,
    assignee: str | None = None,
    min_age_hours: Annotated[float | None, Query(ge=0)] = None,
    max_age_hours: Annotated[float | None, Query(ge=0)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    order: Annotated[str, Query(pattern="^(oldest|newest)$")] = "oldest",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    flt = CaseFilter(
        states=tuple(status or ()),
        specialty=specialty,
        urgency=urgency,
        clinic=clinic,
        payer=payer,
        assignee=assignee,
        min_age_hours=min_age_hours,
        max_age_hours=max_age_hours,
        text=q,
        newest_first=order == "newest",
    )
    rows, next_cursor = queries.list_cases(_deps(request), actor, flt, limit, cursor)
    return {"items": rows, "next_cursor": next_cursor}


@router.get("/{case_id}", summary="Get one referral")
def get_referral(request: Request, actor: CurrentActor, case_id: int) -> Any:
    case, workflow = queries.get_case(_deps(request), actor, case_id)
    return _present(request, case, workflow, actor)


@router.patch("/{case_id}", summary="Change fields of an open referral")
def update_referral(request: Request, actor: CurrentActor, case_id: int, body: UpdateIn) -> Any:
    deps = _deps(request)
    case = cases.update_case(deps, actor, case_id, body.version, body.changes)
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    return _present(request, case, workflow, actor)


@router.post("/{case_id}/transitions", summary="Move a referral along its workflow")
def transition_referral(
    request: Request, actor: CurrentActor, case_id: int, body: TransitionIn
) -> Any:
    deps = _deps(request)
    case = cases.transition_case(
        deps, actor, case_id, body.transition, body.version, body.reason, body.changes
    )
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    return _present(request, case, workflow, actor)


@router.post("/transitions", summary="Move several referrals in one transaction")
def transition_referrals(request: Request, actor: CurrentActor, body: BulkTransitionIn) -> Any:
    """Each item stands alone: the answer lists, in order, the moved referral or the
    problem that kept it where it was (problem+json fields, with its status)."""
    deps = _deps(request)
    moves = [cases.Move(i.id, i.transition, i.version, i.reason) for i in body.items]
    results = []
    for item, result in zip(body.items, cases.transition_cases(deps, actor, moves), strict=True):
        if isinstance(result, Case):
            workflow = deps.workflows.get(result.workflow_key, result.workflow_version)
            referral = _present(request, result, workflow, actor)
            results.append({"id": item.id, "status": 200, "referral": referral})
            continue
        instance = f"/api/v1/referrals/{item.id}/transitions"
        if isinstance(result, CareloopError):
            problem = error_problem(result, instance)
            if result.audited:  # on record like a refused single request, in its own tx
                record_refusal(
                    deps, actor, BULK_REFUSAL, result.code, result.detail, case_id=item.id
                )
        else:
            log.error("bulk move of referral %s failed", item.id, exc_info=result)
            problem = internal_problem(instance)
        results.append({"id": item.id, "status": problem["status"], "problem": problem})
    return {"results": results}


@router.post("/{case_id}/assignment", summary="Assign or unassign a referral")
def assign_referral(request: Request, actor: CurrentActor, case_id: int, body: AssignIn) -> Any:
    deps = _deps(request)
    case = cases.assign_case(deps, actor, case_id, body.version, body.assignee)
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    return _present(request, case, workflow, actor)


@router.get("/{case_id}/history", summary="Status history")
def history(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return {"items": queries.read_case_part(_deps(request), actor, case_id, "history")}


@router.get("/{case_id}/audit", summary="The audit trail of one referral")
def audit_trail(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return {"items": queries.read_case_part(_deps(request), actor, case_id, "audit")}


@router.get("/{case_id}/notes", summary="Notes")
def list_notes(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return {"items": queries.read_case_part(_deps(request), actor, case_id, "notes")}


@router.post("/{case_id}/notes", status_code=201, summary="Add a note")
def add_note(request: Request, actor: CurrentActor, case_id: int, body: NoteIn) -> Any:
    return attachments.add_note(_deps(request), actor, case_id, body.body)


@router.get("/{case_id}/tasks", summary="Tasks")
def list_tasks(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return {"items": queries.read_case_part(_deps(request), actor, case_id, "tasks")}


@router.post("/{case_id}/tasks", status_code=201, summary="Add a task")
def add_task(request: Request, actor: CurrentActor, case_id: int, body: TaskIn) -> Any:
    return attachments.add_task(
        _deps(request), actor, case_id, body.title, body.assignee, body.due_at
    )


@router.get("/{case_id}/documents", summary="Documents (metadata)")
def list_documents(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return {"items": queries.read_case_part(_deps(request), actor, case_id, "documents")}


@router.post("/{case_id}/documents", status_code=201, summary="Upload a document")
def upload_document(
    request: Request,
    actor: CurrentActor,
    case_id: int,
    doc_type: Annotated[str, Form(max_length=50)],
    file: Annotated[UploadFile, File()],
) -> Any:
    deps = _deps(request)
    content = file.file.read(deps.max_upload_bytes + 1)
    if len(content) > deps.max_upload_bytes:
        raise PayloadTooLarge(f"file is larger than {deps.max_upload_bytes} bytes")
    if not file.filename:
        raise InvalidInput([FieldProblem("file", "a filename is required")])
    return attachments.add_document(
        deps,
        actor,
        case_id,
        doc_type,
        file.filename,
        file.content_type or "application/octet-stream",
        content,
    )


@router.get("/{case_id}/documents/{document_id}/content", summary="Download a document")
def download_document(
    request: Request, actor: CurrentActor, case_id: int, document_id: int
) -> Response:
    document = queries.download_document(_deps(request), actor, case_id, document_id)
    return Response(
        document["content"],
        media_type=document["content_type"],
        headers={
            "Content-Disposition": _attachment_header(document["filename"]),
            "Digest": f"sha-256={document['sha256']}",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _attachment_header(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name, so any filename survives."""
    fallback = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"
