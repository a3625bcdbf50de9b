"""Timers: SLA ladders and time-based rules as rows with a due time.

Planning happens in the relay's transaction when a case is created, changes state or
changes an anchoring date field, so timers always match the case. Firing claims due
rows with FOR UPDATE SKIP LOCKED (any number of workers) and turns each into a
``timer.fired`` outbox event keyed by the timer: the row is marked fired in the same
transaction, so each timer fires exactly once and its effects run through the
dispatcher like any other event.

An SLA ladder is one row at a time: entering a state plans the first step, carrying the
due times of the later ones, which the whole ladder was given on the calendar then; the
transaction that fires a step plans the next. So a case holds one pending SLA timer for
a state change to cancel, and a step whose handling fails does not stop the ones after.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from careloop.domain.case import Case
from careloop.domain.referral import lookup
from careloop.domain.rules import RuleSet
from careloop.domain.sla import DEFAULT_LADDER, EscalationLadder, PlannedTimer, plan_sla
from careloop.domain.workflow import Workflow
from careloop.engine.actions import automation_actor, offset_from, supervisor_of
from careloop.engine.runs import apply_once, new_run
from careloop.services.automation_registry import AutomationConfig
from careloop.services.cases import apply_assignment, apply_update
from careloop.services.deps import Deps
from careloop.services.ports import Clock, UnitOfWork, UnitOfWorkFactory
from careloop.services.recording import publish_events, store_notification
from careloop.services.referral_input import validate_changes

log = logging.getLogger("careloop.timers")
STATE_KINDS = ("sla", "state")
PRIORITY_STEPS = {"normal": "high", "high": "critical", "critical": "critical"}


def replan_state_timers(
    work: UnitOfWork,
    config: AutomationConfig,
    rulesets: Iterable[RuleSet],
    workflow: Workflow,
    case: Case,
    now: datetime,
    ladder: EscalationLadder = DEFAULT_LADDER,
) -> int:
    """Cancel the timers of the state the case left and plan those of the one it is in;
    returns how many it planned (or found planned already). The later SLA steps of this
    entry into the state, planned as earlier ones fired, are kept: an event replayed
    from the dead letters replans the state it entered without undoing them."""
    rows = _state_timers(config, rulesets, workflow, case, now, ladder)
    later = tuple(
        _sla_key(case.id, row["payload"]["state"], row["payload"]["entered_at"], step["name"])
        for row in rows
        if row["kind"] == "sla"
        for step in row["payload"]["later_steps"]
    )
    work.timers.replan(case.id, STATE_KINDS, rows, now, keep=later)
    return len(rows)


def _state_timers(
    config: AutomationConfig,
    rulesets: Iterable[RuleSet],
    workflow: Workflow,
    case: Case,
    now: datetime,
    ladder: EscalationLadder,
) -> list[dict[str, Any]]:
    entered = case.state_entered_at
    stamp = entered.isoformat()
    base = {"state": case.state, "entered_at": stamp}
    rows: list[dict[str, Any]] = []
    target = workflow.sla_seconds(case.state, case.urgency)
    if target and not workflow.states[case.state].terminal:
        calendar = config.calendar_for(str(case.data.get("clinic", "")))
        first, *later = (_step(p) for p in plan_sla(calendar, ladder, entered, target))
        rows.append(_sla_timer(case.id, base, target, first, later, now))
    for ruleset in rulesets:
        for rule in ruleset.timer_rules():
            trigger = rule.trigger
            if trigger.anchor_state != case.state or not _in_scope(rule, case):
                continue
            assert trigger.offset is not None
            rows.append(
                {
                    "case_id": case.id,
                    "kind": "state",
                    "key": f"rule:{case.id}:{rule.key}:{case.state}:{stamp}",
                    "name": rule.key,
                    "due_at": offset_from(config, case, entered, trigger.offset, trigger.direction),
                    "payload": {**base, "ruleset": ruleset.key},
                    "created_at": now,
                }
            )
    return rows


def _step(planned: PlannedTimer) -> dict[str, Any]:
    """A ladder step as a timer's payload carries it (the due time as ISO text)."""
    return {
        "name": planned.step,
        "due_at": planned.due_at.isoformat(),
        "fraction": planned.fraction,
        "action": planned.action,
        "notify_role": planned.notify_role,
    }


def _sla_timer(
    case_id: int,
    base: Mapping[str, Any],
    target: int,
    step: Mapping[str, Any],
    later: list[dict[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The timer of one SLA step; ``base`` names the state and the entry into it, and
    ``later`` holds the steps after it, planned one by one as each fires."""
    return {
        "case_id": case_id,
        "kind": "sla",
        "key": _sla_key(case_id, base["state"], base["entered_at"], step["name"]),
        "name": step["name"],
        "due_at": datetime.fromisoformat(step["due_at"]),
        "payload": {
            "state": base["state"],
            "entered_at": base["entered_at"],
            "action": step["action"],
            "notify_role": step["notify_role"],
            "fraction": step["fraction"],
            "target_seconds": target,
            "later_steps": later,
        },
        "created_at": now,
    }


def _sla_key(case_id: int, state: str, entered_at: str, step: str) -> str:
    return f"sla:{case_id}:{state}:{entered_at}:{step}"


def _next_sla_timer(timer: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The SLA step after the timer that fires, or None (not an SLA timer, the last
    step, or one planned before the later steps rode in the first)."""
    payload: Mapping[str, Any] = timer["payload"]
    later = payload.get("later_steps") if timer["kind"] == "sla" else None
    if not later:
        return None
    step, *rest = later
    return _sla_timer(timer["case_id"], payload, int(payload["target_seconds"]), step, rest, now)


def replan_field_timers(
    work: UnitOfWork,
    config: AutomationConfig,
    rulesets: Iterable[RuleSet],
    case: Case,
    changed: set[str] | None,
    now: datetime,
) -> int:
    """(Re)plan timers anchored to date fields; ``changed`` None means all of them."""
    planned = 0
    for ruleset in rulesets:
        for rule in ruleset.timer_rules():
            trigger = rule.trigger
            if not trigger.field or not _in_scope(rule, case):
                continue
            if changed is not None and trigger.field.split(".")[0] not in changed:
                continue
            anchor = _as_datetime(lookup(case.data, trigger.field))
            rows = []
            if anchor is not None:
                assert trigger.offset is not None
                rows.append(
                    {
                        "case_id": case.id,
                        "kind": "field",
                        "key": f"field:{case.id}:{rule.key}:{anchor.isoformat()}",
                        "name": rule.key,
                        "due_at": offset_from(
                            config, case, anchor, trigger.offset, trigger.direction
                        ),
                        "payload": {"field": trigger.field, "anchor": anchor.isoformat()},
                        "created_at": now,
                    }
                )
            work.timers.replan(case.id, ("field",), rows, now, names=(rule.key,))
            planned += len(rows)
    return planned


def fire_due_timers(uow: UnitOfWorkFactory, clock: Clock, batch: int = 500) -> int:
    """Turn due timers into outbox events; returns how many fired."""
    with uow() as work:
        now = clock.now()
        due = work.timers.claim_due(now, batch)
        for timer in due:
            payload = {
                **timer["payload"],
                "timer_id": timer["id"],
                "kind": "rule" if timer["kind"] in ("state", "field") else timer["kind"],
                "name": timer["name"],
                "due_at": timer["due_at"].isoformat(),
                "case_id": timer["case_id"],
            }
            work.outbox.add(timer["case_id"], "timer.fired", payload, f"timer:{timer['id']}", now)
            # The ladder goes on whatever becomes of this step: its handling may fail and
            # wait in the dead letters. A step that fires after the case has left the state
            # is skipped when handled, and the state change cancels the one it planned.
            following = _next_sla_timer(timer, now)
            if following is not None:
                work.timers.plan(following)  # a taken key (planned before) is left alone
        work.timers.mark_fired([t["id"] for t in due], now)
        work.commit()
    if due:
        log.info("fired %d timers", len(due))
    return len(due)


def seconds_until_due(uow: UnitOfWorkFactory, clock: Clock) -> float | None:
    """Seconds until the earliest pending timer is due (0 when one is due already);
    None when no timer is pending. An idle timer loop sleeps this long, not a whole
    poll interval, so a timer due in the meantime fires on time."""
    with uow() as work:
        due = work.timers.next_due()
    if due is None:
        return None
    return max(0.0, (due - clock.now()).total_seconds())


def still_current(case: Case, payload: Mapping[str, Any]) -> bool:
    """A state timer only counts while the case is still in the state it was planned for."""
    if "state" not in payload:
        return True
    return case.state == payload["state"] and case.state_entered_at.isoformat() == payload.get(
        "entered_at"
    )


def escalate_sla(
    work: UnitOfWork,
    deps: Deps,
    config: AutomationConfig,
    rulesets: Iterable[RuleSet],
    case: Case,
    event: Mapping[str, Any],
    now: datetime,
) -> None:
    """One step of the SLA ladder: notify, reassign to the supervisor, raise priority."""
    payload: Mapping[str, Any] = event["payload"]
    step = str(payload.get("name"))
    inputs = {k: payload.get(k) for k in ("state", "entered_at", "fraction", "due_at")}
    run = new_run(case.id, event, f"sla.{step}", "sla", 1, 0, now, inputs)
    if not still_current(case, payload):
        run.update(outcome="skipped", error="the case has left the state since")
        work.automation.record_run(run)
        return

    def effects() -> list[dict[str, Any]]:
        results = _apply_step(work, deps, rulesets, case, event, now)
        publish_events(work, case, now, {"depth": 1, "rule": f"sla.{step}"})
        return results

    apply_once(work, run, effects)


def _apply_step(
    work: UnitOfWork,
    deps: Deps,
    rulesets: Iterable[RuleSet],
    case: Case,
    event: Mapping[str, Any],
    now: datetime,
) -> list[dict[str, Any]]:
    payload: Mapping[str, Any] = event["payload"]
    step = str(payload.get("name"))
    actor = automation_actor(f"sla.{step}")
    action = str(payload.get("action"))
    role = payload.get("notify_role")
    supervisor = next((s for r in rulesets if (s := supervisor_of(r, case))), None)
    results: list[dict[str, Any]] = []
    if action in ("reassign", "escalate") and supervisor and case.assignee != supervisor:
        apply_assignment(work, actor, case, supervisor, now, reason=f"SLA {step}")
        results.append({"action": "reassign", "to": supervisor})
    if action in ("escalate", "raise_priority"):
        current = str(case.data.get("priority") or "normal")
        raised = PRIORITY_STEPS.get(current, "high")
        if raised != current:
            changes = validate_changes({"priority": raised})
            apply_update(work, deps, actor, case, changes, now, reason=f"SLA {step}")
            results.append({"action": "raise_priority", "to": raised})
    recipient = f"role:{role}" if role else (f"user:{case.assignee}" if case.assignee else None)
    if recipient:
        fraction = float(payload.get("fraction", 0))
        store_notification(
            work,
            case.id,
            f"{event['idempotency_key']}:{recipient}",
            "in_app",
            recipient,
            f"SLA {step}: referral #{case.id} in {case.state}",
            f"Referral #{case.id} has used {fraction:.0%} of its {case.state} target.",
            now,
        )
        results.append({"action": "notify", "to": recipient})
    return results


def _in_scope(rule: Any, case: Case) -> bool:
    return bool(
        rule.in_scope(str(case.data.get("specialty", "")), str(case.data.get("clinic", "")))
    )


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else None
    return None
