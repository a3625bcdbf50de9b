"""Case use cases: create, transition, assign, change fields. The one write path.

Each use case checks the actor's permission and the workflow, applies the change with
optimistic concurrency and writes the new state, the status history, the audit entry
and the outbox events in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.case import Case
from careloop.domain.errors import IdempotencyConflict, StaleVersion, TransitionNotAllowed
from careloop.domain.events import Event
from careloop.domain.referral import CASE_TYPE
from careloop.services.approval_gate import check_transition_gate
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.reach import load_case
from careloop.services.recording import audit, publish_events
from careloop.services.referral_input import ReferralChanges, ReferralIn, merge_changes


def create_referral(
    deps: Deps, actor: Actor, referral: ReferralIn, idempotency_key: str | None = None
) -> tuple[Case, bool]:
    """Create a referral; returns (case, created). A replayed key returns the first case."""
    actor.require(Action.CASE_CREATE)
    data = referral.model_dump(mode="json", exclude_none=True)
    request_hash = _hash_request(data) if idempotency_key else ""
    now = deps.clock.now()
    workflow = deps.workflows.latest(CASE_TYPE)
    with deps.uow() as uow:
        if idempotency_key:
            previous = uow.idempotency.find(actor.user_id, idempotency_key)
            if previous is not None:
                if previous["request_hash"] != request_hash:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used with a different body"
                    )
                return uow.cases.get(previous["case_id"]), False
        case = Case(
            id=0,
            case_type=CASE_TYPE,
            workflow_key=workflow.key,
            workflow_version=workflow.version,
            state=workflow.initial,
            version=1,
            data=data,
            created_at=now,
            updated_at=now,
            state_entered_at=now,
            organisation=actor.organisation,
        )
        uow.cases.add(case, actor.user_id, actor.username)
        case.events.append(
            Event("case.created", {"channel": data.get("channel", "api"), "urgency": case.urgency})
        )
        audit(uow, actor, "case.create", now, case=case, category="demographics")
        publish_events(uow, case, now)
        if idempotency_key:
            uow.idempotency.add(actor.user_id, idempotency_key, request_hash, case.id, now)
        uow.commit()
    return case, True


def transition_case(
    deps: Deps,
    actor: Actor,
    case_id: int,
    transition: str,
    expected_version: int,
    reason: str | None = None,
    changes: ReferralChanges | None = None,
) -> Case:
    actor.require(Action.CASE_TRANSITION)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = _load_current(load_case(uow, actor, case_id, now), expected_version)
        if changes is not None:
            actor.require(Action.CASE_UPDATE)
            _apply_changes(case, changes, now)
        apply_transition(uow, deps, actor, case, transition, reason, now)
        publish_events(uow, case, now)
        uow.commit()
    return case


def apply_transition(
    uow: UnitOfWork,
    deps: Deps,
    actor: Actor,
    case: Case,
    transition: str,
    reason: str | None,
    now: datetime,
) -> None:
    """Move ``case`` (as loaded in ``uow``) and write state, history and audit; the caller
    publishes the case's events and commits."""
    expected_version = case.version
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    previous = case.state
    check_transition_gate(uow, deps, actor, case, transition, now, reason)
    case.transition(workflow, transition, actor, reason, now)
    uow.cases.save(case, expected_version)
    uow.cases.add_history(
        case.id, previous, case.state, transition, actor.user_id, actor.username, reason or "", now
    )
    audit(
        uow,
        actor,
        "case.transition",
        now,
        case=case,
        reason=reason or "",
        detail={"transition": transition, "from": previous, "to": case.state},
    )


def update_case(
    deps: Deps, actor: Actor, case_id: int, expected_version: int, changes: ReferralChanges
) -> Case:
    actor.require(Action.CASE_UPDATE)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = _load_current(load_case(uow, actor, case_id, now), expected_version)
        apply_update(uow, deps, actor, case, changes, now)
        publish_events(uow, case, now)
        uow.commit()
    return case


def apply_update(
    uow: UnitOfWork,
    deps: Deps,
    actor: Actor,
    case: Case,
    changes: ReferralChanges,
    now: datetime,
    reason: str = "",
) -> list[str]:
    """Change fields of an open case in ``uow``; returns the changed field names."""
    expected_version = case.version
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    if workflow.states[case.state].terminal:
        raise TransitionNotAllowed(f"case {case.id} is {case.state!r} and cannot change")
    changed = _apply_changes(case, changes, now)
    uow.cases.save(case, expected_version)
    audit(
        uow,
        actor,
        "case.update",
        now,
        case=case,
        category="demographics",
        reason=reason,
        detail={"fields": changed},
    )
    return changed


def assign_case(
    deps: Deps, actor: Actor, case_id: int, expected_version: int, assignee: str | None
) -> Case:
    actor.require(Action.CASE_ASSIGN)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = _load_current(load_case(uow, actor, case_id, now), expected_version)
        apply_assignment(uow, actor, case, assignee, now)
        publish_events(uow, case, now)
        uow.commit()
    return case


def apply_assignment(
    uow: UnitOfWork, actor: Actor, case: Case, assignee: str | None, now: datetime, reason: str = ""
) -> None:
    expected_version = case.version
    previous = case.assignee
    case.assign(assignee, now)
    uow.cases.save(case, expected_version)
    audit(
        uow,
        actor,
        "case.assign",
        now,
        case=case,
        reason=reason,
        detail={"from": previous, "to": assignee},
    )


def _load_current(case: Case, expected_version: int) -> Case:
    # Checked before any work so a stale request fails fast; save() re-checks atomically.
    if case.version != expected_version:
        raise StaleVersion(expected_version, case.version)
    return case


def _apply_changes(case: Case, changes: ReferralChanges, now: Any) -> list[str]:
    merged = merge_changes(case.data, changes).model_dump(mode="json", exclude_none=True)
    changed = sorted(k for k in set(merged) | set(case.data) if merged.get(k) != case.data.get(k))
    before = {name: case.data.get(name) for name in changed}
    case.data = merged
    case.updated_at = now
    if changed:
        # The old values let field-change rules test what a field was, not only what it is.
        case.events.append(Event("case.updated", {"fields": changed, "before": before}))
    return changed


def _hash_request(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
