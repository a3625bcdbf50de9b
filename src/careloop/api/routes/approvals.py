"""Approval endpoints: the queue, one approval, decisions, a referral's approvals,
and out-of-office delegations. Each handler authenticates, parses, calls one use case."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from careloop.api.security import CurrentActor
from careloop.services import approval_delegations as delegations
from careloop.services import approvals
from careloop.services.deps import Deps

router = APIRouter(prefix="/api/v1", tags=["approvals"])
Reason = Annotated[str, Field(max_length=4000)] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class DecisionIn(_Body):
    # Checked by the use case, so an unknown value gets the same error everywhere.
    decision: Annotated[str, Field(min_length=1, max_length=50)]
    reason: Reason = None


class ResubmissionIn(_Body):
    reason: Reason = None


class ApprovalRequestIn(_Body):
    transition: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Reason = None


class DelegationIn(_Body):
    delegate: Annotated[str, Field(min_length=1, max_length=150)] | None = None
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    reason: Annotated[str, Field(max_length=2000)] = ""


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


@router.get("/approvals", summary="My approval queue: what I may decide now")
def queue(
    request: Request,
    actor: CurrentActor,
    policy: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Any:
    return {"items": approvals.my_queue(_deps(request), actor, policy, limit)}


@router.get("/approvals/{approval_id}", summary="One approval with every decision on it")
def get_approval(request: Request, actor: CurrentActor, approval_id: int) -> Any:
    return approvals.get_approval(_deps(request), actor, approval_id)


@router.post(
    "/approvals/{approval_id}/decisions",
    status_code=201,
    summary="Approve, reject (reason required) or request information (reason required)",
)
def decide(request: Request, actor: CurrentActor, approval_id: int, body: DecisionIn) -> Any:
    return approvals.decide(_deps(request), actor, approval_id, body.decision, body.reason)


@router.post(
    "/approvals/{approval_id}/resubmission",
    summary="Answer an information request; the approval resumes",
)
def resubmit(request: Request, actor: CurrentActor, approval_id: int, body: ResubmissionIn) -> Any:
    return approvals.resubmit(_deps(request), actor, approval_id, body.reason)


@router.get("/referrals/{case_id}/approvals", summary="A referral's approvals")
def referral_approvals(request: Request, actor: CurrentActor, case_id: int) -> Any:
    return {"items": approvals.case_approvals(_deps(request), actor, case_id)}


@router.post(
    "/referrals/{case_id}/approvals",
    status_code=201,
    summary="Ask for the approvals a transition of this referral needs",
)
def request_approval(
    request: Request, actor: CurrentActor, case_id: int, body: ApprovalRequestIn
) -> Any:
    ids = approvals.request_approval(_deps(request), actor, case_id, body.transition, body.reason)
    return {"approvals": ids}


@router.post("/delegations", status_code=201, summary="Out of office, optionally to a delegate")
def add_delegation(request: Request, actor: CurrentActor, body: DelegationIn) -> Any:
    return delegations.add_delegation(
        _deps(request), actor, body.delegate, body.starts_at, body.ends_at, body.reason
    )


@router.get("/delegations", summary="Delegations I gave or received")
def list_delegations(request: Request, actor: CurrentActor) -> Any:
    return {"items": delegations.list_delegations(_deps(request), actor)}


@router.delete("/delegations/{delegation_id}", summary="End a delegation now")
def revoke_delegation(request: Request, actor: CurrentActor, delegation_id: int) -> Any:
    return delegations.revoke_delegation(_deps(request), actor, delegation_id)
