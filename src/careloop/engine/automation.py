"""The automation dispatcher: an outbox subscriber that evaluates rules for each event.

For one event, in the relay's transaction: built-in reactions (duplicate check, SLA
and timer planning, SLA escalation), then every candidate rule in definition order.
Each rule runs in its own savepoint and is recorded once per event in the automation
log (its version, the condition's inputs, what each action did), keyed by (event,
rule) so a retried event never applies a rule twice. Events the actions cause carry
the chain depth; past the rule set's limit the chain stops with an exception task.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from careloop.domain.case import Case
from careloop.domain.conditions import Condition, ConditionError
from careloop.domain.errors import CareloopError, StaleVersion
from careloop.domain.matching import PatientMatcher
from careloop.domain.referral import lookup
from careloop.domain.rules import EVENT_TRIGGERS, Rule, RuleSet, TriggerKind
from careloop.engine.actions import ActionContext, automation_actor, run_actions
from careloop.engine.caused import CausedEvents
from careloop.engine.duplicates import detect_duplicates
from careloop.engine.runs import apply_once, new_run
from careloop.engine.timers import (
    escalate_sla,
    replan_field_timers,
    replan_state_timers,
    still_current,
)
from careloop.engine.webhooks import WebhookFanOut
from careloop.services.attachments import record_task, task_values
from careloop.services.automation_registry import AutomationConfig, AutomationRegistry
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import publish_events

log = logging.getLogger("careloop.automation")
# A condition's verdict: (its inputs, whether it passed, why not); new_run copies inputs.
Verdict = tuple[dict[str, Any], bool, str | None]
_REFERENCE = re.compile(r"\bcase\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


class Automation:
    def __init__(
        self,
        deps: Deps,
        registry: AutomationRegistry,
        webhooks: WebhookFanOut,
        matcher: PatientMatcher | None = None,
        duplicate_window_days: int = 30,
    ) -> None:
        self._deps = deps
        self._registry = registry
        self._webhooks = webhooks
        self._matcher = matcher
        self._duplicate_window_days = duplicate_window_days

    def prepare(self, work: UnitOfWork, events: Sequence[Mapping[str, Any]]) -> None:
        """Load the cases of a batch's events that concern automation in one statement
        (kept only by a deferring unit of work; see adapters/db/write_buffer.py)."""
        config = self._registry.current()
        wanted = {
            int(event["case_id"])
            for event in events
            if event["case_id"] is not None and _concerns_automation(config, event)
        }
        if wanted:
            work.cases.prefetch(wanted)

    def handle(self, work: UnitOfWork, event: Mapping[str, Any]) -> None:
        self._webhooks.fan_out(work, event)
        if event["case_id"] is None:
            return
        config = self._registry.current()
        if not _concerns_automation(config, event):
            return
        now = self._deps.clock.now()
        case = work.cases.get(int(event["case_id"]))
        self._react(work, config, case, event, now)
        kind = EVENT_TRIGGERS.get(str(event["event_type"]))
        if kind is None:
            return
        for ruleset in config.rulesets.get(case.case_type, ()):
            case = self._run_ruleset(work, config, ruleset, kind, case, event, now)

    # -- built-in reactions ------------------------------------------------------
    def _react(
        self,
        work: UnitOfWork,
        config: AutomationConfig,
        case: Case,
        event: Mapping[str, Any],
        now: datetime,
    ) -> None:
        event_type = event["event_type"]
        rulesets = config.rulesets.get(case.case_type, ())
        workflow = self._deps.workflows.get(case.workflow_key, case.workflow_version)
        if event_type == "case.created":
            if self._matcher is not None:
                detect_duplicates(
                    work, self._deps, self._matcher, case, event, now, self._duplicate_window_days
                )
            replan_state_timers(work, config, rulesets, workflow, case, now)
            replan_field_timers(work, config, rulesets, case, None, now)
        elif event_type == "case.transitioned":
            # A stale event (the case has moved on since) must not re-plan old timers.
            if case.state == event["payload"].get("to"):
                replan_state_timers(work, config, rulesets, workflow, case, now)
        elif event_type == "case.updated":
            fields = set(event["payload"].get("fields", ()))
            replan_field_timers(work, config, rulesets, case, fields, now)
        elif event_type == "timer.fired" and event["payload"].get("kind") == "sla":
            escalate_sla(work, self._deps, config, rulesets, case, event, now)

    # -- rules ---------------------------------------------------------------------
    def _run_ruleset(
        self,
        work: UnitOfWork,
        config: AutomationConfig,
        ruleset: RuleSet,
        kind: TriggerKind,
        case: Case,
        event: Mapping[str, Any],
        now: datetime,
    ) -> Case:
        payload: Mapping[str, Any] = event["payload"]
        in_scope = ruleset.candidates(
            kind,
            _discriminators(kind, payload),
            str(case.data.get("specialty", "")),
            str(case.data.get("clinic", "")),
        )
        candidates = matching(in_scope, kind, payload, case)
        if not candidates:
            return case
        depth = int((payload.get("automation") or {}).get("depth", 0))
        if depth >= ruleset.max_chain_depth:
            self._stop_chain(work, ruleset, candidates, case, event, depth, now)
            return case
        verdicts = Verdicts(case.activation(now))  # one per event: conditions share it
        caused = CausedEvents(depth + 1, str(event["idempotency_key"]))
        for rule in candidates:
            version = case.version
            case = self._run_rule(
                work, config, ruleset, rule, case, event, depth, now, verdicts, caused
            )
            caused.take(case, rule.key)
            if case.version != version:
                verdicts = Verdicts(case.activation(now))  # a rule changed the case
        caused.publish(work, case, now)
        return case

    def _run_rule(
        self,
        work: UnitOfWork,
        config: AutomationConfig,
        ruleset: RuleSet,
        rule: Rule,
        case: Case,
        event: Mapping[str, Any],
        depth: int,
        now: datetime,
        verdicts: Verdicts,
        caused: CausedEvents,
    ) -> Case:
        event_key = str(event["idempotency_key"])
        inputs, passed, problem = verdicts.of(rule.condition)
        run = new_run(case.id, event, rule.key, ruleset.key, ruleset.version, depth, now, inputs)
        if not passed:
            run.update(outcome="skipped", error=problem)
            work.automation.record_run(run)
            return case
        actor = automation_actor(rule.key)
        context = ActionContext(
            work=work,
            deps=self._deps,
            config=config,
            ruleset=ruleset,
            rule=rule,
            case=case,
            event=event,
            actor=actor,
            now=now,
            run_key=f"{event_key}:{rule.key}",
            enqueue_webhook=self._webhooks.enqueue_custom,
        )

        def effects() -> list[dict[str, Any]]:
            return run_actions(context, rule.actions)  # its events wait in case.events

        try:
            if not apply_once(work, run, effects):
                # An earlier delivery applied this rule; this attempt's effects are undone.
                return work.cases.get(case.id)
        except StaleVersion:
            raise  # someone changed the case meanwhile: retry the whole event
        except CareloopError as error:
            # A rule that cannot apply (guard not met, invalid value) will not apply on a
            # retry either: record it and hand it to a person instead.
            case = work.cases.get(case.id)
            run.update(outcome="failed", error=f"{error.code}: {error}", results=[])
            if work.automation.record_run(run):
                caused.publish(work, case, now)  # the earlier rules' events come first
                self._exception_task(
                    work, case, f"Automation rule {rule.key} failed: {error}", rule.key, now
                )
        return case

    def _stop_chain(
        self,
        work: UnitOfWork,
        ruleset: RuleSet,
        candidates: list[Rule],
        case: Case,
        event: Mapping[str, Any],
        depth: int,
        now: datetime,
    ) -> None:
        run = new_run(
            case.id,
            event,
            "chain-limit",
            ruleset.key,
            ruleset.version,
            depth,
            now,
            {"would_run": [rule.key for rule in candidates]},
        )
        run.update(
            outcome="stopped",
            error=f"rule chain reached depth {depth} (limit {ruleset.max_chain_depth})",
        )
        if work.automation.record_run(run):
            log.warning("automation chain stopped at depth %d on case %s", depth, case.id)
            self._exception_task(
                work,
                case,
                f"Automation stopped: rule chain reached depth {depth}; check rules "
                + ", ".join(rule.key for rule in candidates),
                "chain-limit",
                now,
            )

    def _exception_task(
        self, work: UnitOfWork, case: Case, title: str, rule_key: str, now: datetime
    ) -> None:
        actor = automation_actor(rule_key)
        record_task(work, actor, case, task_values(title, actor, now, case.assignee), now)
        # The task's own event is the end of the chain: no rule reacts to it.
        publish_events(work, case, now, {"depth": 99, "rule": rule_key})


def _concerns_automation(config: AutomationConfig, event: Mapping[str, Any]) -> bool:
    """Whether the event can cause a built-in reaction or a rule. Most events that rules
    themselves cause (a task added, a field no rule or timer watches) cannot, and for
    them the case is not even loaded."""
    event_type = str(event["event_type"])
    case_type = event["payload"].get("case_type")
    if case_type is None or event_type in _ALWAYS_REACT:
        return True
    rulesets = config.rulesets.get(str(case_type), ())
    if event_type == "case.updated" and any(
        rule.trigger.field for ruleset in rulesets for rule in ruleset.timer_rules()
    ):
        return True  # a date field may have moved: its timers are re-planned
    kind = EVENT_TRIGGERS.get(event_type)
    return kind is not None and any(
        ruleset.listens(kind, _discriminators(kind, event["payload"])) for ruleset in rulesets
    )


# Events with reactions that do not depend on rules (duplicates, SLA timers, escalation).
_ALWAYS_REACT = frozenset({"case.created", "case.transitioned", "timer.fired"})


def _discriminators(kind: TriggerKind, payload: Mapping[str, Any]) -> tuple[str, ...]:
    if kind is TriggerKind.TRANSITIONED:
        return (str(payload.get("to", "")),)
    if kind is TriggerKind.FIELD_CHANGED:
        return tuple(str(name) for name in payload.get("fields", ()))
    if kind is TriggerKind.DOCUMENT_ADDED:
        return (str(payload.get("doc_type", "")),)
    if kind is TriggerKind.WEBHOOK_RECEIVED:
        return (str(payload.get("source", "")),)
    return ()


def matching(
    rules: Sequence[Rule], kind: TriggerKind, payload: Mapping[str, Any], case: Case
) -> list[Rule]:
    """The rules whose trigger this event meets. Rules sharing a trigger (RuleSet makes
    equal triggers one object) share the test; a timer trigger also names its rule."""
    if kind is TriggerKind.TIMER:
        return [rule for rule in rules if _trigger_matches(rule, kind, payload, case)]
    met: dict[int, bool] = {}
    found = []
    for rule in rules:
        passed = met.get(id(rule.trigger))
        if passed is None:
            passed = met[id(rule.trigger)] = _trigger_matches(rule, kind, payload, case)
        if passed:
            found.append(rule)
    return found


def _trigger_matches(rule: Rule, kind: TriggerKind, payload: Mapping[str, Any], case: Case) -> bool:
    trigger = rule.trigger
    if kind is TriggerKind.TRANSITIONED:
        return (not trigger.from_states or payload.get("from") in trigger.from_states) and (
            not trigger.to_states or payload.get("to") in trigger.to_states
        )
    if kind is TriggerKind.FIELD_CHANGED:
        return _field_change_matches(rule, payload, case)
    if kind is TriggerKind.DOCUMENT_ADDED:
        return not trigger.document_type or payload.get("doc_type") == trigger.document_type
    if kind is TriggerKind.APPROVAL_DECIDED:
        return not trigger.decision or payload.get("decision") == trigger.decision
    if kind is TriggerKind.WEBHOOK_RECEIVED:
        return payload.get("source") == trigger.source and (
            not trigger.event or payload.get("event") == trigger.event
        )
    if kind is TriggerKind.TIMER:
        return (
            payload.get("kind") == "rule"
            and payload.get("name") == rule.key
            and still_current(case, payload)
        )
    return True


def _field_change_matches(rule: Rule, payload: Mapping[str, Any], case: Case) -> bool:
    trigger = rule.trigger
    before_top: dict[str, Any] = dict(payload.get("before") or {})
    old_data = {**case.data, **before_top}
    for name in before_top:
        if before_top[name] is None:
            old_data.pop(name, None)
    if lookup(old_data, trigger.field) == lookup(case.data, trigger.field):
        return False  # a sibling of a nested field changed, not this one
    checks: list[tuple[Condition | None, dict[str, Any]]] = [
        (trigger.before, old_data),
        (trigger.after, case.data),
    ]
    for condition, data in checks:
        if condition is None:
            continue
        view = Case(**{**case.__dict__, "data": data, "events": []})
        try:
            if not condition.evaluate(view.activation(case.updated_at)):
                return False
        except ConditionError:
            return False
    return True


class Verdicts:
    """What conditions gave on one activation: (the inputs, whether it passed, why not).
    The inputs are the case fields a condition references, recorded so a coordinator
    can see why a rule fired or not.

    Rules layered per specialty and location repeat the same conditions, and conditions
    written from one pattern (other constants) reference the same fields; a CEL
    condition has no side effects, so one evaluation per distinct text and one reading
    of the inputs per distinct set of references serve them all. A rule that changes
    the case makes a new activation, and so a new Verdicts."""

    __slots__ = ("_activation", "_by_source", "_inputs")

    def __init__(self, activation: Mapping[str, Any]) -> None:
        self._activation = activation
        self._by_source: dict[str, Verdict] = {}
        self._inputs: dict[tuple[str, ...], dict[str, Any]] = {}

    def of(self, condition: Condition | None) -> Verdict:
        if condition is None:
            return {}, True, None
        known = self._by_source.get(condition.source)
        if known is not None:
            return known
        references = _references(condition.source)
        inputs = self._inputs.get(references)
        if inputs is None:
            view = self._activation["case"]
            inputs = {path: _json_safe(lookup(view, path)) for path in references}
            self._inputs[references] = inputs  # shared: new_run copies what it records
        try:
            passed = condition.evaluate(self._activation)
        except ConditionError as error:
            verdict: Verdict = (inputs, False, f"condition could not be evaluated: {error}")
        else:
            verdict = (inputs, passed, None if passed else "condition is false")
        self._by_source[condition.source] = verdict
        return verdict


@functools.lru_cache(maxsize=4096)
def _references(source: str) -> tuple[str, ...]:
    return tuple(_REFERENCE.findall(source))


def _json_safe(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


Subscriber = Callable[[UnitOfWork, Mapping[str, Any]], None]
