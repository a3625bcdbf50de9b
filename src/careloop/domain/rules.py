"""Automation rules as data: a trigger, an optional CEL condition, ordered actions.

A ``RuleSet`` is one versioned definition per case type. Rules are indexed by what
can trigger them (event kind, target state, changed field...) and by specialty, so
an event only evaluates the few rules that could match it, even with 10,000 rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from careloop.domain.conditions import Condition

ANY = "*"
BusinessAdder = Callable[[datetime, "Offset", int], datetime]


class TriggerKind(StrEnum):
    CREATED = "created"
    TRANSITIONED = "transitioned"
    FIELD_CHANGED = "field_changed"
    DOCUMENT_ADDED = "document_added"
    APPROVAL_DECIDED = "approval_decided"
    WEBHOOK_RECEIVED = "webhook_received"
    TIMER = "timer"


# Which outbox event wakes which trigger kind.
EVENT_TRIGGERS: Mapping[str, TriggerKind] = {
    "case.created": TriggerKind.CREATED,
    "case.transitioned": TriggerKind.TRANSITIONED,
    "case.updated": TriggerKind.FIELD_CHANGED,
    "case.document_added": TriggerKind.DOCUMENT_ADDED,
    "approval.decided": TriggerKind.APPROVAL_DECIDED,
    "webhook.received": TriggerKind.WEBHOOK_RECEIVED,
    "timer.fired": TriggerKind.TIMER,
}

OFFSET_UNITS = ("minutes", "hours", "days", "business_hours", "business_days")


@dataclass(frozen=True, slots=True)
class Offset:
    """A signed amount of (business) time: '2 business_days' before, '4 hours' after."""

    amount: int
    unit: str  # one of OFFSET_UNITS

    @property
    def is_business(self) -> bool:
        return self.unit.startswith("business_")

    def as_timedelta(self) -> timedelta:
        """Calendar time only; business units are resolved on a business calendar."""
        seconds = {"minutes": 60, "hours": 3600, "days": 86400}[self.unit]
        return timedelta(seconds=self.amount * seconds)

    def __str__(self) -> str:
        return f"{self.amount} {self.unit}"


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind
    from_states: frozenset[str] = frozenset()  # empty: any
    to_states: frozenset[str] = frozenset()
    field: str = ""  # field_changed; timer anchored to a date field
    before: Condition | None = None  # field_changed: evaluated on the old values
    after: Condition | None = None  # field_changed: evaluated on the new values
    document_type: str = ""
    source: str = ""  # webhook_received: the inbound source key
    event: str = ""  # webhook_received: the mapped event name
    decision: str = ""  # approval_decided: approved | rejected | ...
    anchor_state: str = ""  # timer: entry into this state
    offset: Offset | None = None  # timer: how far from the anchor
    direction: int = 1  # timer: +1 after the anchor, -1 before it

    def discriminators(self) -> tuple[str, ...]:
        """Index keys: an event of this kind only looks at rules under its own keys."""
        if self.kind is TriggerKind.TRANSITIONED and self.to_states:
            return tuple(sorted(self.to_states))
        if self.kind is TriggerKind.FIELD_CHANGED and self.field:
            return (self.field.split(".")[0],)
        if self.kind is TriggerKind.DOCUMENT_ADDED and self.document_type:
            return (self.document_type,)
        if self.kind is TriggerKind.WEBHOOK_RECEIVED and self.source:
            return (self.source,)
        return (ANY,)


@dataclass(frozen=True, slots=True)
class RuleAction:
    kind: str  # set_field, assign, transition, create_task, escalate, notify, ...
    params: Mapping[str, Any] = field(default_factory=dict)
    children: tuple[RuleAction, ...] = ()  # the actions of a 'run' list

    def describe(self) -> str:
        return f"{self.kind} {dict(self.params)}" if self.params else self.kind


@dataclass(frozen=True, slots=True)
class Rule:
    key: str
    title: str
    position: int  # definition order: actions of several rules run in this order
    trigger: Trigger
    actions: tuple[RuleAction, ...]
    condition: Condition | None = None
    specialties: frozenset[str] = frozenset()  # scope; empty: every specialty
    clinics: frozenset[str] = frozenset()  # scope; empty: every location
    replaces: str = ""  # a scoped rule that stands in for a general one

    def in_scope(self, specialty: str, clinic: str) -> bool:
        return (not self.specialties or specialty in self.specialties) and (
            not self.clinics or clinic in self.clinics
        )


@dataclass(frozen=True, slots=True)
class Template:
    subject: str
    body: str


MAX_REMEMBERED_CANDIDATES = 4096  # per rule set; emptied when full


@dataclass
class RuleSet:
    key: str
    version: int
    case_type: str
    rules: tuple[Rule, ...]
    max_chain_depth: int = 5
    templates: Mapping[str, Template] = field(default_factory=dict)
    supervisors: Mapping[str, str] = field(default_factory=dict)  # clinic -> username
    source: str = ""
    # Worked out from the rules when built (init=False: a copy made with replace() works
    # its own out rather than sharing these).
    # (trigger kind, discriminator, specialty, clinic) -> rules; ANY where unscoped
    _index: dict[tuple[str, str, str, str], list[Rule]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _timer_rules: tuple[Rule, ...] = field(default=(), init=False, repr=False, compare=False)
    _triggers: set[tuple[str, str]] = field(
        default_factory=set, init=False, repr=False, compare=False
    )
    # What candidates() found, by its arguments: a rule set never changes once built,
    # and events repeat the same few kinds, states, specialties and clinics.
    _found: dict[tuple[str, tuple[str, ...], str, str], tuple[Rule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Equal triggers become one object, so an event tests each distinct trigger once
        # (engine.automation matches by identity) however many rules share it.
        shared: dict[Trigger, Trigger] = {}
        self.rules = tuple(
            rule
            if shared.setdefault(rule.trigger, rule.trigger) is rule.trigger
            else replace(rule, trigger=shared[rule.trigger])
            for rule in self.rules
        )
        self._timer_rules = tuple(r for r in self.rules if r.trigger.kind is TriggerKind.TIMER)
        for rule in self.rules:
            for discriminator in rule.trigger.discriminators():
                self._triggers.add((rule.trigger.kind.value, discriminator))
                for specialty in rule.specialties or {ANY}:
                    for clinic in rule.clinics or {ANY}:
                        key = (rule.trigger.kind.value, discriminator, specialty, clinic)
                        self._index.setdefault(key, []).append(rule)

    def candidates(
        self, kind: TriggerKind, discriminators: Iterable[str], specialty: str, clinic: str
    ) -> tuple[Rule, ...]:
        """Rules that an event of ``kind`` could trigger for a case in this scope,
        in definition order, with layered replacements applied."""
        key = (kind.value, tuple(discriminators), specialty, clinic)
        found = self._found.get(key)
        if found is None:
            if len(self._found) >= MAX_REMEMBERED_CANDIDATES:
                self._found.clear()
            found = self._found[key] = self._look_up(*key)
        return found

    def _look_up(
        self, kind: str, discriminators: tuple[str, ...], specialty: str, clinic: str
    ) -> tuple[Rule, ...]:
        # The index is keyed by scope too, so every rule found is in scope: with many
        # locations, an event never looks at the other locations' rules.
        found: dict[int, Rule] = {}
        index = self._index
        for discriminator in (*discriminators, ANY):
            for in_specialty in (specialty, ANY):
                for at_clinic in (clinic, ANY):
                    for rule in index.get((kind, discriminator, in_specialty, at_clinic), ()):
                        found[rule.position] = rule
        replaced = {rule.replaces for rule in found.values() if rule.replaces}
        return tuple(
            found[position] for position in sorted(found) if found[position].key not in replaced
        )

    def listens(self, kind: TriggerKind, discriminators: Iterable[str]) -> bool:
        """Whether any rule, in any scope, could be triggered by such an event: the cheap
        test that spares loading a case for the many events no rule watches."""
        return any((kind.value, d) in self._triggers for d in (*discriminators, ANY))

    def timer_rules(self) -> tuple[Rule, ...]:
        return self._timer_rules

    def find(self, key: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.key == key), None)


def render(template: str, values: Mapping[str, object]) -> str:
    """Fill '{{ path }}' placeholders; the builder has checked every path exists."""
    out, rest = [], template
    while "{{" in rest:
        head, _, tail = rest.partition("{{")
        name, _, rest = tail.partition("}}")
        out.append(head)
        value = values.get(name.strip())
        out.append("" if value is None else str(value))
    out.append(rest)
    return "".join(out)


def placeholders(template: str) -> list[str]:
    names = []
    rest = template
    while "{{" in rest:
        _, _, tail = rest.partition("{{")
        name, _, rest = tail.partition("}}")
        names.append(name.strip())
    return names


def due_time(
    trigger: Trigger, anchor: datetime, add_business: BusinessAdder | None = None
) -> datetime:
    """When a timer trigger fires for ``anchor``; business units need the case's calendar
    (``add_business(start, offset, direction)``), plain units are calendar time."""
    assert trigger.offset is not None, "only timer triggers have a due time"
    if trigger.offset.is_business and add_business is not None:
        return add_business(anchor, trigger.offset, trigger.direction)
    return anchor + trigger.direction * trigger.offset.as_timedelta()
