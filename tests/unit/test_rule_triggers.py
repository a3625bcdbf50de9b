"""Which events a rule set listens to: the test that lets the relay skip loading a case."""

from careloop.domain.rules import Rule, RuleAction, RuleSet, Trigger, TriggerKind


def _rule(
    key: str, trigger: Trigger, position: int, specialties: frozenset[str] = frozenset()
) -> Rule:
    action = RuleAction("create_task", {"title": key})
    return Rule(key, key, position, trigger, (action,), specialties=specialties)


RULES = RuleSet(
    key="r",
    version=1,
    case_type="referral",
    rules=(
        _rule("on-review", Trigger(TriggerKind.TRANSITIONED, to_states=frozenset({"triage"})), 0),
        _rule(
            "cardio-priority",
            Trigger(TriggerKind.FIELD_CHANGED, field="payer.plan"),
            1,
            specialties=frozenset({"cardiology"}),
        ),
        _rule("any-document", Trigger(TriggerKind.DOCUMENT_ADDED), 2),
    ),
)


def test_a_rule_set_listens_to_the_events_its_triggers_name_in_any_scope() -> None:
    assert RULES.listens(TriggerKind.TRANSITIONED, ("triage",))
    assert not RULES.listens(TriggerKind.TRANSITIONED, ("completed",))
    # A field rule scoped to one specialty still counts: scope needs the case, loaded next.
    assert RULES.listens(TriggerKind.FIELD_CHANGED, ("priority", "payer"))
    assert not RULES.listens(TriggerKind.FIELD_CHANGED, ("queue", "team"))
    # A trigger without a discriminator hears every event of its kind.
    assert RULES.listens(TriggerKind.DOCUMENT_ADDED, ("lab_result",))
    assert not RULES.listens(TriggerKind.APPROVAL_DECIDED, ())


def test_what_a_rule_set_listens_to_agrees_with_its_candidates() -> None:
    events = [
        (TriggerKind.TRANSITIONED, ("triage",)),
        (TriggerKind.TRANSITIONED, ("completed",)),
        (TriggerKind.FIELD_CHANGED, ("payer",)),
        (TriggerKind.FIELD_CHANGED, ("queue",)),
        (TriggerKind.DOCUMENT_ADDED, ("referral_letter",)),
        (TriggerKind.CREATED, ()),
    ]
    for kind, keys in events:
        candidates = RULES.candidates(kind, keys, "cardiology", "riverside-clinic")
        # Never a candidate the quick test would have skipped.
        assert not candidates or RULES.listens(kind, keys), (kind, keys)
