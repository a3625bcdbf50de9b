"""Escalation timers of pending approvals: remind the step's reviewers, then escalate
a level (the next reviewer group, then the fallback).

The timers are ordinary timer rows (kind 'approval') planned when a request opens or
moves on, and cancelled when it closes; the timers loop fires each once as a
``timer.fired`` event, and this relay subscriber acts on it in the relay's
transaction. A timer planned for a step or level the request has since left is
stale and does nothing, so a redelivered event never escalates twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from careloop.domain.approval_policy import (
    ApprovalPolicy,
    Reviewer,
    Status,
)
from careloop.domain.approvals import (
    ApprovalRequest,
)
from careloop.domain.case import Case
from careloop.domain.events import Event
from careloop.domain.referral import lookup
from careloop.engine.actions import automation_actor
from careloop.engine.outbox import Handler
from careloop.services.approval_gate import TIMER_KIND, plan_step_timers
from careloop.services.approvals import policy_of
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit, publish_events, store_notification


def approval_timers(deps: Deps) -> Handler:
    def handle(work: UnitOfWork, event: Mapping[str, Any]) -> None:
        payload = event["payload"]
        if event["event_type"] == "timer.fired" and payload.get("kind") == TIMER_KIND:
            act_on_timer(work, deps, event, deps.clock.now())

    return handle


def act_on_timer(work: UnitOfWork, deps: Deps, event: Mapping[str, Any], now: datetime) -> None:
    payload: Mapping[str, Any] = event["payload"]
    request = work.approvals.get(int(payload["approval_id"]), for_update=True)
    if (
        request.status != Status.PENDING
        or request.step != payload.get("step")
        or request.level != payload.get("level")
    ):
        return  # the request moved on since the timer was planned
    policy = policy_of(work, request)
    case = work.cases.get(request.case_id)
    step = policy.steps[request.step]
    action = str(payload.get("action"))
    actor = automation_actor(f"approval.{action}")
    if action == "remind":
        reviewers = tuple(r for group in step.groups for r in group.reviewers)
        subject = f"Reminder: approval #{request.id} for referral #{case.id} is waiting"
    else:
        reviewers = _escalate(work, policy, request, case, now)
        subject = f"Escalated: approval #{request.id} for referral #{case.id} needs you"
    recipients = sorted({r for r in (_recipient(x, request, case) for x in reviewers) if r})
    for recipient in recipients:
        store_notification(
            work,
            case.id,
            f"{event['idempotency_key']}:{recipient}",
            "in_app",
            recipient,
            subject,
            f"Step {step.name!r} of {policy.title!r} has waited since "
            f"{request.created_at:%Y-%m-%d %H:%M} UTC.",
            now,
        )
    audit(
        work,
        actor,
        f"approval.{action}",
        now,
        case=case,
        category="approval",
        detail={
            "approval_id": request.id,
            "step": step.name,
            "level": request.level,
            "notified": recipients,
        },
    )
    publish_events(work, case, now, {"depth": 1, "rule": f"approval.{action}"})


def _escalate(
    work: UnitOfWork, policy: ApprovalPolicy, request: ApprovalRequest, case: Case, now: datetime
) -> tuple[Reviewer, ...]:
    """Raise the request a level; returns the reviewers the new level brings in."""
    step = policy.steps[request.step]
    before = policy.authority(step, request.level, False)
    request.level += 1
    request.step_started_at = request.updated_at = now
    work.approvals.save(request)
    plan_step_timers(work, policy, request, now)
    case.events.append(
        Event(
            "approval.escalated",
            {"approval_id": request.id, "policy": request.policy, "level": request.level},
            key=f"approval:{request.id}:escalated:{request.step}:{request.level}",
        )
    )
    return tuple(r for r in policy.authority(step, request.level, False) if r not in before)


def _recipient(reviewer: Reviewer, request: ApprovalRequest, case: Case) -> str | None:
    if reviewer.kind == "role":
        return f"role:{reviewer.value}"
    if reviewer.kind == "team":
        return f"team:{reviewer.value}"
    if reviewer.kind == "user":
        return f"user:{reviewer.value}"
    if reviewer.kind == "user_field":
        named = lookup(case.data, reviewer.value)
        return f"user:{named}" if named else None
    return f"user:{request.requester_manager}" if request.requester_manager else None
