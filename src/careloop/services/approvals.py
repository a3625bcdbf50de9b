"""Approval use cases: request, decide, resubmit, and read the queue and a case's
approvals. Each write is one transaction: the decision, the request's progress, the
audit entry, the ``approval.decided`` event, the timers and (on the final approval)
the guarded transition or held action all commit together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from careloop.domain import approvals as rules
from careloop.domain.access import Action, Actor
from careloop.domain.approval_policy import (
    ApprovalPolicy,
    Decision,
    Person,
    Status,
)
from careloop.domain.approvals import (
    ApprovalRequest,
    Outcome,
    Standing,
)
from careloop.domain.case import Case
from careloop.domain.errors import CareloopError, FieldProblem, InvalidInput
from careloop.domain.events import Event
from careloop.domain.record_rules import scope_of
from careloop.services.approval_gate import cancel_timers, open_requests, plan_step_timers
from careloop.services.cases import apply_transition
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.reach import load_case
from careloop.services.recording import audit, publish_events, queue_notification

MAX_QUEUE = 200


def request_approval(
    deps: Deps, actor: Actor, case_id: int, transition: str, reason: str | None = None
) -> list[int]:
    """Ask for the approvals transition ``transition`` of a case needs; returns the open
    request ids (existing ones included). Refused when no policy applies."""
    actor.require(Action.APPROVAL_REQUEST)
    ids = _open_for(deps, actor, case_id, transition, reason)
    if not ids:
        raise InvalidInput(
            [FieldProblem("transition", f"no approval policy applies to {transition!r} now")]
        )
    return ids


def hold_transition(
    deps: Deps, actor: Actor, case_id: int, transition: str, reason: str | None = None
) -> list[int]:
    """After the gate refused ``transition`` (that transaction rolled back), open the
    requests it needs in a transaction of their own. Whoever may attempt a transition
    may ask for its approval."""
    actor.require(Action.CASE_TRANSITION)
    return _open_for(deps, actor, case_id, transition, reason)


def _open_for(
    deps: Deps, actor: Actor, case_id: int, transition: str, reason: str | None
) -> list[int]:
    now = deps.clock.now()
    with deps.uow() as uow:
        case = load_case(uow, actor, case_id, now)
        ids = open_requests(uow, actor, case, transition, (reason or "").strip(), now)
        publish_events(uow, case, now)
        uow.commit()
    return ids


def decide(
    deps: Deps, actor: Actor, request_id: int, decision: str, reason: str | None = None
) -> dict[str, Any]:
    """Approve, reject or ask for information on one approval request."""
    actor.require(Action.APPROVAL_DECIDE)
    parsed, text = rules.check_reason(decision, reason)
    now = deps.clock.now()
    with deps.uow() as uow:
        request = uow.approvals.get(request_id, for_update=True)
        case = load_case(uow, actor, request.case_id, now)
        policy = policy_of(uow, request)
        standing = resolve_standing(uow, policy, request, actor, case.data, now)
        outcome = rules.decide(request, policy, standing, person_of(actor), parsed, text, now)
        _record(uow, deps, actor, case, policy, request, outcome, now)
        publish_events(uow, case, now)
        uow.commit()
    return describe(request, policy)


def resubmit(
    deps: Deps, actor: Actor, request_id: int, reason: str | None = None
) -> dict[str, Any]:
    """The requester answers an information request; the step resumes and its timers
    start again."""
    actor.require(Action.APPROVAL_REQUEST)
    text = (reason or "").strip()
    if not text:
        raise InvalidInput([FieldProblem("reason", "say what information was added")])
    now = deps.clock.now()
    with deps.uow() as uow:
        request = uow.approvals.get(request_id, for_update=True)
        case = load_case(uow, actor, request.case_id, now)
        policy = policy_of(uow, request)
        rules.resubmit(request, actor.user_id, now)
        uow.approvals.save(request)
        plan_step_timers(uow, policy, request, now)
        detail = {"approval_id": request.id, "policy": request.policy, "step": request.step}
        audit(
            uow,
            actor,
            "approval.resubmit",
            now,
            case=case,
            category="approval",
            reason=text,
            detail=detail,
        )
        case.events.append(
            Event("approval.resubmitted", detail, key=f"approval:{request.id}:resubmit:{now}")
        )
        publish_events(uow, case, now)
        uow.commit()
    return describe(request, policy)


def _record(
    uow: UnitOfWork,
    deps: Deps,
    actor: Actor,
    case: Case,
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    outcome: Outcome,
    now: datetime,
) -> None:
    vote = outcome.vote
    vote_id = uow.approvals.add_vote(request.id, vote)
    uow.approvals.save(request)
    detail = _decision_detail(policy, request, outcome)
    audit(
        uow,
        actor,
        f"approval.{vote.decision}",
        now,
        case=case,
        category="approval",
        reason=vote.reason,
        detail=detail,
    )
    case.events.append(
        Event(
            "approval.decided",
            {
                **detail,
                "decision": outcome.event_decision,
                "vote": vote.decision,
                "by": vote.actor_name,
            },
            key=f"approval:{request.id}:vote:{vote_id}",
        )
    )
    if not request.is_open or request.status == Status.ON_HOLD:
        cancel_timers(uow, request, now)
    elif outcome.step_completed:
        plan_step_timers(uow, policy, request, now)
    if request.status == Status.APPROVED:
        _carry_out(uow, deps, case, request, now)


def _decision_detail(
    policy: ApprovalPolicy, request: ApprovalRequest, outcome: Outcome
) -> dict[str, Any]:
    vote = outcome.vote
    return {
        "approval_id": request.id,
        "policy": request.policy,
        "target": f"{request.target_kind}:{request.target}",
        "step": policy.steps[vote.step].name,
        "group": vote.group,
        "role": vote.role,
        "on_behalf_of": vote.person_name if vote.on_behalf else None,
        "status": request.status,
    }


def _carry_out(
    uow: UnitOfWork, deps: Deps, case: Case, request: ApprovalRequest, now: datetime
) -> None:
    """Send what the request held back; run the guarded transition as the requester
    if the workflow still allows it, else leave the grant for a coordinator."""
    for held in request.payload.get("held", []):
        queue_notification(uow, held, now)
    if request.target_kind != "transition":
        return
    requester = Actor(
        user_id=request.requester_id,
        username=request.requester_name,
        roles=request.requester_roles,
        organisation=case.organisation,
        locations=frozenset({"*"}),
    )
    reason = request.reason or f"approved (approval {request.id})"
    try:
        with uow.savepoint():
            apply_transition(uow, deps, requester, case, request.target, reason, now)
        request.consumed_at = now  # the gate consumed the stored row just now
    except CareloopError as error:
        audit(
            uow,
            requester,
            "approval.carry_out",
            now,
            case=case,
            category="approval",
            outcome="skipped",
            detail={"approval_id": request.id, "error": error.code, "detail": error.detail[:300]},
        )


def policy_of(uow: UnitOfWork, request: ApprovalRequest) -> ApprovalPolicy:
    policy = uow.approvals.policy_set(request.policy_set, request.policy_version).find(
        request.policy
    )
    if policy is None:  # pragma: no cover - a stored version never loses a policy
        raise LookupError(f"policy {request.policy} missing from {request.policy_set}")
    return policy


def person_of(actor: Actor) -> Person:
    return Person(
        actor.user_id, actor.username, actor.roles, actor.teams, actor.locations, actor.organisation
    )


def resolve_standing(
    uow: UnitOfWork,
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    actor: Actor,
    data: dict[str, Any],
    now: datetime,
) -> Standing:
    """In their own right; else on behalf of someone out of office who delegated to
    them; else as the fallback when nobody of the step is available."""
    own = rules.standing_of(policy, request, person_of(actor), data, False)
    if own.eligible or not request.is_open:
        return own
    for delegation in uow.approvals.active_delegations(now, delegate_id=actor.user_id):
        delegator = uow.approvals.person(str(delegation["delegator_name"]))
        if delegator is None:
            continue
        standing = rules.standing_of(policy, request, delegator, data, False)
        if standing.eligible:
            return standing
    if _may_be_fallback(policy, request, actor, data) and _nobody_available(
        uow, policy, request, actor.organisation, data, now
    ):
        return rules.standing_of(policy, request, person_of(actor), data, True)
    return own


def _may_be_fallback(
    policy: ApprovalPolicy, request: ApprovalRequest, actor: Actor, data: dict[str, Any]
) -> bool:
    step = policy.steps[request.step]
    person = person_of(actor)
    return any(
        r.matches(person, data, request.requester_manager) for r in policy.fallback_for(step)
    )


def _nobody_available(
    uow: UnitOfWork,
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    organisation: str,
    data: dict[str, Any],
    now: datetime,
) -> bool:
    away = frozenset(
        int(d["delegator_id"])
        for d in uow.approvals.active_delegations(now)
        if d["delegate_id"] is None
    )
    people = uow.approvals.people(organisation)
    return rules.needs_fallback(policy, request, people, away, data)


# -- reads -------------------------------------------------------------------------
def my_queue(
    deps: Deps, actor: Actor, policy: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Open requests the actor may decide now (in their own right, for someone who
    delegated to them, or as the fallback), oldest first."""
    actor.require(Action.APPROVAL_READ)
    now = deps.clock.now()
    scope = scope_of(actor)
    found: list[dict[str, Any]] = []
    with deps.read_uow() as uow:
        for request, case in uow.approvals.open_with_cases(actor.organisation, MAX_QUEUE * 5):
            if policy is not None and request.policy != policy:
                continue
            if not scope.reaches(
                case["organisation"],
                case["clinic"],
                case["team"],
                case["assignee"],
                case["created_by"],
            ):
                continue
            rule = policy_of(uow, request)
            if request.status == Status.PENDING and _may_decide(
                uow, rule, request, actor, case["data"], now
            ):
                found.append(describe(request, rule))
            if len(found) >= min(limit, MAX_QUEUE):
                break
    return found


def _may_decide(
    uow: UnitOfWork,
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    actor: Actor,
    data: dict[str, Any],
    now: datetime,
) -> bool:
    standing = resolve_standing(uow, policy, request, actor, data, now)
    probe = ApprovalRequest(**{**request.__dict__, "votes": list(request.votes)})
    try:
        rules.decide(probe, policy, standing, person_of(actor), Decision.APPROVE, "", now)
    except CareloopError:
        return False
    return True


def get_approval(deps: Deps, actor: Actor, request_id: int) -> dict[str, Any]:
    actor.require(Action.APPROVAL_READ)
    now = deps.clock.now()
    with deps.read_uow() as uow:
        request = uow.approvals.get(request_id)
        load_case(uow, actor, request.case_id, now)
        return describe(request, policy_of(uow, request))


def case_approvals(deps: Deps, actor: Actor, case_id: int) -> list[dict[str, Any]]:
    actor.require(Action.APPROVAL_READ)
    now = deps.clock.now()
    with deps.read_uow() as uow:
        load_case(uow, actor, case_id, now)
        return [describe(r, policy_of(uow, r)) for r in uow.approvals.for_case(case_id)]


def describe(request: ApprovalRequest, policy: ApprovalPolicy) -> dict[str, Any]:
    """The request as people see it: where it stands and every decision on it."""
    step = policy.steps[min(request.step, len(policy.steps) - 1)]
    return {
        "id": request.id,
        "case_id": request.case_id,
        "policy": request.policy,
        "policy_title": policy.title,
        "policy_set": request.policy_set,
        "policy_version": request.policy_version,
        "target": {"kind": request.target_kind, "name": request.target},
        "status": request.status,
        "step": {
            "index": request.step,
            "name": step.name,
            "label": step.label,
            "of": len(policy.steps),
        },
        "escalation_level": request.level,
        "requester": request.requester_name,
        "reason": request.reason,
        "created_at": request.created_at.isoformat(),
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        "consumed_at": request.consumed_at.isoformat() if request.consumed_at else None,
        "decisions": [
            {
                "step": policy.steps[v.step].name,
                "group": v.group or None,
                "decision": v.decision,
                "by": v.actor_name,
                "role": v.role,
                "on_behalf_of": v.person_name if v.on_behalf else None,
                "reason": v.reason,
                "at": v.at.isoformat(),
            }
            for v in request.votes
        ],
    }
