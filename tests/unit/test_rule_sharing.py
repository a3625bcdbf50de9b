"""Work an event shares between rules: the scope index, equal triggers, equal conditions."""

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from careloop.domain import rules as rules_module
from careloop.domain.case import Case
from careloop.domain.rules import Rule, RuleAction, RuleSet, Trigger, TriggerKind
from careloop.engine.automation import Verdicts, matching

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class CountingCondition:
    """A condition that counts how often it is evaluated."""

    def __init__(self, source: str, field: str, value: object) -> None:
        self.source = source
        self.calls = 0
        self._field, self._value = field, value

    def evaluate(self, activation: Mapping[str, object]) -> bool:
        self.calls += 1
        case = activation["case"]
        assert isinstance(case, Mapping)
        return bool(case.get(self._field) == self._value)


def _rule(key: str, position: int, trigger: Trigger, **scope: frozenset[str]) -> Rule:
    return Rule(key, key, position, trigger, (RuleAction("create_task", {"title": key}),), **scope)


def _case(**data: object) -> Case:
    values = {"specialty": "cardiology", "clinic": "north", "urgency": "urgent", **data}
    return Case(
        id=1,
        case_type="referral",
        workflow_key="w",
        workflow_version=1,
        state="clinical_triage",
        version=1,
        data=values,
        created_at=NOW,
        updated_at=NOW,
        state_entered_at=NOW,
    )


def _ruleset(*rules: Rule) -> RuleSet:
    return RuleSet(key="r", version=1, case_type="referral", rules=rules)


TO_TRIAGE = Trigger(TriggerKind.TRANSITIONED, to_states=frozenset({"clinical_triage"}))


def test_candidates_are_the_rules_in_the_case_scope_in_definition_order() -> None:
    rules = _ruleset(
        _rule("general", 0, TO_TRIAGE),
        _rule("north", 1, TO_TRIAGE, clinics=frozenset({"north"})),
        _rule("south", 2, TO_TRIAGE, clinics=frozenset({"south"})),
        _rule(
            "north-cardio",
            3,
            TO_TRIAGE,
            clinics=frozenset({"north", "east"}),
            specialties=frozenset({"cardiology"}),
        ),
        _rule(
            "north-neuro",
            4,
            TO_TRIAGE,
            clinics=frozenset({"north"}),
            specialties=frozenset({"neurology"}),
        ),
        Rule(
            "north-instead",
            "x",
            5,
            TO_TRIAGE,
            (),
            clinics=frozenset({"north"}),
            replaces="general",
        ),
    )
    found = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "cardiology", "north")
    assert [r.key for r in found] == ["north", "north-cardio", "north-instead"]
    found = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "cardiology", "east")
    assert [r.key for r in found] == ["general", "north-cardio"]
    found = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "neurology", "west")
    assert [r.key for r in found] == ["general"]
    assert rules.candidates(TriggerKind.TRANSITIONED, ("completed",), "neurology", "north") == ()


def test_rules_with_equal_triggers_share_one_trigger_test() -> None:
    before = CountingCondition("case.urgency == 'routine'", "urgency", "routine")
    changed = Trigger(TriggerKind.FIELD_CHANGED, field="urgency", before=before)
    rules = _ruleset(
        # Equal, not identical: the rule set makes them one object.
        *(
            _rule(f"r{i}", i, Trigger(TriggerKind.FIELD_CHANGED, field="urgency", before=before))
            for i in range(5)
        )
    )
    assert len({id(r.trigger) for r in rules.rules}) == 1
    assert rules.rules[0].trigger == changed
    payload = {"fields": ["urgency"], "before": {"urgency": "routine"}}
    found = matching(rules.rules, TriggerKind.FIELD_CHANGED, payload, _case())
    assert [r.key for r in found] == ["r0", "r1", "r2", "r3", "r4"]
    assert before.calls == 1
    not_routine = {"fields": ["urgency"], "before": {"urgency": "soon"}}
    assert matching(rules.rules, TriggerKind.FIELD_CHANGED, not_routine, _case()) == []
    assert before.calls == 2


def test_a_timer_trigger_is_tested_per_rule_because_it_names_its_rule() -> None:
    timer = Trigger(TriggerKind.TIMER, anchor_state="clinical_triage")
    rules = (_rule("first", 0, timer), _rule("second", 1, timer))
    payload = {
        "kind": "rule",
        "name": "second",
        "state": "clinical_triage",
        "entered_at": NOW.isoformat(),
    }
    found = matching(rules, TriggerKind.TIMER, payload, _case())
    assert [r.key for r in found] == ["second"]


def test_candidates_are_remembered_per_scope_and_the_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rules_module, "MAX_REMEMBERED_CANDIDATES", 3)
    rules = _ruleset(
        _rule("general", 0, TO_TRIAGE),
        _rule("north", 1, TO_TRIAGE, clinics=frozenset({"north"})),
    )
    north = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "cardiology", "north")
    again = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "cardiology", "north")
    assert again is north and [r.key for r in north] == ["general", "north"]
    for clinic in ("a", "b", "c", "d", "e"):
        found = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "x", clinic)
        assert [r.key for r in found] == ["general"]
    assert len(rules._found) <= 3
    north = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "cardiology", "north")
    assert [r.key for r in north] == ["general", "north"]


def test_a_rule_set_copied_with_other_rules_finds_its_own_candidates() -> None:
    rules = _ruleset(_rule("a", 0, TO_TRIAGE))
    found = rules.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "x", "north")
    assert [r.key for r in found] == ["a"]
    other = replace(rules, rules=(_rule("b", 0, TO_TRIAGE),))
    found = other.candidates(TriggerKind.TRANSITIONED, ("clinical_triage",), "x", "north")
    assert [r.key for r in found] == ["b"]


def test_equal_conditions_are_evaluated_once_per_activation() -> None:
    first = CountingCondition("case.urgency == 'urgent'", "urgency", "urgent")
    same_text = CountingCondition("case.urgency == 'urgent'", "urgency", "urgent")
    other = CountingCondition("case.clinic == 'south'", "clinic", "south")
    verdicts = Verdicts(_case().activation(NOW))
    assert verdicts.of(first) == ({"urgency": "urgent"}, True, None)
    assert verdicts.of(same_text) == ({"urgency": "urgent"}, True, None)
    assert verdicts.of(other) == (
        {"clinic": "north"},
        False,
        "condition is false",
    )
    assert (first.calls, same_text.calls, other.calls) == (1, 0, 1)
    # A rule changed the case: the next activation starts with no verdicts.
    changed = Verdicts(_case(urgency="routine").activation(NOW))
    assert changed.of(same_text)[1] is False
    assert same_text.calls == 1
