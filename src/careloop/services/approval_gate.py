"""Where approvals meet the write path: the gate on transitions and rule actions, and
opening requests. Helpers here never commit; they write in the caller's transaction.

Why a refused transition writes nothing: the gate runs inside the transition's own
transaction, which rolls back when the gate refuses. The request a refusal calls for
is opened by ``hold_transition`` in a transaction of its own (the API edge calls it
after the refusal; the automation engine calls ``open_requests`` in the relay's
transaction, which goes on). So the case is never partly changed, and the request,
its audit entry and its event commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from careloop.domain.access import Actor
from careloop.domain.approval_policy import (
    ApprovalPolicy,
    ApprovalPolicySet,
    Status,
)
from careloop.domain.approvals import (
    ApprovalRequest,
)
from careloop.domain.case import Case
from careloop.domain.errors import ApprovalRequired, NotFound
from careloop.domain.events import Event
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit

TIMER_KIND = "approval"
Applicable = list[tuple[ApprovalPolicySet, ApprovalPolicy]]


def applicable(
    uow: UnitOfWork,
    case: Case,
    now: datetime,
    select: Callable[[ApprovalPolicySet], list[ApprovalPolicy]],
) -> Applicable:
    """Active policies ``select`` picks whose condition holds for ``case`` now."""
    found = [(s, p) for s in uow.approvals.active_policy_sets(case.case_type) for p in select(s)]
    if not found:
        return []
    activation = case.activation(now)
    return [(s, p) for s, p in found if p.applies(activation)]


def check_transition_gate(
    uow: UnitOfWork,
    deps: Deps,
    actor: Actor,
    case: Case,
    transition: str,
    now: datetime,
    reason: str | None = None,
) -> None:
    """Let ``transition`` through when every policy guarding it is granted (consuming
    the grants); otherwise raise ApprovalRequired, writing nothing."""
    policies = applicable(uow, case, now, lambda s: s.for_transition(transition))
    if not policies:
        return
    grants, waiting = _grants_and_waiting(
        uow.approvals.for_case(case.id, with_votes=False), policies
    )
    if len(grants) == len(policies):
        for grant in grants:
            grant.consumed_at = now
            uow.approvals.save(grant)
            detail = {"approval_id": grant.id, "policy": grant.policy, "target": transition}
            audit(
                uow, actor, "approval.consume", now, case=case, category="approval", detail=detail
            )
        return
    # The workflow's own refusal comes first: nobody waits for an approval of a
    # transition that could not happen anyway.
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    probe = replace(case, data=dict(case.data), events=[])
    probe.transition(workflow, transition, actor, reason, now)
    keys = tuple(p.key for _, p in policies)
    raise ApprovalRequired(
        f"transition {transition!r} of case {case.id} needs approval under {list(keys)}"
        + (f"; waiting for approval {waiting}" if waiting else ""),
        case.id,
        transition,
        keys,
        tuple(waiting),
        reason or "",
    )


def _grants_and_waiting(
    requests: list[ApprovalRequest], policies: Applicable
) -> tuple[list[ApprovalRequest], list[int]]:
    """Per policy: its unused grant, else the id of its open request, else nothing."""
    grants, waiting = [], []
    for _, policy in policies:
        mine = [r for r in requests if r.policy == policy.key]
        grant = next((r for r in mine if r.status == Status.APPROVED and not r.consumed_at), None)
        pending = next((r for r in mine if r.is_open), None)
        if grant is not None:
            grants.append(grant)
        elif pending is not None:
            waiting.append(pending.id)
    return grants, waiting


def open_requests(
    uow: UnitOfWork,
    actor: Actor,
    case: Case,
    target: str,
    reason: str,
    now: datetime,
) -> list[int]:
    """Open a request under every policy guarding transition ``target`` of ``case``
    that has neither an open nor an unused granted one; returns the open request ids."""
    policies = applicable(uow, case, now, lambda s: s.for_transition(target))
    requests = uow.approvals.for_case(case.id, with_votes=False)
    ids = []
    for policy_set, policy in policies:
        mine = [r for r in requests if r.policy == policy.key]
        if any(r.status == Status.APPROVED and not r.consumed_at for r in mine):
            continue
        pending = next((r for r in mine if r.is_open), None)
        if pending is None:
            pending = open_request(
                uow, policy_set, policy, case, actor, "transition", target, reason, now
            )
        ids.append(pending.id)
    return ids


def hold_action(
    uow: UnitOfWork,
    actor: Actor,
    case: Case,
    kind: str,
    to: str,
    held: dict[str, Any],
    now: datetime,
) -> list[int]:
    """Hold a rule action a policy guards until approved; returns the ids of the
    requests holding it (empty: go ahead). ``held`` is what to do once approved."""
    policies = applicable(uow, case, now, lambda s: s.for_action(kind, to))
    if not policies:
        return []
    requests = uow.approvals.for_case(case.id, with_votes=False)
    ids = []
    for policy_set, policy in policies:
        mine = [r for r in requests if r.policy == policy.key]
        if any(r.status == Status.APPROVED for r in mine):
            continue  # one approval covers every communication the policy guards
        pending = next((r for r in mine if r.is_open), None)
        if pending is None:
            pending = open_request(
                uow, policy_set, policy, case, actor, "action", f"{kind}:{to}", "", now
            )
        pending.payload = {**pending.payload, "held": [*pending.payload.get("held", []), held]}
        uow.approvals.save(pending)
        ids.append(pending.id)
    return ids


def open_named(
    uow: UnitOfWork,
    actor: Actor,
    case: Case,
    policy_key: str,
    rule: str,
    reason: str,
    now: datetime,
) -> ApprovalRequest:
    """A rule's request_approval: open (once) a request under the named policy."""
    for policy_set in uow.approvals.active_policy_sets(case.case_type):
        policy = policy_set.find(policy_key)
        if policy is None:
            continue
        existing = uow.approvals.for_case(case.id, target=rule, open_only=True)
        same = next((r for r in existing if r.policy == policy_key), None)
        return same or open_request(uow, policy_set, policy, case, actor, "rule", rule, reason, now)
    raise NotFound(f"no active approval policy {policy_key!r} for {case.case_type}")


def open_request(
    uow: UnitOfWork,
    policy_set: ApprovalPolicySet,
    policy: ApprovalPolicy,
    case: Case,
    requester: Actor,
    target_kind: str,
    target: str,
    reason: str,
    now: datetime,
) -> ApprovalRequest:
    """Insert a pending request, plan its first step's timers, record the event and
    the audit entry. The caller publishes the case's events."""
    manager = uow.approvals.manager_of(requester.user_id) if requester.user_id else None
    request = _new_request(policy_set, policy, case, requester, manager, target_kind, target, now)
    request.reason = reason
    uow.approvals.add(request)
    plan_step_timers(uow, policy, request, now)
    detail = {
        "approval_id": request.id,
        "policy": policy.key,
        "policy_version": policy_set.version,
        "target": f"{target_kind}:{target}",
    }
    case.events.append(
        Event("approval.requested", {**detail, "reason": reason}, key=f"approval:{request.id}")
    )
    audit(
        uow,
        requester,
        "approval.request",
        now,
        case=case,
        category="approval",
        reason=reason,
        detail=detail,
    )
    return request


def _new_request(
    policy_set: ApprovalPolicySet,
    policy: ApprovalPolicy,
    case: Case,
    requester: Actor,
    manager: str | None,
    target_kind: str,
    target: str,
    now: datetime,
) -> ApprovalRequest:
    return ApprovalRequest(
        id=0,
        case_id=case.id,
        policy_set=policy_set.key,
        policy_version=policy_set.version,
        policy=policy.key,
        target_kind=target_kind,
        target=target,
        status=Status.PENDING.value,
        step=0,
        level=0,
        requester_id=requester.user_id,
        requester_name=requester.username,
        requester_roles=requester.roles,
        requester_manager=manager,
        reason="",
        created_at=now,
        updated_at=now,
        step_started_at=now,
        case_type=case.case_type,
    )


def plan_step_timers(
    uow: UnitOfWork, policy: ApprovalPolicy, request: ApprovalRequest, now: datetime
) -> None:
    """The current step's reminder and its next escalation, counted from the moment
    the step (or the last escalation) began."""
    cancel_timers(uow, request, now)
    step = policy.steps[request.step]
    start = request.step_started_at
    plans = []
    if step.remind_after and request.level == 0:
        plans.append(("remind", start + timedelta(seconds=step.remind_after)))
    if step.escalate_after and request.level < policy.max_level(step):
        plans.append(("escalate", start + timedelta(seconds=step.escalate_after)))
    for action, due in plans:
        uow.timers.plan(
            {
                "case_id": request.case_id,
                "kind": TIMER_KIND,
                "key": f"approval:{request.id}:{request.step}:{request.level}:{action}:"
                f"{start.isoformat()}",
                "name": timer_name(request),
                "due_at": due,
                "payload": {
                    "approval_id": request.id,
                    "step": request.step,
                    "level": request.level,
                    "action": action,
                },
                "created_at": now,
            }
        )


def cancel_timers(uow: UnitOfWork, request: ApprovalRequest, now: datetime) -> None:
    uow.timers.cancel_for_case(request.case_id, (TIMER_KIND,), now, names=(timer_name(request),))


def timer_name(request: ApprovalRequest) -> str:
    return f"approval:{request.id}"
