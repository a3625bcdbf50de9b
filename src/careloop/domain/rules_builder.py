"""Validate a parsed rule-set document and build a ``RuleSet``.

Every reference is checked at load: states and transitions against the case type's
workflow, fields against its schema, templates, routing tables and integration ports
against what exists. A rule set with any problem never loads; the active version
stays in place.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from careloop.domain.conditions import Condition, ConditionCompiler, ConditionError
from careloop.domain.definition_checks import (
    Collector,
    Path,
    as_names,
    check_header,
    check_keys,
    check_name,
)
from careloop.domain.errors import DefinitionInvalid
from careloop.domain.rules import (
    OFFSET_UNITS,
    Offset,
    Rule,
    RuleAction,
    RuleSet,
    Template,
    Trigger,
    TriggerKind,
    placeholders,
)
from careloop.domain.workflow import Workflow
from careloop.domain.workflow_builder import CaseTypeSchema

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_OFFSET = re.compile(r"^(\d+)\s*(" + "|".join(OFFSET_UNITS) + r"|m|h|d|bh|bd)$")
_SHORT_UNITS = {
    "m": "minutes",
    "h": "hours",
    "d": "days",
    "bh": "business_hours",
    "bd": "business_days",
}
_TOP_KEYS = frozenset(
    {"key", "version", "case_type", "title", "max_chain_depth", "templates", "supervisors", "rules"}
)
_RULE_KEYS = frozenset({"key", "title", "trigger", "scope", "replaces", "when", "actions"})
_TRIGGER_KEYS: Mapping[TriggerKind, frozenset[str]] = {
    TriggerKind.CREATED: frozenset(),
    TriggerKind.TRANSITIONED: frozenset({"from", "to"}),
    TriggerKind.FIELD_CHANGED: frozenset({"field", "before", "after"}),
    TriggerKind.DOCUMENT_ADDED: frozenset({"document_type"}),
    TriggerKind.APPROVAL_DECIDED: frozenset({"decision"}),
    TriggerKind.WEBHOOK_RECEIVED: frozenset({"source", "event"}),
    TriggerKind.TIMER: frozenset({"before", "after", "state", "field"}),
}
_ACTION_PARAMS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (allowed keys, required keys)
    "set_field": (frozenset({"field", "value"}), frozenset({"field", "value"})),
    "assign": (frozenset({"user", "routing"}), frozenset()),
    "transition": (frozenset({"name", "reason"}), frozenset({"name"})),
    "create_task": (frozenset({"title", "due", "assignee"}), frozenset({"title"})),
    "escalate": (frozenset({"priority", "reassign_to", "notify_role"}), frozenset()),
    "notify": (frozenset({"channel", "template", "to"}), frozenset({"channel", "template", "to"})),
    "send_webhook": (frozenset({"event"}), frozenset({"event"})),
    "request_approval": (frozenset({"policy", "reason"}), frozenset({"policy"})),
    "call_integration": (
        frozenset({"port", "operation", "params"}),
        frozenset({"port", "operation"}),
    ),
}
CHANNELS = ("email", "sms", "in_app")
PRIORITIES = ("normal", "high", "critical")
MAX_RUN_NESTING = 3


@dataclass(frozen=True)
class RuleContext:
    """What a rule set for one case type may reference."""

    schema: CaseTypeSchema
    workflow: Workflow
    settable_fields: frozenset[str]
    date_fields: frozenset[str]
    routing_tables: frozenset[str] = frozenset()
    integration_ports: frozenset[str] = frozenset()


def parse_offset(text: object) -> Offset | None:
    """'4 hours', '2 business_days', '30m', '2bd' -> Offset; None when not an offset."""
    return _parse_offset(str(text))


@functools.lru_cache(maxsize=1024)
def _parse_offset(text: str) -> Offset | None:
    # Cached: a task rule's due offset is read each time the rule runs.
    match = _OFFSET.match(text.strip())
    if not match:
        return None
    unit = _SHORT_UNITS.get(match.group(2), match.group(2))
    return Offset(int(match.group(1)), unit)


def build_ruleset(
    raw: object,
    *,
    source: str,
    lines: Mapping[Path, int],
    context: RuleContext,
    compile_condition: ConditionCompiler,
) -> RuleSet:
    out = Collector(source, lines)
    if not isinstance(raw, Mapping):
        out.add((), "a rule set must be a mapping")
        raise DefinitionInvalid(out.problems)
    required = frozenset({"key", "version", "rules"})
    key, version = check_header(out, raw, _TOP_KEYS, required, context.schema.name)
    depth = raw.get("max_chain_depth", 5)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 20:
        out.add(("max_chain_depth",), "max_chain_depth must be an integer from 1 to 20")
        depth = 5
    builder = _Builder(out, context, compile_condition)
    templates = builder.templates(raw.get("templates"))
    supervisors = builder.supervisors(raw.get("supervisors"))
    rules = builder.rules(raw.get("rules"), templates)
    if out.problems:
        raise DefinitionInvalid(out.problems)
    return RuleSet(
        key=key,
        version=version,
        case_type=context.schema.name,
        rules=tuple(rules),
        max_chain_depth=depth,
        templates=templates,
        supervisors=supervisors,
        source=source,
    )


class _Builder:
    def __init__(
        self, out: Collector, context: RuleContext, compile_condition: ConditionCompiler
    ) -> None:
        self.out = out
        self.context = context
        self.compile_condition = compile_condition
        # Rules layered per specialty and location repeat the same conditions: each text
        # is compiled and checked once, and its rules share one object (less to load, and
        # less memory for an event's rules to walk through).
        self.compiled: dict[str, Condition] = {}
        self.states = frozenset(context.workflow.states)
        self.roles = context.schema.roles

    def templates(self, raw: object) -> dict[str, Template]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.out.add(("templates",), "templates must map names to {subject, body}")
            return {}
        templates = {}
        for name, spec in raw.items():
            path: Path = ("templates", name)
            if not isinstance(spec, Mapping):
                self.out.add(path, f"template {name!r} must be a mapping with subject and body")
                continue
            check_keys(self.out, path, spec, frozenset({"subject", "body"}), frozenset({"body"}))
            template = Template(str(spec.get("subject", "")), str(spec.get("body", "")))
            for text in (template.subject, template.body):
                for placeholder in placeholders(text):
                    if placeholder not in self.context.schema.fields and placeholder != "id":
                        self.out.add(path, f"template {name!r} uses unknown field {placeholder!r}")
            templates[str(name)] = template
        return templates

    def supervisors(self, raw: object) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.out.add(("supervisors",), "supervisors must map a clinic to a username")
            return {}
        return {str(clinic): str(user) for clinic, user in raw.items()}

    def rules(self, raw: object, templates: Mapping[str, Template]) -> list[Rule]:
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            self.out.add(("rules",), "rules must be a list")
            return []
        rules: list[Rule] = []
        keys: set[str] = set()
        for position, spec in enumerate(raw):
            path: Path = ("rules", position)
            if not isinstance(spec, Mapping):
                self.out.add(path, "a rule must be a mapping")
                continue
            check_keys(self.out, path, spec, _RULE_KEYS, frozenset({"key", "trigger", "actions"}))
            key = str(spec.get("key", ""))
            check_name(self.out, (*path, "key"), key, "rule key")
            if key in keys:
                self.out.add((*path, "key"), f"duplicate rule key {key!r}")
            keys.add(key)
            specialties, clinics = self.scope((*path, "scope"), spec.get("scope"))
            rules.append(
                Rule(
                    key=key,
                    title=str(spec.get("title", key)),
                    position=position,
                    trigger=self.trigger((*path, "trigger"), spec.get("trigger")),
                    condition=self.condition((*path, "when"), spec.get("when")),
                    actions=self.actions((*path, "actions"), spec.get("actions"), templates, 0),
                    specialties=specialties,
                    clinics=clinics,
                    replaces=str(spec.get("replaces", "")),
                )
            )
        for rule in rules:
            if rule.replaces and rule.replaces not in keys:
                self.out.add(
                    ("rules", rule.position, "replaces"), f"replaces unknown rule {rule.replaces!r}"
                )
            if rule.replaces and not (rule.specialties or rule.clinics):
                self.out.add(
                    ("rules", rule.position, "replaces"),
                    "only a rule with a scope may replace another (it would replace it everywhere)",
                )
        return rules

    def scope(self, path: Path, raw: object) -> tuple[frozenset[str], frozenset[str]]:
        if raw is None:
            return frozenset(), frozenset()
        if not isinstance(raw, Mapping):
            self.out.add(path, "scope must be a mapping with specialty and/or clinic")
            return frozenset(), frozenset()
        check_keys(self.out, path, raw, frozenset({"specialty", "clinic"}))
        return frozenset(as_names(raw.get("specialty"))), frozenset(as_names(raw.get("clinic")))

    def condition(self, path: Path, raw: object) -> Condition | None:
        if raw is None:
            return None
        text = str(raw)
        if text in self.compiled:
            return self.compiled[text]
        try:
            compiled = self.compile_condition(text, self.context.schema.fields)
        except ConditionError as error:
            self.out.add(path, f"invalid condition: {error}")
            return None
        self.compiled[text] = compiled
        return compiled

    def trigger(self, path: Path, raw: object) -> Trigger:
        spec = {"on": raw} if isinstance(raw, str) else raw
        if isinstance(spec, Mapping) and True in spec:
            # YAML 1.1 reads an unquoted 'on:' key as the boolean true.
            spec = {("on" if name is True else name): value for name, value in spec.items()}
        if not isinstance(spec, Mapping) or "on" not in spec:
            self.out.add(path, "trigger must name its kind: on: created | transitioned | ...")
            return Trigger(TriggerKind.CREATED)
        try:
            kind = TriggerKind(str(spec["on"]))
        except ValueError:
            known = ", ".join(k.value for k in TriggerKind)
            self.out.add((*path, "on"), f"unknown trigger {spec['on']!r}; use one of {known}")
            return Trigger(TriggerKind.CREATED)
        check_keys(self.out, path, spec, _TRIGGER_KEYS[kind] | {"on"})
        if kind is TriggerKind.TIMER:
            return self.timer_trigger(path, spec)
        from_states = frozenset(as_names(spec.get("from")))
        to_states = frozenset(as_names(spec.get("to")))
        for state in sorted((from_states | to_states) - self.states):
            self.out.add(path, f"unknown state {state!r}")
        field_name = str(spec.get("field", ""))
        if kind is TriggerKind.FIELD_CHANGED and field_name not in self.context.schema.fields:
            self.out.add((*path, "field"), f"unknown field {field_name!r}")
        document_type = str(spec.get("document_type", ""))
        if document_type and document_type not in self.context.schema.document_types:
            self.out.add((*path, "document_type"), f"unknown document type {document_type!r}")
        return Trigger(
            kind=kind,
            from_states=from_states,
            to_states=to_states,
            field=field_name,
            before=self.condition((*path, "before"), spec.get("before"))
            if kind is TriggerKind.FIELD_CHANGED
            else None,
            after=self.condition((*path, "after"), spec.get("after"))
            if kind is TriggerKind.FIELD_CHANGED
            else None,
            document_type=document_type,
            source=str(spec.get("source", "")),
            event=str(spec.get("event", "")),
            decision=str(spec.get("decision", "")),
        )

    def timer_trigger(self, path: Path, spec: Mapping[str, Any]) -> Trigger:
        if ("before" in spec) == ("after" in spec):
            self.out.add(path, "a timer trigger needs exactly one of 'before' or 'after'")
        direction = -1 if "before" in spec else 1
        text = spec.get("before", spec.get("after"))
        offset = parse_offset(text)
        if offset is None:
            self.out.add(
                path, f"{text!r} is not an offset like '30 minutes', '4 hours', '2 business_days'"
            )
        state = str(spec.get("state", ""))
        field_name = str(spec.get("field", ""))
        if bool(state) == bool(field_name):
            self.out.add(path, "a timer trigger is anchored to exactly one of 'state' or 'field'")
        if state and state not in self.states:
            self.out.add((*path, "state"), f"unknown state {state!r}")
        if state and direction < 0:
            self.out.add((*path, "before"), "a timer cannot fire before a state is entered")
        if field_name and field_name not in self.context.date_fields:
            self.out.add((*path, "field"), f"{field_name!r} is not a date field")
        return Trigger(
            kind=TriggerKind.TIMER,
            field=field_name,
            anchor_state=state,
            offset=offset,
            direction=direction,
        )

    def actions(
        self, path: Path, raw: object, templates: Mapping[str, Template], depth: int
    ) -> tuple[RuleAction, ...]:
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            self.out.add(path, "actions must be a non-empty list")
            return ()
        actions = []
        for index, spec in enumerate(raw):
            action = self.action((*path, index), spec, templates, depth)
            if action is not None:
                actions.append(action)
        return tuple(actions)

    def action(
        self, path: Path, raw: object, templates: Mapping[str, Template], depth: int
    ) -> RuleAction | None:
        if not isinstance(raw, Mapping) or len(raw) != 1:
            self.out.add(path, "an action is a mapping with exactly one action name")
            return None
        ((kind, params),) = raw.items()
        if kind == "run":
            if depth >= MAX_RUN_NESTING:
                self.out.add(path, f"'run' lists nest at most {MAX_RUN_NESTING} deep")
                return None
            children = self.actions((*path, "run"), params, templates, depth + 1)
            return RuleAction("run", {}, children)
        if kind not in _ACTION_PARAMS:
            known = ", ".join(sorted([*_ACTION_PARAMS, "run"]))
            self.out.add(path, f"unknown action {kind!r}; use one of {known}")
            return None
        if not isinstance(params, Mapping):
            self.out.add((*path, kind), f"{kind} needs a mapping of parameters")
            return None
        allowed, required = _ACTION_PARAMS[kind]
        check_keys(self.out, (*path, kind), params, allowed, required)
        self.check_action((*path, kind), str(kind), params, templates)
        return RuleAction(str(kind), dict(params))

    def check_action(
        self, path: Path, kind: str, params: Mapping[str, Any], templates: Mapping[str, Template]
    ) -> None:
        context = self.context
        if kind == "set_field" and params.get("field") not in context.settable_fields:
            self.out.add((*path, "field"), f"field {params.get('field')!r} cannot be set by a rule")
        elif kind == "assign":
            if ("user" in params) == ("routing" in params):
                self.out.add(path, "assign needs exactly one of 'user' or 'routing'")
            table = params.get("routing")
            if table is not None and table not in context.routing_tables:
                self.out.add((*path, "routing"), f"unknown routing table {table!r}")
        elif kind == "transition":
            name = params.get("name")
            if name not in context.workflow.transitions:
                self.out.add((*path, "name"), f"unknown transition {name!r}")
        elif kind == "create_task":
            due = params.get("due")
            if due is not None and parse_offset(due) is None:
                self.out.add((*path, "due"), f"{due!r} is not an offset like '4 hours'")
        elif kind == "escalate":
            priority = params.get("priority")
            if priority is not None and priority not in PRIORITIES:
                self.out.add((*path, "priority"), f"priority must be one of {PRIORITIES}")
            role = params.get("notify_role")
            if role is not None and role not in self.roles:
                self.out.add((*path, "notify_role"), f"unknown role {role!r}")
            if not params:
                self.out.add(path, "escalate needs priority, reassign_to or notify_role")
        elif kind == "notify":
            self.check_notify(path, params, templates)
        elif kind == "send_webhook" and not _EVENT_NAME.match(str(params.get("event"))):
            self.out.add((*path, "event"), "event must be a dotted name such as 'referral.stuck'")
        elif kind == "call_integration" and params.get("port") not in context.integration_ports:
            self.out.add((*path, "port"), f"unknown integration port {params.get('port')!r}")

    def check_notify(
        self, path: Path, params: Mapping[str, Any], templates: Mapping[str, Template]
    ) -> None:
        if params.get("channel") not in CHANNELS:
            self.out.add((*path, "channel"), f"channel must be one of {CHANNELS}")
        if params.get("template") not in templates:
            self.out.add((*path, "template"), f"unknown template {params.get('template')!r}")
        recipient = str(params.get("to", ""))
        kind, _, name = recipient.partition(":")
        if recipient in ("patient", "assignee", "supervisor") or (kind == "user" and name):
            return
        if kind == "role" and name in self.roles:
            return
        self.out.add(
            (*path, "to"),
            f"recipient {recipient!r}: use patient, assignee, supervisor, role:<r> or user:<u>",
        )
