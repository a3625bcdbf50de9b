"""Approval policies: the builder's errors name file and line; the decision rules
(quorum, sequential and parallel steps, segregation of duties, information requests,
escalation and fallback authority) hold without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from careloop.adapters.approval_definitions import load_approvals_text
from careloop.adapters.definitions import load_workflow_text, shipped_definitions
from careloop.domain.approval_policy import (
    ApprovalPolicy,
    Decision,
    Person,
    Status,
)
from careloop.domain.approvals import (
    ApprovalRequest,
    Outcome,
    check_reason,
    decide,
    needs_fallback,
    resubmit,
    standing_of,
)
from careloop.domain.errors import (
    ApprovalClosed,
    ApprovalConflict,
    DefinitionInvalid,
    InvalidInput,
    PermissionDenied,
)
from careloop.domain.workflow import Workflow

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DATA = {"clinic": "riverside-clinic", "specialist": "dr.ito"}


def referral_workflow() -> Workflow:
    ((source, text),) = shipped_definitions()
    return load_workflow_text(text, source)


def build(body: str, workflow: Workflow | None = None) -> ApprovalPolicy:
    text = f"kind: approvals\nkey: test\nversion: 1\ncase_type: referral\npolicies:\n{body}"
    (policy,) = load_approvals_text(text, "test.yaml", workflow).policies
    return policy


def problems_of(body: str) -> list[str]:
    with pytest.raises(DefinitionInvalid) as invalid:
        build(body, referral_workflow())
    return [str(p) for p in invalid.value.problems]


def person(user_id: int, role: str, locations: tuple[str, ...] = ("*",)) -> Person:
    return Person(user_id, f"user{user_id}", frozenset({role}), locations=frozenset(locations))


def new_request(requester: int = 99) -> ApprovalRequest:
    return ApprovalRequest(
        id=7, case_id=1, policy_set="test", policy_version=1, policy="p",
        target_kind="transition", target="notify_patient", status=Status.PENDING.value,
        step=0, level=0, requester_id=requester, requester_name=f"user{requester}",
        requester_roles=frozenset({"scheduler"}), requester_manager=None, reason="",
        created_at=NOW, updated_at=NOW, step_started_at=NOW,
    )  # fmt: skip


def approve(
    policy: ApprovalPolicy, request: ApprovalRequest, who: Person, fallback: bool = False
) -> Outcome:
    standing = standing_of(policy, request, who, DATA, fallback)
    return decide(request, policy, standing, who, Decision.APPROVE, "", NOW)


SHIPPED_TRANSITIONS = {"authorization_approved", "notify_patient"}


def test_shipped_referral_policies_load_against_the_shipped_workflow() -> None:
    ((source, text),) = shipped_definitions("approvals")
    policies = load_approvals_text(text, source, referral_workflow())
    assert {p.key for p in policies.policies} == {
        "utilization-review",
        "accelerated-review",
        "out-of-network-manager",
    }
    assert set().union(*(p.transitions for p in policies.policies)) == SHIPPED_TRANSITIONS
    assert all(s.label == "human_approval" for p in policies.policies for s in p.steps)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "  - key: a\n    applies_to: {transitions: [fly_away]}\n"
            "    steps: [{reviewers: [{role: finance}]}]\n",
            "test.yaml:7: unknown transition 'fly_away'",
        ),
        (
            "  - key: a\n    applies_to: {transitions: [cancel]}\n    steps:\n"
            "      - reviewers: [{role: astronaut}]\n",
            "test.yaml:9: unknown role 'astronaut'",
        ),
        (
            "  - key: a\n    applies_to: {transitions: [cancel]}\n    steps:\n"
            "      - reviewers: [{role: finance}]\n        remind_after: soon\n",
            "test.yaml:10: 'soon' is not a duration like '30m', '2h' or '1d'",
        ),
        (
            "  - key: a\n    applies_to: {transitions: [cancel]}\n    steps:\n"
            "      - reviewers: [{role: finance}]\n        quorum: 0\n",
            "test.yaml:10: quorum must be an integer from 1 to 20",
        ),
        (
            "  - key: a\n    applies_to: {actions: ['send_webhook']}\n"
            "    steps: [{reviewers: [{user: carl}]}]\n",
            "test.yaml:7: action 'send_webhook' cannot be guarded",
        ),
        (
            "  - key: a\n    applies_to: {transitions: [cancel]}\n    when: case.colour == 'red'\n"
            "    steps: [{reviewers: [{user: carl}]}]\n",
            "test.yaml:8: invalid condition: unknown field 'case.colour'",
        ),
        (
            "  - key: a\n    applies_to: {transitions: [cancel]}\n    steps:\n"
            "      - reviewers: [{role: finance, at: galaxy}]\n",
            "test.yaml:9: unknown field 'galaxy'",
        ),
        (
            "  - key: a\n    applies_to: {transitions: [cancel]}\n    steps:\n"
            "      - parallel: [{name: only, reviewers: [{role: finance}]}]\n",
            "test.yaml:9: parallel must list at least two groups",
        ),
    ],
)
def test_invalid_policies_are_refused_with_file_and_line(body: str, expected: str) -> None:
    assert any(problem.startswith(expected) for problem in problems_of(body)), problems_of(body)


def test_every_problem_of_a_policy_is_reported_at_once() -> None:
    problems = problems_of(
        "  - key: a\n    applies_to: {transitions: [nope]}\n    steps:\n"
        "      - reviewers: [{role: astronaut}]\n        escalate_to: [{role: finance}]\n"
    )
    assert len(problems) == 3  # transition, role, escalate_to without escalate_after


ONE_STEP_QUORUM_TWO = """  - key: p
    applies_to: {transitions: [cancel]}
    steps:
      - name: clinicians
        reviewers: [{role: clinical_triage}]
        quorum: 2
"""


def test_a_step_completes_only_when_its_quorum_has_approved() -> None:
    policy, request = build(ONE_STEP_QUORUM_TWO), new_request()
    first = approve(policy, request, person(1, "clinical_triage"))
    assert (first.closed, request.status) == (False, "pending")
    second = approve(policy, request, person(2, "clinical_triage"))
    assert (second.closed, second.event_decision, request.status) == (True, "approved", "approved")


def test_the_same_person_cannot_count_twice_towards_a_quorum() -> None:
    policy, request = build(ONE_STEP_QUORUM_TWO), new_request()
    approve(policy, request, person(1, "clinical_triage"))
    with pytest.raises(ApprovalConflict):
        approve(policy, request, person(1, "clinical_triage"))


SEQUENTIAL_THEN_PARALLEL = """  - key: p
    applies_to: {transitions: [cancel]}
    steps:
      - name: manager
        reviewers: [{role: clinic_manager, at: clinic}]
      - name: money-and-medicine
        parallel:
          - {name: finance, reviewers: [{role: finance}]}
          - {name: clinical, reviewers: [{role: clinical_triage}], quorum: 2}
"""


def test_sequential_steps_run_in_order_and_parallel_groups_each_need_their_quorum() -> None:
    policy, request = build(SEQUENTIAL_THEN_PARALLEL), new_request()
    with pytest.raises(PermissionDenied):
        approve(policy, request, person(3, "finance"))  # the finance step is not open yet
    with pytest.raises(PermissionDenied):
        approve(policy, request, person(1, "clinic_manager", ("lakeside-clinic",)))
    assert approve(
        policy, request, person(2, "clinic_manager", ("riverside-clinic",))
    ).step_completed
    assert request.step == 1
    approve(policy, request, person(3, "finance"))
    approve(policy, request, person(4, "clinical_triage"))
    assert request.status == "pending"  # clinical still needs a second approver
    assert approve(policy, request, person(5, "clinical_triage")).closed
    assert request.status == "approved"
    assert [v.group for v in request.votes] == ["manager", "finance", "clinical", "clinical"]


def test_requester_may_not_decide_their_own_request_unless_the_policy_allows_it() -> None:
    strict = build(ONE_STEP_QUORUM_TWO)
    with pytest.raises(PermissionDenied, match="requester"):
        approve(strict, new_request(requester=1), person(1, "clinical_triage"))
    relaxed = build(ONE_STEP_QUORUM_TWO + "    segregation: {requester_may_approve: true}\n")
    approve(relaxed, new_request(requester=1), person(1, "clinical_triage"))


TWO_STEPS = """  - key: p
    applies_to: {transitions: [cancel]}
    steps:
      - {name: first, reviewers: [{role: utilization_review}]}
      - {name: second, reviewers: [{role: utilization_review}]}
"""


def test_one_person_may_not_approve_two_steps_unless_the_policy_allows_it() -> None:
    strict, request = build(TWO_STEPS), new_request()
    approve(strict, request, person(1, "utilization_review"))
    with pytest.raises(PermissionDenied, match="two steps"):
        approve(strict, request, person(1, "utilization_review"))
    relaxed = build(TWO_STEPS + "    segregation: {one_step_per_person: false}\n")
    request = new_request()
    approve(relaxed, request, person(1, "utilization_review"))
    assert approve(relaxed, request, person(1, "utilization_review")).closed


def test_information_request_holds_the_request_until_the_requester_resubmits() -> None:
    policy, request = build(ONE_STEP_QUORUM_TWO), new_request(requester=9)
    reviewer = person(1, "clinical_triage")
    standing = standing_of(policy, request, reviewer, DATA, False)
    outcome = decide(request, policy, standing, reviewer, Decision.REQUEST_INFORMATION, "x", NOW)
    assert (outcome.event_decision, request.status) == ("information_requested", "on_hold")
    with pytest.raises(ApprovalConflict):
        approve(policy, request, person(2, "clinical_triage"))
    with pytest.raises(PermissionDenied):
        resubmit(request, 1, NOW)
    resubmit(request, 9, NOW + timedelta(hours=1))
    assert request.status == "pending" and request.step_started_at == NOW + timedelta(hours=1)


def test_a_rejection_closes_the_request_and_later_decisions_are_refused() -> None:
    policy, request = build(ONE_STEP_QUORUM_TWO), new_request()
    reviewer = person(1, "clinical_triage")
    standing = standing_of(policy, request, reviewer, DATA, False)
    assert decide(request, policy, standing, reviewer, Decision.REJECT, "no", NOW).closed
    with pytest.raises(ApprovalClosed):
        approve(policy, request, person(2, "clinical_triage"))


@pytest.mark.parametrize(
    ("decision", "reason", "field"),
    [("reject", "", "reason"), ("request_information", None, "reason"), ("shrug", "x", "decision")],
)
def test_decisions_needing_a_reason_or_unknown_values_name_the_field(
    decision: str, reason: str | None, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_reason(decision, reason)
    assert [p.field for p in refused.value.problems] == [field]


ESCALATING = """  - key: p
    applies_to: {transitions: [cancel]}
    fallback: {role: operations_manager}
    steps:
      - name: review
        reviewers: [{role: utilization_review}]
        quorum: 2
        remind_after: 30m
        escalate_after: 1h
        escalate_to: [{user_field: specialist}]
"""


def test_escalation_levels_then_the_fallback_complete_a_step_with_one_approval() -> None:
    policy, request = build(ESCALATING), new_request()
    specialist = Person(5, "dr.ito", frozenset({"clinical_triage"}))
    operations = person(6, "operations_manager")
    assert not standing_of(policy, request, specialist, DATA, False).eligible
    request.level = 1
    assert approve(policy, request, specialist).closed  # one authority vote, despite quorum 2
    request = new_request()
    request.level = 2
    assert standing_of(policy, request, operations, DATA, False).authority


def test_fallback_is_needed_when_every_eligible_reviewer_is_away_or_barred() -> None:
    policy, request = build(ESCALATING), new_request(requester=1)
    people = [person(1, "utilization_review"), person(2, "utilization_review")]
    assert not needs_fallback(policy, request, people, frozenset(), DATA)
    assert needs_fallback(policy, request, people, frozenset({2}), DATA)  # 1 is the requester
    assert needs_fallback(policy, request, [], frozenset(), DATA)
