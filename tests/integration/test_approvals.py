"""Approvals on real SQLite and PostgreSQL: the shipped referral policies, segregation of
duties, delegation, the fallback approver, escalation timers and refusals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from careloop.adapters.db.approval_tables import approval_decisions, approval_requests
from careloop.bootstrap import App, build_worker
from careloop.domain.access import Actor
from careloop.domain.case import Case
from careloop.domain.errors import (
    ApprovalClosed,
    ApprovalConflict,
    ApprovalRequired,
    InvalidInput,
    OutOfReach,
    PermissionDenied,
)
from careloop.services import approval_delegations, approvals, attachments, queries
from careloop.services.cases import create_referral, transition_case, update_case
from careloop.services.ports import ManualClock
from careloop.services.referral_input import ReferralChanges, validate_referral
from tests.conftest import ADMIN, START, referral_payload

CLINIC = "riverside-clinic"
APPOINTMENT = ReferralChanges(specialist="Dr. Ito", appointment_at=START + timedelta(days=9))


def add_user(app: App, username: str, role: str, locations: tuple[str, ...] = ("*",)) -> Actor:
    with app.deps.uow() as uow:
        user_id = uow.accounts.add_user(
            username, username, None, [role], START, locations=list(locations)
        )
        uow.commit()
    return Actor(
        user_id=user_id,
        username=username,
        roles=frozenset({role}),
        source_address="127.0.0.1",
        locations=frozenset(locations),
    )


@pytest.fixture(autouse=True)
def stored_admin(app: App) -> Actor:
    """ADMIN of the shared fixtures as a stored user, so ids of later users differ."""
    admin = add_user(app, ADMIN.username, "administrator")
    assert admin.user_id == ADMIN.user_id
    return admin


def new_referral(app: App, **overrides: Any) -> Case:
    case, _ = create_referral(app.deps, ADMIN, validate_referral(referral_payload(**overrides)))
    attachments.add_document(
        app.deps, ADMIN, case.id, "referral_letter", "l.pdf", "application/pdf", b"%PDF-1.4 x"
    )
    return current(app, case.id)


def current(app: App, case_id: int) -> Case:
    with app.deps.read_uow() as uow:
        return uow.cases.get(case_id)


def move(
    app: App, who: Actor, case_id: int, *names: str, changes: ReferralChanges | None = None
) -> Case:
    case = current(app, case_id)
    for name in names:
        case = transition_case(app.deps, who, case_id, name, case.version, "because", changes)
    return case


def to_authorization_pending(app: App, urgency: str) -> Case:
    case = new_referral(app, urgency=urgency)
    move(app, ADMIN, case.id, "begin_review", "documentation_complete")
    return move(
        app,
        ADMIN,
        case.id,
        "eligible_authorization_required",
        changes=ReferralChanges(authorization_number="AUTH-77"),
    )


def refused_transition(app: App, who: Actor, case_id: int, name: str) -> ApprovalRequired:
    with pytest.raises(ApprovalRequired) as refused:
        move(app, who, case_id, name)
    return refused.value


def request_for(app: App, who: Actor, case_id: int, name: str) -> int:
    """Attempt a guarded transition as the API does: refused, then the request opened."""
    refused = refused_transition(app, who, case_id, name)
    (request_id,) = approvals.hold_transition(app.deps, who, case_id, name, refused.reason)
    return request_id


def vote_count(app: App) -> int:
    with app.engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(approval_decisions)).scalar_one()
        )


def events(app: App, case_id: int, event_type: str) -> list[dict[str, Any]]:
    with app.deps.read_uow() as uow:
        return [e for e in uow.outbox.for_case(case_id) if e["event_type"] == event_type]


def notifications(app: App, case_id: int) -> list[dict[str, Any]]:
    with app.deps.read_uow() as uow:
        return uow.webhooks.notifications(case_id)


def test_standard_in_network_referral_goes_straight_to_scheduling_without_approval(
    app: App,
) -> None:
    case = new_referral(app, urgency="routine")
    move(
        app,
        ADMIN,
        case.id,
        "begin_review",
        "documentation_complete",
        "eligible_no_authorization",
        "triage_accept",
    )
    moved = move(app, ADMIN, case.id, "schedule_appointment", "notify_patient", changes=APPOINTMENT)
    assert moved.state == "patient_notified"
    assert approvals.case_approvals(app.deps, ADMIN, case.id) == []


def test_referral_missing_authorization_waits_for_utilization_review(app: App) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    case = to_authorization_pending(app, "routine")
    refused = refused_transition(app, ADMIN, case.id, "authorization_approved")
    assert refused.code == "approval_required" and refused.policies == ("utilization-review",)
    assert current(app, case.id).state == "authorization_pending"
    (request_id,) = approvals.hold_transition(app.deps, ADMIN, case.id, "authorization_approved")

    queue = approvals.my_queue(app.deps, reviewer)
    assert [item["id"] for item in queue] == [request_id]
    decided = approvals.decide(app.deps, reviewer, request_id, "approve")

    assert decided["status"] == "approved" and decided["consumed_at"] is not None
    assert decided["decisions"][0]["role"] == "utilization_review"
    assert current(app, case.id).state == "clinical_triage"  # run as the requester
    (event,) = events(app, case.id, "approval.decided")
    assert event["payload"]["decision"] == "approved"
    with app.deps.read_uow() as uow:
        actions = [(e["action"], e["data_category"]) for e in uow.audit.for_case(case.id)]
    assert ("approval.request", "approval") in actions
    assert ("approval.approve", "approval") in actions


def test_urgent_referral_review_reminds_then_escalates_to_the_clinic_manager(
    app: App, clock: ManualClock
) -> None:
    add_user(app, "uma.review", "utilization_review")
    manager = add_user(app, "mia.manager", "clinic_manager", (CLINIC,))
    elsewhere = add_user(app, "max.manager", "clinic_manager", ("lakeside-clinic",))
    case = to_authorization_pending(app, "urgent")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    worker = build_worker(app)
    with pytest.raises(PermissionDenied):
        approvals.decide(app.deps, manager, request_id, "approve")  # not escalated yet

    clock.advance(minutes=31)
    worker.run_until_idle()
    worker.run_until_idle()  # a timer fires once, however often the worker looks
    reminders = [n for n in notifications(app, case.id) if n["subject"].startswith("Reminder")]
    assert [n["recipient"] for n in reminders] == ["role:utilization_review"]

    clock.advance(minutes=30)
    worker.run_until_idle()
    assert approvals.get_approval(app.deps, ADMIN, request_id)["escalation_level"] == 1
    escalations = [n for n in notifications(app, case.id) if n["subject"].startswith("Escalated")]
    assert [n["recipient"] for n in escalations] == ["role:clinic_manager"]
    with pytest.raises(OutOfReach):
        approvals.decide(app.deps, elsewhere, request_id, "approve")  # another clinic's
    decided = approvals.decide(app.deps, manager, request_id, "approve")

    assert decided["status"] == "approved"
    assert current(app, case.id).state == "clinical_triage"
    with app.deps.read_uow() as uow:
        pending = [
            t
            for t in uow.timers.for_case(case.id)
            if t["kind"] == "approval" and t["status"] == "pending"
        ]
    assert pending == []


def test_out_of_network_referral_waits_for_the_clinic_manager_before_the_patient_hears(
    app: App,
) -> None:
    manager = add_user(app, "mia.manager", "clinic_manager", (CLINIC,))
    scheduler = add_user(app, "sid.scheduler", "scheduler")
    patient = {**referral_payload()["patient"], "email": "ada@example.org"}  # type: ignore[dict-item]
    case = new_referral(app, patient=patient)
    move(
        app,
        ADMIN,
        case.id,
        "begin_review",
        "documentation_complete",
        "eligible_no_authorization",
        "triage_accept",
    )
    case = update_case(
        app.deps,
        ADMIN,
        case.id,
        current(app, case.id).version,
        ReferralChanges(network_status="out_of_network"),
    )
    move(app, scheduler, case.id, "schedule_appointment", changes=APPOINTMENT)
    build_worker(app).run_until_idle()  # the booking rule wants to e-mail the patient
    assert not [n for n in notifications(app, case.id) if n["recipient"] == "ada@example.org"]

    refused = refused_transition(app, scheduler, case.id, "notify_patient")
    (request_id,) = refused.request_ids  # the held e-mail's request guards this too
    approvals.decide(app.deps, manager, request_id, "approve")
    sent = [n for n in notifications(app, case.id) if n["recipient"] == "ada@example.org"]
    assert len(sent) == 1 and sent[0]["channel"] == "email"

    assert move(app, scheduler, case.id, "notify_patient").state == "patient_notified"
    assert approvals.get_approval(app.deps, ADMIN, request_id)["consumed_at"] is not None


def test_requester_may_not_approve_their_own_request(app: App) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, reviewer, case.id, "authorization_approved")
    before = vote_count(app)
    with pytest.raises(PermissionDenied, match="segregation of duties"):
        approvals.decide(app.deps, reviewer, request_id, "approve")
    assert vote_count(app) == before
    assert approvals.get_approval(app.deps, ADMIN, request_id)["status"] == "pending"


TWO_STEPS = """
kind: approvals
key: referral-approvals
version: 2
case_type: referral
policies:
  - key: two-reviews
    applies_to: {transitions: [authorization_approved]}
    steps:
      - name: first
        reviewers: [{role: utilization_review}]
      - name: second
        reviewers: [{role: utilization_review}]
"""


def test_one_person_may_not_approve_two_steps_of_one_request(app: App, clock: ManualClock) -> None:
    app.automation.store(TWO_STEPS, "two-steps.yaml", "ada.admin", clock.now(), activate=True)
    first = add_user(app, "uma.review", "utilization_review")
    second = add_user(app, "ulf.review", "utilization_review")
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    assert approvals.decide(app.deps, first, request_id, "approve")["step"]["name"] == "second"

    with pytest.raises(PermissionDenied, match="two steps"):
        approvals.decide(app.deps, first, request_id, "approve")
    assert approvals.decide(app.deps, second, request_id, "approve")["status"] == "approved"


def test_delegate_decides_on_behalf_of_the_reviewer_only_within_the_window(
    app: App, clock: ManualClock
) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    delegate = add_user(app, "fin.finance", "finance")
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    approval_delegations.add_delegation(
        app.deps,
        reviewer,
        "fin.finance",
        clock.now() + timedelta(hours=1),
        clock.now() + timedelta(days=2),
        "annual leave",
    )
    with pytest.raises(PermissionDenied):
        approvals.decide(app.deps, delegate, request_id, "approve")  # not started yet

    clock.advance(hours=2)
    assert [i["id"] for i in approvals.my_queue(app.deps, delegate)] == [request_id]
    decided = approvals.decide(app.deps, delegate, request_id, "approve")

    (vote,) = decided["decisions"]
    assert (vote["by"], vote["on_behalf_of"], vote["role"]) == (
        "fin.finance",
        "uma.review",
        "utilization_review",
    )


def test_fallback_approver_steps_in_only_when_nobody_eligible_is_available(
    app: App, clock: ManualClock
) -> None:
    operations = add_user(app, "otto.ops", "operations_manager")
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    reviewer = add_user(app, "uma.review", "utilization_review")
    with pytest.raises(PermissionDenied):
        approvals.decide(app.deps, operations, request_id, "approve")  # uma is available

    approval_delegations.add_delegation(
        app.deps, reviewer, None, clock.now(), clock.now() + timedelta(days=1), "sick"
    )
    decided = approvals.decide(app.deps, operations, request_id, "approve")
    assert decided["status"] == "approved"
    assert decided["decisions"][0]["group"] is None  # cast with fallback authority


def test_information_request_holds_the_approval_until_the_requester_resubmits(app: App) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    manager = add_user(app, "mia.manager", "clinic_manager", (CLINIC,))
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, manager, case.id, "authorization_approved")
    held = approvals.decide(app.deps, reviewer, request_id, "request_information", "Need the 278")
    assert held["status"] == "on_hold"
    with pytest.raises(ApprovalConflict):
        approvals.decide(app.deps, reviewer, request_id, "approve")
    with pytest.raises(PermissionDenied):
        approvals.resubmit(app.deps, reviewer, request_id, "not mine to answer")

    approvals.resubmit(app.deps, manager, request_id, "278 response attached")
    assert approvals.decide(app.deps, reviewer, request_id, "approve")["status"] == "approved"


def test_decision_on_a_closed_approval_is_refused_and_changes_nothing(app: App) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    other = add_user(app, "ulf.review", "utilization_review")
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    rejected = approvals.decide(app.deps, reviewer, request_id, "reject", "Not medically needed")
    assert rejected["status"] == "rejected"
    before = vote_count(app)
    with pytest.raises(ApprovalClosed, match="already rejected"):
        approvals.decide(app.deps, other, request_id, "approve")
    assert vote_count(app) == before
    assert current(app, case.id).state == "authorization_pending"


@pytest.mark.parametrize(
    ("decision", "reason", "field"),
    [
        ("reject", None, "reason"),
        ("request_information", "  ", "reason"),
        ("maybe", "x", "decision"),
    ],
)
def test_bad_decisions_name_the_field_and_change_nothing(
    app: App, decision: str, reason: str | None, field: str
) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    with pytest.raises(InvalidInput) as refused:
        approvals.decide(app.deps, reviewer, request_id, decision, reason)
    assert [p.field for p in refused.value.problems] == [field]
    assert vote_count(app) == 0


def test_reviewer_outside_the_clinic_cannot_reach_the_approval(app: App) -> None:
    stranger = add_user(app, "uli.review", "utilization_review", ("lakeside-clinic",))
    case = to_authorization_pending(app, "routine")
    request_id = request_for(app, ADMIN, case.id, "authorization_approved")
    with pytest.raises(OutOfReach):
        approvals.decide(app.deps, stranger, request_id, "approve")
    assert approvals.my_queue(app.deps, stranger) == []


@pytest.mark.parametrize(
    ("delegate", "start_hours", "end_hours", "field"),
    [
        ("uma.review", 1, 5, "delegate"),
        ("fin.finance", 5, 1, "ends_at"),
        ("nobody", 1, 5, "delegate"),
    ],
)
def test_bad_delegations_are_refused_with_the_field_named(
    app: App, clock: ManualClock, delegate: str, start_hours: int, end_hours: int, field: str
) -> None:
    reviewer = add_user(app, "uma.review", "utilization_review")
    add_user(app, "fin.finance", "finance")
    with pytest.raises(InvalidInput) as refused:
        approval_delegations.add_delegation(
            app.deps,
            reviewer,
            delegate,
            clock.now() + timedelta(hours=start_hours),
            clock.now() + timedelta(hours=end_hours),
        )
    assert [p.field for p in refused.value.problems] == [field]
    assert approval_delegations.list_delegations(app.deps, reviewer) == []


def test_refused_transition_writes_nothing_of_its_own(app: App) -> None:
    case = to_authorization_pending(app, "routine")
    refused_transition(app, ADMIN, case.id, "authorization_approved")
    with app.engine.connect() as connection:
        requests = connection.execute(select(func.count()).select_from(approval_requests))
        assert requests.scalar_one() == 0
    assert queries.get_case(app.deps, ADMIN, case.id)[0].version == case.version
