"""Use cases around the automation engine: definitions, subscriptions, dead letters,
inbound sources, specialists' capacity and a case's automation view."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.conditions import ConditionCompiler, ConditionError
from careloop.domain.errors import FieldProblem, InvalidInput
from careloop.domain.referral import FIELDS, SPECIALTIES
from careloop.services import governance
from careloop.services.automation_registry import AutomationRegistry
from careloop.services.deps import Deps
from careloop.services.reach import load_case
from careloop.services.recording import audit

_EVENT_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
MAX_EVENT_TYPES = 50


@dataclass(frozen=True)
class WebhookTools:
    """Adapter functions the webhook use cases need."""

    new_secret: Callable[[], str]
    check_target: Callable[[str, bool], None]  # raises a CareloopError when refused
    compile_condition: ConditionCompiler
    allow_private: bool = False


# -- definitions ---------------------------------------------------------------------
def store_definition(
    deps: Deps,
    registry: AutomationRegistry,
    actor: Actor,
    text: str,
    source: str,
    activate: bool,
) -> dict[str, Any]:
    """Store a version; ``activate`` opens a change request for it in the same
    transaction, which takes effect once a second administrator approves it."""
    actor.require(Action.AUTOMATION_MANAGE)
    now = deps.clock.now()
    change = None
    with deps.uow() as uow:
        kind, key, version, new = registry.add_version(uow, text, source, actor.username, now)
        governance.record_stored(uow, actor, now, kind, key, version, new)
        if activate:
            change = governance.open_change(uow, actor, kind, key, version, "", now)
        uow.commit()
    stored = {"kind": kind, "key": key, "version": version, "stored": new, "active": False}
    return {**stored, **_pending(change)} if change else stored


def activate_definition(
    deps: Deps, actor: Actor, kind: str, key: str, version: int, reason: str = ""
) -> dict[str, Any]:
    """Open a change request to activate a stored version (four-eyes: it takes effect
    when a second administrator approves it)."""
    actor.require(Action.AUTOMATION_MANAGE)
    change = governance.propose_change(deps, actor, kind, key, version, reason)
    return {"kind": kind, "key": key, "version": version, "active": False, **_pending(change)}


def _pending(change: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "change_id": change["id"],
        "change_status": change["status"],
        "detail": f"change {change['id']} is proposed; it takes effect when a second "
        "administrator approves it",
    }


# -- webhook subscriptions --------------------------------------------------------------
def create_subscription(
    deps: Deps, tools: WebhookTools, actor: Actor, values: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """Returns the subscription and its signing secret, shown this once."""
    actor.require(Action.WEBHOOK_MANAGE)
    clean = _check_subscription(tools, values)
    secret = tools.new_secret()
    now = deps.clock.now()
    with deps.uow() as uow:
        subscription_id = uow.webhooks.add_subscription(
            {
                **clean,
                "secrets": [secret],
                "active": True,
                "disabled_reason": None,
                "created_at": now,
                "updated_at": now,
            }
        )
        audit(
            uow,
            actor,
            "webhook.subscription.create",
            now,
            category="configuration",
            detail={"subscription_id": subscription_id, "url": clean["url"]},
        )
        uow.commit()
        row = uow.webhooks.subscription(subscription_id)
    return row, secret


def _check_subscription(tools: WebhookTools, values: Mapping[str, Any]) -> dict[str, Any]:
    problems = []
    name = str(values.get("name", ""))
    if not _NAME.match(name):
        problems.append(FieldProblem("name", "must be a lower-case name such as 'ehr-updates'"))
    url = str(values.get("url", ""))
    try:
        tools.check_target(url, tools.allow_private)
    except Exception as error:  # the adapter names the reason: scheme, private address...
        problems.append(FieldProblem("url", str(error)))
    event_types = values.get("event_types")
    if (
        not isinstance(event_types, list)
        or not 1 <= len(event_types) <= MAX_EVENT_TYPES
        or not all(isinstance(t, str) and _EVENT_PATTERN.match(t) for t in event_types)
    ):
        problems.append(
            FieldProblem("event_types", "a list of event types such as 'case.*' or 'case.created'")
        )
    flt = values.get("filter")
    if flt:
        try:
            tools.compile_condition(str(flt), FIELDS)
        except ConditionError as error:
            problems.append(FieldProblem("filter", f"invalid CEL filter: {error}"))
    if problems:
        raise InvalidInput(problems)
    return {"name": name, "url": url, "event_types": event_types, "filter": flt or None}


def rotate_secret(deps: Deps, tools: WebhookTools, actor: Actor, subscription_id: int) -> str:
    """Add a new secret; deliveries carry both signatures until the rotation finishes."""
    actor.require(Action.WEBHOOK_MANAGE)
    secret = tools.new_secret()
    now = deps.clock.now()
    with deps.uow() as uow:
        row = uow.webhooks.subscription(subscription_id, with_secrets=True)
        uow.webhooks.update_subscription(
            subscription_id, {"secrets": [secret, *row["secrets"]][:2], "updated_at": now}
        )
        audit(
            uow,
            actor,
            "webhook.secret.rotate",
            now,
            category="configuration",
            detail={"subscription_id": subscription_id},
        )
        uow.commit()
    return secret


def finish_rotation(deps: Deps, actor: Actor, subscription_id: int) -> None:
    actor.require(Action.WEBHOOK_MANAGE)
    now = deps.clock.now()
    with deps.uow() as uow:
        row = uow.webhooks.subscription(subscription_id, with_secrets=True)
        uow.webhooks.update_subscription(
            subscription_id, {"secrets": row["secrets"][:1], "updated_at": now}
        )
        audit(
            uow,
            actor,
            "webhook.secret.retire",
            now,
            category="configuration",
            detail={"subscription_id": subscription_id},
        )
        uow.commit()


def set_subscription_active(deps: Deps, actor: Actor, subscription_id: int, active: bool) -> None:
    actor.require(Action.WEBHOOK_MANAGE)
    now = deps.clock.now()
    with deps.uow() as uow:
        uow.webhooks.update_subscription(
            subscription_id, {"active": active, "disabled_reason": None, "updated_at": now}
        )
        audit(
            uow,
            actor,
            "webhook.subscription." + ("enable" if active else "disable"),
            now,
            category="configuration",
            detail={"subscription_id": subscription_id},
        )
        uow.commit()


def list_subscriptions(deps: Deps, actor: Actor) -> list[dict[str, Any]]:
    actor.require(Action.WEBHOOK_MANAGE)
    with deps.read_uow() as uow:
        return uow.webhooks.subscriptions()


def list_deliveries(
    deps: Deps, actor: Actor, subscription_id: int | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    actor.require(Action.WEBHOOK_MANAGE)
    with deps.read_uow() as uow:
        if subscription_id is not None:
            uow.webhooks.subscription(subscription_id)  # 404 for an unknown one
        rows = uow.webhooks.deliveries(subscription_id, status, min(max(limit, 1), 500))
        for row in rows:
            row["attempt_log"] = uow.webhooks.attempts(row["id"])
    return rows


# -- dead letters -------------------------------------------------------------------------
def list_dead_letters(deps: Deps, actor: Actor, limit: int = 100) -> dict[str, Any]:
    actor.require(Action.AUTOMATION_MANAGE)
    with deps.read_uow() as uow:
        events = uow.outbox.dead_letters(limit)
        deliveries = uow.webhooks.deliveries(None, "dead", limit)
    return {"events": events, "deliveries": deliveries}


def replay_dead_letters(deps: Deps, actor: Actor, kind: str, ids: list[int] | None) -> int:
    """kind 'events' (the outbox) or 'deliveries' (webhooks); ids None replays all."""
    actor.require(Action.AUTOMATION_MANAGE)
    if kind not in ("events", "deliveries"):
        raise InvalidInput([FieldProblem("kind", "must be 'events' or 'deliveries'")])
    now = deps.clock.now()
    with deps.uow() as uow:
        if kind == "events":
            count = uow.outbox.replay(ids, now)
        else:
            count = uow.webhooks.replay_dead(ids, now)
        audit(
            uow,
            actor,
            "automation.dead_letters.replay",
            now,
            category="configuration",
            detail={"kind": kind, "ids": ids, "replayed": count},
        )
        uow.commit()
    return count


# -- inbound sources -------------------------------------------------------------------------
def put_inbound_source(
    deps: Deps, tools: WebhookTools, actor: Actor, key: str, values: Mapping[str, Any]
) -> str:
    """Create or re-key an inbound source; returns its new secret, shown this once."""
    actor.require(Action.WEBHOOK_MANAGE)
    problems = []
    if not _NAME.match(key):
        problems.append(FieldProblem("key", "must be a lower-case name such as 'payer-portal'"))
    events = values.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and _NAME.match(e.replace(".", "-")) for e in events)
    ):
        problems.append(FieldProblem("events", "a non-empty list of accepted event names"))
    for name in ("case_field", "event_field"):
        if not isinstance(values.get(name), str) or not values.get(name):
            problems.append(
                FieldProblem(name, "the dotted path in the payload, e.g. 'data.case_id'")
            )
    if problems:
        raise InvalidInput(problems)
    secret = tools.new_secret()
    now = deps.clock.now()
    with deps.uow() as uow:
        uow.webhooks.put_source(
            {
                "key": key,
                "secrets": [secret],
                "case_field": values["case_field"],
                "event_field": values["event_field"],
                "events": events,
                "active": True,
                "created_at": now,
            }
        )
        audit(
            uow, actor, "webhook.source.put", now, category="configuration", detail={"source": key}
        )
        uow.commit()
    return secret


# -- specialists' capacity ------------------------------------------------------------------
def put_specialist(deps: Deps, actor: Actor, name: str, values: Mapping[str, Any]) -> None:
    actor.require(Action.AUTOMATION_MANAGE)
    problems = []
    if values.get("specialty") not in SPECIALTIES:
        problems.append(FieldProblem("specialty", f"must be one of {list(SPECIALTIES)}"))
    for number in ("max_workload", "open_slots"):
        value = values.get(number)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100_000:
            problems.append(FieldProblem(number, "must be an integer from 0 to 100000"))
    clinics = values.get("clinics")
    if not isinstance(clinics, list) or not all(isinstance(c, str) and c for c in clinics):
        problems.append(FieldProblem("clinics", "a list of clinic names"))
    if problems:
        raise InvalidInput(problems)
    now = deps.clock.now()
    with deps.uow() as uow:
        uow.automation.put_specialist(
            {
                "name": name,
                "display_name": str(values.get("display_name") or name),
                "specialty": values["specialty"],
                "clinics": clinics,
                "max_workload": values["max_workload"],
                "open_slots": values["open_slots"],
                "available": bool(values.get("available", True)),
                "updated_at": now,
            }
        )
        audit(
            uow,
            actor,
            "specialist.capacity.put",
            now,
            category="configuration",
            detail={"specialist": name, "open_slots": values["open_slots"]},
        )
        uow.commit()


# -- one case's automation ---------------------------------------------------------------------
def case_automation(deps: Deps, actor: Actor, case_id: int) -> dict[str, Any]:
    """Why things happened to a case: rule runs, timers, links, notifications."""
    actor.require(Action.CASE_READ)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = load_case(uow, actor, case_id, now)
        view = {
            "runs": uow.automation.runs_for_case(case_id),
            "timers": uow.timers.for_case(case_id),
            "links": uow.automation.links(case_id),
            "notifications": uow.webhooks.notifications(case_id),
        }
        audit(uow, actor, "case.automation.read", now, case=case, category="administrative")
        uow.commit()
    return view
