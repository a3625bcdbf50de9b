"""A rule set compiles each condition text once; its rules share the compiled object."""

import pytest

from careloop.adapters.automation_definitions import load_rules_text
from careloop.adapters.definitions import load_workflow_text, shipped_definitions
from careloop.domain.errors import DefinitionInvalid
from careloop.domain.rules import RuleSet

WORKFLOW = load_workflow_text(shipped_definitions()[0][1], shipped_definitions()[0][0])

RULES = """kind: rules
key: shared
version: 1
case_type: referral
rules:
  - key: north
    trigger: created
    scope: {clinic: north}
    when: case.urgency == 'urgent'
    actions: [{create_task: {title: north}}]
  - key: south
    trigger: created
    scope: {clinic: south}
    when: case.urgency == 'urgent'
    actions: [{create_task: {title: south}}]
  - key: other
    trigger: created
    when: case.urgency == 'routine'
    actions: [{create_task: {title: other}}]
"""


def _load(text: str) -> RuleSet:
    return load_rules_text(text, "shared.yaml", WORKFLOW, frozenset(), frozenset())


def test_rules_with_the_same_condition_text_share_one_compiled_condition() -> None:
    ruleset = _load(RULES)
    north, south, other = (ruleset.find(key) for key in ("north", "south", "other"))
    assert north is not None and south is not None and other is not None
    assert north.condition is not None and north.condition is south.condition
    assert other.condition is not None and other.condition is not north.condition
    assert other.condition.source == "case.urgency == 'routine'"


def test_a_bad_condition_repeated_is_reported_at_every_rule_that_has_it() -> None:
    bad = RULES.replace("case.urgency == 'urgent'", "case.colour == 'red'")
    with pytest.raises(DefinitionInvalid) as raised:
        _load(bad)
    problems = [str(p) for p in raised.value.problems]
    assert [p.split(": ", 1)[0] for p in problems if "invalid condition" in p] == [
        "shared.yaml:9",
        "shared.yaml:14",
    ]
