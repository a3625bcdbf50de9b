"""Out-of-office windows: from..until, optionally to a delegate who decides approvals
on the delegator's behalf meanwhile (recorded as such on every decision)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.approval_policy import (
    Person,
    deciding_role,
)
from careloop.domain.errors import FieldProblem, InvalidInput, NotFound
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit

MAX_REASON = 2000


def add_delegation(
    deps: Deps,
    actor: Actor,
    delegate: str | None,
    starts_at: datetime,
    ends_at: datetime,
    reason: str = "",
) -> dict[str, Any]:
    """The actor is out of office from ``starts_at`` until ``ends_at``; ``delegate``
    (or nobody) decides their approvals meanwhile."""
    actor.require(Action.DELEGATION_MANAGE)
    now = deps.clock.now()
    problems = _check_window(starts_at, ends_at, now)
    if delegate is not None and delegate == actor.username:
        problems.append(FieldProblem("delegate", "you cannot delegate to yourself"))
    if len(reason) > MAX_REASON:
        problems.append(FieldProblem("reason", f"at most {MAX_REASON} characters"))
    if problems:
        raise InvalidInput(problems)
    with deps.uow() as uow:
        person = _delegate_person(uow, delegate)
        text = reason.strip()
        values: dict[str, Any] = {
            "delegator_id": actor.user_id,
            "delegator_name": actor.username,
            "delegate_id": person.user_id if person else None,
            "delegate_name": person.username if person else None,
            "starts_at": starts_at,
            "ends_at": ends_at,
            "reason": text,
            "created_at": now,
            "created_by": actor.username,
            "revoked_at": None,
        }
        values["id"] = uow.approvals.add_delegation(values)
        audit(
            uow,
            actor,
            "approval.delegate",
            now,
            category="approval",
            reason=text,
            detail={k: _plain(values[k]) for k in ("id", "delegate_name", "starts_at", "ends_at")},
        )
        uow.commit()
    return present_delegation(values)


def _delegate_person(uow: UnitOfWork, delegate: str | None) -> Person | None:
    if delegate is None:
        return None
    person = uow.approvals.person(delegate)
    if person is None:
        raise InvalidInput([FieldProblem("delegate", f"no active user {delegate!r}")])
    if not deciding_role(person.roles):
        raise InvalidInput(
            [FieldProblem("delegate", f"{delegate!r} has no role that may decide approvals")]
        )
    return person


def _check_window(starts_at: datetime, ends_at: datetime, now: datetime) -> list[FieldProblem]:
    problems = [
        FieldProblem(name, "must include a time zone")
        for name, value in (("starts_at", starts_at), ("ends_at", ends_at))
        if value.tzinfo is None
    ]
    if problems:
        return problems
    if ends_at <= starts_at:
        problems.append(FieldProblem("ends_at", "must be after starts_at"))
    elif ends_at <= now:
        problems.append(FieldProblem("ends_at", "is already in the past"))
    return problems


def list_delegations(deps: Deps, actor: Actor) -> list[dict[str, Any]]:
    """Delegations the actor gave or received."""
    actor.require(Action.DELEGATION_MANAGE)
    with deps.read_uow() as uow:
        return [present_delegation(d) for d in uow.approvals.delegations(actor.user_id)]


def revoke_delegation(deps: Deps, actor: Actor, delegation_id: int) -> dict[str, Any]:
    """End a delegation early; only its delegator (or a user administrator) may."""
    actor.require(Action.DELEGATION_MANAGE)
    now = deps.clock.now()
    with deps.uow() as uow:
        row = uow.approvals.delegation(delegation_id)
        if row["delegator_id"] != actor.user_id and not actor.can(Action.USER_MANAGE):
            raise NotFound(f"delegation {delegation_id} does not exist")
        if row["revoked_at"] is None:
            uow.approvals.revoke_delegation(delegation_id, now)
            row["revoked_at"] = now
            audit(
                uow,
                actor,
                "approval.delegation_revoke",
                now,
                category="approval",
                detail={"id": delegation_id},
            )
            uow.commit()
    return present_delegation(row)


def present_delegation(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "delegator": row["delegator_name"],
        "delegate": row["delegate_name"],
        "starts_at": _plain(row["starts_at"]),
        "ends_at": _plain(row["ends_at"]),
        "reason": row["reason"],
        "revoked_at": _plain(row["revoked_at"]),
    }


def _plain(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value
