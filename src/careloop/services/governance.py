"""Four-eyes change governance: a definition version takes effect only when a second
administrator approves the change request that proposes it.

A change request names one stored version of a workflow, rule set, routing table,
calendar set or approval policy; approving it activates that version in the same
transaction. Activating an earlier version than the active one is a rollback, under
the same rule.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.errors import (
    ChangeClosed,
    ChangeOutdated,
    FieldProblem,
    FourEyesRequired,
    InvalidInput,
    PermissionDenied,
)
from careloop.domain.governance import (
    WORKFLOW_KIND,
    ChangePurpose,
    ChangeStatus,
    check_open,
    check_proposable,
    check_reason,
    check_second_administrator,
    purpose_of,
    unified_diff,
    version_name,
)
from careloop.services.automation_registry import AutomationRegistry
from careloop.services.deps import Deps
from careloop.services.governance_queries import (
    active_version,
    check_kind,
    require_manage,
    source_text,
)
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit

_CATEGORY = "configuration"


# -- proposing -----------------------------------------------------------------------
def propose_change(
    deps: Deps,
    actor: Actor,
    kind: str,
    key: str,
    version: int,
    reason: str = "",
    rollback: bool = False,
) -> dict[str, Any]:
    """Open a change request to activate a stored version (``rollback``: an earlier one)."""
    require_manage(actor, kind)
    now = deps.clock.now()
    with deps.uow() as uow:
        change = open_change(uow, actor, kind, key, version, reason, now, rollback)
        uow.commit()
    return change


def submit_definition(
    deps: Deps, registry: AutomationRegistry, actor: Actor, text: str, source: str, reason: str
) -> dict[str, Any]:
    """Store a new version of any definition and propose activating it, in one transaction."""
    kind = registry.kind_of(text, source)
    require_manage(actor, kind)
    now = deps.clock.now()
    with deps.uow() as uow:
        if kind == WORKFLOW_KIND:
            workflow, new = deps.workflows.add_version(uow, text, source, now)
            key, version = workflow.key, workflow.version
        else:
            kind, key, version, new = registry.add_version(uow, text, source, actor.username, now)
        record_stored(uow, actor, now, kind, key, version, new)
        change = open_change(uow, actor, kind, key, version, reason, now)
        uow.commit()
    return {**change, "stored": new}


def record_stored(
    uow: UnitOfWork, actor: Actor, now: datetime, kind: str, key: str, version: int, new: bool
) -> None:
    action = "workflow.store" if kind == WORKFLOW_KIND else "automation.store"
    detail = {"kind": kind, "key": key, "version": version, "new": new}
    audit(uow, actor, action, now, category=_CATEGORY, detail=detail)


def open_change(
    uow: UnitOfWork,
    actor: Actor,
    kind: str,
    key: str,
    version: int,
    reason: str,
    now: datetime,
    rollback: bool = False,
) -> dict[str, Any]:
    """Record a proposed change in the caller's transaction (never commits)."""
    check_kind(kind)
    reason = check_reason(reason, required=rollback)
    text = source_text(uow, kind, key, version)
    active = active_version(uow, kind, key)
    check_proposable(kind, key, version, active)
    purpose = purpose_of(version, active)
    if rollback and purpose is not ChangePurpose.ROLLBACK:
        raise InvalidInput(
            [FieldProblem("version", f"a rollback needs a version before the active {active}")]
        )
    _check_not_pending(uow, kind, key, version)
    old_text = source_text(uow, kind, key, active) if active is not None else ""
    diff = unified_diff(
        old_text, text, version_name(kind, key, active), version_name(kind, key, version)
    )
    values = {
        "kind": kind,
        "key": key,
        "version": version,
        "from_version": active,
        "purpose": purpose.value,
        "diff": diff,
        **_proposed(actor, reason, now),
    }
    change_id = uow.governance.add_change(values)
    audit(
        uow,
        actor,
        "governance.change.propose",
        now,
        category=_CATEGORY,
        reason=reason,
        detail=_reference({"id": change_id, **values}),
    )
    return {"id": change_id, **values}


def _proposed(actor: Actor, reason: str, now: datetime) -> dict[str, Any]:
    return {
        "status": ChangeStatus.PROPOSED.value,
        "reason": reason,
        "proposed_by": actor.username,
        "proposed_by_id": actor.user_id,
        "proposed_at": now,
        "decided_by": None,
        "decided_by_id": None,
        "decided_at": None,
        "decision_reason": None,
    }


# -- deciding ------------------------------------------------------------------------
def approve_change(
    deps: Deps, registry: AutomationRegistry, actor: Actor, change_id: int, reason: str = ""
) -> dict[str, Any]:
    """A second administrator approves: the version becomes active in this transaction."""
    actor.require(Action.GOVERNANCE_APPROVE)
    reason = check_reason(reason, required=False)
    now = deps.clock.now()
    with deps.uow() as uow:
        change = uow.governance.change(change_id)
        check_open(change)
        try:
            check_second_administrator(change, actor.username, actor.user_id)
        except FourEyesRequired as refusal:
            # Nothing changes, but the attempt is on record with the change it concerns.
            audit(
                uow,
                actor,
                "governance.change.approve",
                now,
                category=_CATEGORY,
                outcome="denied",
                reason=refusal.detail,
                detail={**_reference(change), "code": refusal.code},
            )
            uow.commit()
            raise
        _check_current(uow, change)
        decided = _decide(uow, change, actor, ChangeStatus.APPROVED, reason, now)
        _activate(uow, deps, registry, change, actor.username, now)
        audit(
            uow,
            actor,
            "governance.change.approve",
            now,
            category=_CATEGORY,
            reason=reason,
            detail=_reference(change),
        )
        uow.commit()
    registry.invalidate()
    deps.workflows.forget_active()
    return decided


def _check_current(uow: UnitOfWork, change: dict[str, Any]) -> None:
    """The approver reviewed a diff against the version active at proposal time."""
    active = active_version(uow, change["kind"], change["key"])
    if active != change["from_version"]:
        raise ChangeOutdated(
            f"{change['kind']} {change['key']} is at version {active}, not "
            f"{change['from_version']} as when change {change['id']} was proposed; "
            "propose the change again to review its current diff"
        )


def reject_change(deps: Deps, actor: Actor, change_id: int, reason: str) -> dict[str, Any]:
    actor.require(Action.GOVERNANCE_APPROVE)
    reason = check_reason(reason, required=True)
    return _close(deps, actor, change_id, ChangeStatus.REJECTED, reason)


def withdraw_change(deps: Deps, actor: Actor, change_id: int, reason: str = "") -> dict[str, Any]:
    """The proposer takes back a change nobody has decided yet."""
    reason = check_reason(reason, required=False)
    # Refuse people who manage no definitions before saying whether the change exists.
    if not (actor.can(Action.WORKFLOW_MANAGE) or actor.can(Action.AUTOMATION_MANAGE)):
        actor.require(Action.AUTOMATION_MANAGE)
    with deps.read_uow() as uow:
        change = uow.governance.change(change_id)
    require_manage(actor, change["kind"])
    if change["proposed_by"] != actor.username:
        raise PermissionDenied(
            f"only {change['proposed_by']}, who proposed change {change_id}, may withdraw it"
        )
    return _close(deps, actor, change_id, ChangeStatus.WITHDRAWN, reason)


def _close(
    deps: Deps, actor: Actor, change_id: int, status: ChangeStatus, reason: str
) -> dict[str, Any]:
    now = deps.clock.now()
    with deps.uow() as uow:
        change = uow.governance.change(change_id)
        check_open(change)
        decided = _decide(uow, change, actor, status, reason, now)
        action = "reject" if status is ChangeStatus.REJECTED else "withdraw"
        audit(
            uow,
            actor,
            f"governance.change.{action}",
            now,
            category=_CATEGORY,
            reason=reason,
            detail=_reference(change),
        )
        uow.commit()
    return decided


def _decide(
    uow: UnitOfWork,
    change: dict[str, Any],
    actor: Actor,
    status: ChangeStatus,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    values = {
        "status": status.value,
        "decided_by": actor.username,
        "decided_by_id": actor.user_id,
        "decided_at": now,
        "decision_reason": reason,
    }
    # Conditional on still being proposed: of two concurrent decisions only one wins.
    if not uow.governance.decide(change["id"], values):
        raise ChangeClosed(f"change {change['id']} was decided by someone else just now")
    return {**change, **values}


def _activate(
    uow: UnitOfWork,
    deps: Deps,
    registry: AutomationRegistry,
    change: dict[str, Any],
    by: str,
    now: datetime,
) -> None:
    kind, key, version = change["kind"], change["key"], change["version"]
    if kind == WORKFLOW_KIND:
        workflow = deps.workflows.get(key, version)
        registry.check_workflow(workflow)
        uow.governance.activate_workflow(key, version, by, now, change["id"])
    else:
        registry.activate_in(uow, kind, key, version, by, now)


def _check_not_pending(uow: UnitOfWork, kind: str, key: str, version: int) -> None:
    for pending in uow.governance.changes(ChangeStatus.PROPOSED.value, kind, key):
        if pending["version"] == version:
            raise InvalidInput(
                [
                    FieldProblem(
                        "version",
                        f"change {pending['id']} already proposes {kind} {key} version "
                        f"{version}; approve, reject or withdraw it first",
                    )
                ]
            )


def _reference(change: dict[str, Any]) -> dict[str, Any]:
    return {
        "change_id": change["id"],
        "kind": change["kind"],
        "key": change["key"],
        "version": change["version"],
        "from_version": change["from_version"],
        "purpose": change["purpose"],
    }
