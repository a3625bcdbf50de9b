"""Break-glass: emergency access to a case outside the actor's record rules.

The actor states a reason and gets a short, time-limited grant. The grant, every read
made under it and an alert (an ``access.break_glass`` case event for webhooks and an
in-app message to the administrators' inbox) are on record.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.errors import FieldProblem, InvalidInput
from careloop.domain.events import Event
from careloop.services.deps import Deps
from careloop.services.recording import audit, publish_events, store_notification

MIN_REASON = 10
MAX_MINUTES = 60
ALERT_INBOX = "role:administrator"


def break_glass(
    deps: Deps, actor: Actor, case_id: int, reason: str, minutes: int
) -> dict[str, Any]:
    actor.require(Action.BREAK_GLASS)
    problems = []
    if len(reason.strip()) < MIN_REASON:
        problems.append(
            FieldProblem("reason", f"explain the emergency in at least {MIN_REASON} characters")
        )
    if not 1 <= minutes <= MAX_MINUTES:
        problems.append(FieldProblem("minutes", f"between 1 and {MAX_MINUTES}"))
    if problems:
        raise InvalidInput(problems)
    now = deps.clock.now()
    expires_at = now + timedelta(minutes=minutes)
    with deps.uow() as uow:
        case = uow.cases.get(case_id)
        if case.organisation != actor.organisation:
            # Break-glass opens a case of one's own organisation, never another's.
            raise InvalidInput([FieldProblem("case_id", "not a case of your organisation")])
        grant_id = uow.access.add_grant(
            actor.user_id, actor.username, case.id, reason.strip(), now, expires_at
        )
        detail = {"grant_id": grant_id, "expires_at": expires_at.isoformat()}
        audit(
            uow,
            actor,
            "access.break_glass",
            now,
            case=case,
            category="security",
            reason=reason.strip(),
            detail=detail,
        )
        case.events.append(
            Event(
                "access.break_glass",
                {"user": actor.username, "reason": reason.strip(), **detail},
                key=f"break-glass:{grant_id}",
            )
        )
        publish_events(uow, case, now)
        store_notification(
            uow,
            case.id,
            f"break-glass:{grant_id}",
            "in_app",
            ALERT_INBOX,
            f"Break-glass access to case {case.id} by {actor.username}",
            f"Reason: {reason.strip()}\nUntil: {expires_at.isoformat()}",
            now,
        )
        uow.commit()
    return {"grant_id": grant_id, "case_id": case_id, "expires_at": expires_at}


def list_grants(deps: Deps, actor: Actor, limit: int = 100) -> list[dict[str, Any]]:
    actor.require(Action.AUDIT_READ)
    with deps.read_uow() as uow:
        return uow.access.grants(None, min(max(limit, 1), 500))
