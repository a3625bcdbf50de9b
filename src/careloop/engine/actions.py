"""Rule actions (Odoo's "server actions"): each one goes through the same write path
as a person's change, inside the relay's transaction, so it commits exactly once with
the event that caused it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from careloop.domain.access import ROLE_NAMES, Actor
from careloop.domain.calendar import add_business_days, add_business_time
from careloop.domain.case import Case
from careloop.domain.errors import ApprovalRequired
from careloop.domain.events import Event
from careloop.domain.referral import lookup
from careloop.domain.routing import LEAST_LOADED_SPECIALIST, SpecialistLoad, pick_specialist, route
from careloop.domain.rules import Offset, Rule, RuleAction, RuleSet, render
from careloop.domain.rules_builder import parse_offset
from careloop.services.approval_gate import hold_action, open_named, open_requests
from careloop.services.attachments import record_task, task_values
from careloop.services.automation_registry import AutomationConfig
from careloop.services.cases import apply_assignment, apply_transition, apply_update
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import notification_values, store_notification
from careloop.services.referral_input import PLAIN_TYPES, ReferralChanges, validate_changes

Result = dict[str, Any]
ALL_ROLES = frozenset(ROLE_NAMES)


@functools.lru_cache(maxsize=4096)
def automation_actor(rule_key: str) -> Actor:
    """Rules act with every role: the rule set itself was reviewed and activated by an
    administrator, and the audit trail names the rule that acted. One per rule key (an
    Actor is frozen): every run of a rule acts as the same one."""
    return Actor(user_id=0, username=f"automation:{rule_key}"[:150], roles=ALL_ROLES)


@dataclass
class ActionContext:
    work: UnitOfWork
    deps: Deps
    config: AutomationConfig
    ruleset: RuleSet
    rule: Rule
    case: Case
    event: Mapping[str, Any]
    actor: Actor
    now: datetime
    run_key: str  # unique per (event, rule): the idempotency key of every effect
    enqueue_webhook: Callable[[UnitOfWork, str, str, Mapping[str, Any], datetime], int]


def run_actions(
    context: ActionContext, actions: tuple[RuleAction, ...], prefix: str = ""
) -> list[Result]:
    results = []
    for index, action in enumerate(actions):
        key = f"{prefix}{index}"
        if action.kind == "run":
            results.append(
                {"action": "run", "results": run_actions(context, action.children, f"{key}.")}
            )
            continue
        result = _RUNNERS[action.kind](context, action.params, key)
        results.append({"action": action.kind, **result})
    return results


def _set_field(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    path = str(params["field"])
    changes = _changes_at(path, params["value"])
    changed = apply_update(
        context.work,
        context.deps,
        context.actor,
        context.case,
        changes,
        context.now,
        reason=f"rule {context.rule.key}",
    )
    return {"field": path, "value": params["value"], "changed": bool(changed)}


def _changes_at(path: str, value: object) -> ReferralChanges:
    if type(value) in PLAIN_TYPES:
        return _plain_changes_at(path, value)
    return _validated_changes_at(path, value)


def _validated_changes_at(path: str, value: object) -> ReferralChanges:
    head, _, rest = path.partition(".")
    return validate_changes({head: {rest: value}} if rest else {head: value})


# A rule's constant plain value, validated once (callers only read the changes).
_plain_changes_at = functools.lru_cache(maxsize=1024, typed=True)(_validated_changes_at)


def _assign(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    if "user" in params:
        user = str(params["user"])
        if context.case.assignee != user:
            apply_assignment(context.work, context.actor, context.case, user, context.now)
        return {"assignee": user}
    table = context.config.routing[str(params["routing"])]
    decision = route(table, context.case.data)
    result: Result = {
        "table": table.key,
        "table_version": table.version,
        "row": decision.row_index,
        "queue": decision.queue,
        "team": decision.team,
    }
    placement = {"queue": decision.queue, "team": decision.team}
    if any(context.case.data.get(k) != v for k, v in placement.items() if v is not None):
        changes = validate_changes({k: v for k, v in placement.items() if v is not None})
        apply_update(
            context.work,
            context.deps,
            context.actor,
            context.case,
            changes,
            context.now,
            reason=f"routing {table.key} row {decision.row_index + 1}",
        )
    if decision.assign == LEAST_LOADED_SPECIALIST:
        chosen = _least_loaded(context)
        result["specialist"] = chosen
        if chosen is not None and context.case.assignee != chosen:
            apply_assignment(context.work, context.actor, context.case, chosen, context.now)
    return result


def _least_loaded(context: ActionContext) -> str | None:
    specialty = str(context.case.data.get("specialty", ""))
    rows = context.work.automation.specialists(specialty)
    workflow = context.deps.workflows.get(context.case.workflow_key, context.case.workflow_version)
    open_states = [name for name, state in workflow.states.items() if not state.terminal]
    workload = context.work.automation.open_workload([r["name"] for r in rows], open_states)
    loads = [
        SpecialistLoad(
            name=r["name"],
            specialty=r["specialty"],
            clinics=frozenset(r["clinics"]),
            open_slots=int(r["open_slots"]),
            open_workload=workload.get(r["name"], 0),
            max_workload=max(1, int(r["max_workload"])),
            available=bool(r["available"]),
        )
        for r in rows
    ]
    chosen = pick_specialist(loads, specialty, str(context.case.data.get("clinic") or "") or None)
    return chosen.name if chosen else None


def _transition(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    reason = str(params.get("reason") or f"automation rule {context.rule.key}")
    previous = context.case.state
    try:
        apply_transition(
            context.work,
            context.deps,
            context.actor,
            context.case,
            str(params["name"]),
            reason,
            context.now,
        )
    except ApprovalRequired as held:
        # The gate wrote nothing; the relay's transaction goes on, so the request is
        # opened here and the transition runs once it is approved.
        ids = open_requests(
            context.work, context.actor, context.case, held.target, reason, context.now
        )
        return {"transition": params["name"], "held_for_approval": ids}
    return {"transition": params["name"], "from": previous, "to": context.case.state}


def _create_task(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    due_at = None
    if params.get("due") is not None:
        offset = parse_offset(params["due"])
        assert offset is not None, "the builder checked the offset"
        due_at = offset_from(context.config, context.case, context.now, offset)
    template = str(params["title"])
    title = render(template, TemplateValues(context.case)) if "{{" in template else template
    values = task_values(title, context.actor, context.now, params.get("assignee"), due_at)
    task_id = record_task(context.work, context.actor, context.case, values, context.now)
    return {"task_id": task_id, "due_at": due_at.isoformat() if due_at else None}


def _escalate(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    result: Result = {}
    priority = params.get("priority")
    if priority is not None and context.case.data.get("priority") != priority:
        apply_update(
            context.work,
            context.deps,
            context.actor,
            context.case,
            validate_changes({"priority": priority}),
            context.now,
            reason="escalation",
        )
        result["priority"] = priority
    target = params.get("reassign_to")
    if target is not None:
        user = (
            supervisor_of(context.ruleset, context.case) if target == "supervisor" else str(target)
        )
        if user and context.case.assignee != user:
            apply_assignment(
                context.work, context.actor, context.case, user, context.now, "escalation"
            )
        result["reassigned_to"] = user
    role = params.get("notify_role")
    if role is not None:
        result["notified"] = notify(
            context,
            "in_app",
            f"role:{role}",
            f"Escalation: referral #{context.case.id}",
            f"Rule {context.rule.title} escalated referral #{context.case.id}.",
            key,
        )
    return result


def _notify(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    template = context.ruleset.templates[str(params["template"])]
    values = TemplateValues(context.case)
    channel = str(params["channel"])
    recipient = resolve_recipient(context, str(params["to"]), channel)
    subject, body = render(template.subject, values), render(template.body, values)
    if recipient is None:
        return {"channel": channel, "recipient": None, "skipped": "no address for recipient"}
    message = notification_values(
        context.case.id, f"{context.run_key}:{key}:{recipient}", channel, recipient, subject, body
    )
    to = str(params["to"])
    held = hold_action(
        context.work, context.actor, context.case, "notify", to, message, context.now
    )
    if held:
        return {"channel": channel, "recipient": recipient, "held_for_approval": held}
    created = notify(context, channel, recipient, subject, body, key)
    return {"channel": channel, "recipient": recipient, "created": created}


def notify(
    context: ActionContext, channel: str, recipient: str, subject: str, body: str, key: str
) -> bool:
    return store_notification(
        context.work,
        context.case.id,
        f"{context.run_key}:{key}:{recipient}",
        channel,
        recipient,
        subject,
        body,
        context.now,
    )


def resolve_recipient(context: ActionContext, to: str, channel: str) -> str | None:
    case = context.case
    if to == "patient":
        field = {"email": "patient.email", "sms": "patient.phone"}.get(channel, "patient.mrn")
        value = lookup(case.data, field)
        return str(value) if value else None
    if to == "assignee":
        return f"user:{case.assignee}" if case.assignee else None
    if to == "supervisor":
        user = supervisor_of(context.ruleset, case)
        return f"user:{user}" if user else None
    return to  # role:<role> or user:<name>, checked by the builder


def supervisor_of(ruleset: RuleSet, case: Case) -> str | None:
    return ruleset.supervisors.get(str(case.data.get("clinic", ""))) or ruleset.supervisors.get("*")


def _send_webhook(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    payload = {"case_id": context.case.id, "state": context.case.state, "rule": context.rule.key}
    count = context.enqueue_webhook(
        context.work, str(params["event"]), f"{context.run_key}:{key}", payload, context.now
    )
    return {"event": params["event"], "deliveries": count}


def _request_approval(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    # Opened once per rule and case while open: a rule firing again joins the request.
    policy = str(params["policy"])
    request = open_named(
        context.work,
        context.actor,
        context.case,
        policy,
        context.rule.key,
        str(params.get("reason", "")),
        context.now,
    )
    return {"policy": policy, "approval_id": request.id}


def _call_integration(context: ActionContext, params: Mapping[str, Any], key: str) -> Result:
    # The call itself leaves through the outbox, so a slow or failing system retries
    # and dead-letters on its own schedule without holding this rule's transaction.
    context.case.events.append(
        Event(
            "integration.requested",
            {
                "port": params["port"],
                "operation": params["operation"],
                "params": dict(params.get("params") or {}),
            },
            key=f"integration:{context.run_key}:{key}",
        )
    )
    return {"port": params["port"], "operation": params["operation"]}


_RUNNERS: dict[str, Callable[[ActionContext, Mapping[str, Any], str], Result]] = {
    "set_field": _set_field,
    "assign": _assign,
    "transition": _transition,
    "create_task": _create_task,
    "escalate": _escalate,
    "notify": _notify,
    "send_webhook": _send_webhook,
    "request_approval": _request_approval,
    "call_integration": _call_integration,
}


def offset_from(
    config: AutomationConfig, case: Case, start: datetime, offset: Offset, direction: int = 1
) -> datetime:
    """``start`` moved by ``offset``; business units on the calendar of the case's clinic."""
    calendar = config.calendar_for(str(case.data.get("clinic", "")))
    if offset.unit == "business_days":
        return add_business_days(calendar, start, direction * offset.amount)
    if offset.unit == "business_hours":
        return add_business_time(calendar, start, direction * offset.amount * 3600.0)
    return start + direction * offset.as_timedelta()


class TemplateValues(Mapping[str, object]):
    """``flatten(case)`` for a template, looked up path by path: a title names one or two
    values, where flattening walks the whole case. The same answers while no key of
    the data has a dot in it (schema fields never do)."""

    def __init__(self, case: Case) -> None:
        self._case = case

    def get(self, path: str, default: object = None) -> object:
        data = self._case.data
        if "." in path:
            value = lookup(data, path)
        elif path in data and not isinstance(data[path], dict):
            value = data[path]
        else:
            value = {"state": self._case.state, "assignee": self._case.assignee}.get(path)
            value = self._case.id if path == "id" else value
        if isinstance(value, dict):
            return default  # flatten holds leaves only
        return default if value is None else value

    def __getitem__(self, path: str) -> object:
        return flatten(self._case)[path]

    def __iter__(self) -> Iterator[str]:
        return iter(flatten(self._case))

    def __len__(self) -> int:
        return len(flatten(self._case))


def flatten(case: Case) -> dict[str, object]:
    """Dotted paths to values, for templates: {'patient.given_name': 'Ana', ...}."""
    values: dict[str, object] = {"state": case.state, "assignee": case.assignee, "id": case.id}
    # Depth first in the data's own order, as a recursive walk would go (a later path
    # that flattens to the same name wins alike), with a stack: half the cost per call.
    stack = [("", iter(case.data.items()))]
    while stack:
        prefix, items = stack[-1]
        for name, child in items:
            if isinstance(child, dict):
                stack.append((f"{prefix}{name}.", iter(child.items())))
                break
            values[f"{prefix}{name}"] = child
        else:
            stack.pop()
    return values
