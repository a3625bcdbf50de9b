"""Helpers every write path shares: audit entries and outbox events, in the caller's
transaction. They never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from careloop.domain.access import Actor
from careloop.domain.audit import AuditRecord
from careloop.domain.case import Case
from careloop.domain.events import Event
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork


def audit(
    uow: UnitOfWork,
    actor: Actor,
    action: str,
    at: datetime,
    *,
    case: Case | None = None,
    category: str = "administrative",
    reason: str = "",
    detail: dict[str, Any] | None = None,
    outcome: str = "success",
) -> None:
    patient_ref = None
    if case is not None:
        patient_ref = str(case.data.get("patient", {}).get("mrn") or f"case:{case.id}")
    uow.audit.append(
        AuditRecord(
            occurred_at=at,
            actor_id=actor.user_id,
            actor_name=actor.username,
            action=action,
            outcome=outcome,
            case_id=case.id if case else None,
            patient_ref=patient_ref,
            data_category=category,
            source_address=actor.source_address,
            reason=reason,
            detail=detail or {},
        )
    )


def record_refusal(
    deps: Deps,
    actor: Actor,
    action: str,
    code: str,
    detail: str,
    case_id: int | None = None,
) -> None:
    """Audit a refused request in a transaction of its own: the refused one rolled back,
    and the refusal must be on record all the same."""
    with deps.uow() as uow:
        uow.audit.append(refusal(actor, action, code, detail, case_id, deps.clock.now()))
        uow.commit()


def refusal(
    actor: Actor, action: str, code: str, detail: str, case_id: int | None, at: datetime
) -> AuditRecord:
    """The audit record of a refused request."""
    return AuditRecord(
        occurred_at=at,
        actor_id=actor.user_id,
        actor_name=actor.username,
        action=action,
        outcome="denied",
        case_id=case_id,
        patient_ref=f"case:{case_id}" if case_id is not None else None,
        data_category="security",
        source_address=actor.source_address,
        reason="",
        detail={"code": code, "detail": detail[:500]},
    )


def publish_events(
    uow: UnitOfWork, case: Case, at: datetime, cause: dict[str, Any] | None = None
) -> None:
    """Move the case's recorded events into the outbox, keyed so a replay is a no-op.

    ``cause`` marks events an automation rule caused (its rule and chain depth), which
    bounds rule chains and explains the event later.
    """
    publish_each(uow, case, at, [(event, cause) for event in case.events])
    case.events.clear()


def publish_each(
    uow: UnitOfWork,
    case: Case,
    at: datetime,
    events: Sequence[tuple[Event, dict[str, Any] | None]],
) -> None:
    """Put ``events`` of ``case``, each with its own cause (see publish_events), into
    the outbox."""
    for index, (event, cause) in enumerate(events):
        payload = {
            "case_id": case.id,
            "case_type": case.case_type,
            "state": case.state,
            "version": case.version,
            **event.payload,
        }
        if cause is not None:
            payload["automation"] = cause
        unique = event.key or f"v{case.version}:{index}"
        key = f"case:{case.id}:{unique}:{event.type}"
        uow.outbox.add(case.id, event.type, payload, key, at)


def store_notification(
    work: UnitOfWork,
    case_id: int,
    key: str,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    now: datetime,
) -> bool:
    """Queue a message once per ``key``. In-app messages are delivered by being stored;
    e-mail and SMS wait in 'pending' for the messaging sender, visible until it sends."""
    return queue_notification(
        work, notification_values(case_id, key, channel, recipient, subject, body), now
    )


def notification_values(
    case_id: int, key: str, channel: str, recipient: str, subject: str, body: str
) -> dict[str, Any]:
    """A notification row but for its times: also what an approval holds back."""
    return {
        "case_id": case_id,
        "key": key[:200],
        "channel": channel,
        "recipient": recipient[:300],
        "subject": subject[:300],
        "body": body,
        "status": "unread" if channel == "in_app" else "pending",
        "attempts": 0,
    }


def queue_notification(work: UnitOfWork, values: dict[str, Any], now: datetime) -> bool:
    """Queue a prepared notification row (see ``notification_values``) once per key."""
    return work.webhooks.add_notification({**values, "next_attempt_at": now, "created_at": now})
