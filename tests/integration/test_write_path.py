"""The one write path on SQLite and PostgreSQL: state, history, audit and outbox commit
together, or not at all."""

import pytest
from sqlalchemy import func, select, text

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.adapters.db.tables import audit_log, case_history, cases, outbox
from careloop.bootstrap import App
from careloop.domain.errors import (
    GuardFailed,
    IdempotencyConflict,
    PermissionDenied,
    StaleVersion,
    TransitionNotAllowed,
)
from careloop.services import attachments, queries
from careloop.services.cases import assign_case, create_referral, transition_case
from careloop.services.ports import ManualClock
from careloop.services.referral_input import ReferralChanges, validate_referral
from tests.conftest import ADMIN, AUDITOR, INTAKE, SCHEDULER, TRIAGE, referral_payload
from tests.support.governance import store_and_activate


def _counts(app: App) -> dict[str, int]:
    with app.engine.connect() as connection:
        return {
            t.name: connection.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (cases, case_history, audit_log, outbox)
        }


def _create(app: App, **overrides: object) -> int:
    case, _ = create_referral(app.deps, INTAKE, validate_referral(referral_payload(**overrides)))
    return case.id


def test_create_writes_case_history_audit_and_outbox_in_one_transaction(app: App) -> None:
    case_id = _create(app)
    assert _counts(app) == {"cases": 1, "case_history": 1, "audit_log": 1, "outbox": 1}
    with app.engine.connect() as connection:
        event = connection.execute(select(outbox)).mappings().one()
        entry = connection.execute(select(audit_log)).mappings().one()
    assert event["event_type"] == "case.created" and event["case_id"] == case_id
    assert entry["action"] == "case.create" and entry["patient_ref"] == "MRN100234"
    assert entry["actor_name"] == "ian.intake" and entry["source_address"] == "127.0.0.1"


def test_a_new_case_starts_its_status_history_with_the_creator_and_no_previous_state(
    app: App, clock: ManualClock
) -> None:
    case_id = _create(app)
    history = queries.read_case_part(app.deps, ADMIN, case_id, "history")
    assert [
        (h["case_id"], h["from_state"], h["to_state"], h["transition"], h["actor_id"],
         h["actor_name"], h["reason"], h["occurred_at"])
        for h in history
    ] == [(case_id, None, "intake_received", None, INTAKE.user_id, "ian.intake", "",
           clock.now())]


def test_transition_by_allowed_role_moves_the_case_and_records_everything(
    app: App, clock: ManualClock
) -> None:
    case_id = _create(app)
    clock.advance(hours=2)
    case = transition_case(app.deps, INTAKE, case_id, "begin_review", 1)
    assert (case.state, case.version) == ("documentation_review", 2)
    history = queries.read_case_part(app.deps, ADMIN, case_id, "history")
    assert [(h["from_state"], h["to_state"]) for h in history] == [
        (None, "intake_received"),
        ("intake_received", "documentation_review"),
    ]
    assert history[1]["occurred_at"] == clock.now()


def test_stale_version_is_refused_and_changes_nothing(app: App) -> None:
    case_id = _create(app)
    transition_case(app.deps, INTAKE, case_id, "begin_review", 1)
    before = _counts(app)
    with pytest.raises(StaleVersion) as caught:
        transition_case(app.deps, INTAKE, case_id, "cancel", 1, "duplicate")
    assert caught.value.actual == 2
    assert _counts(app) == before


@pytest.mark.parametrize(
    "actor, name, error",
    [
        (INTAKE, "triage_accept", TransitionNotAllowed),  # wrong state
        (AUDITOR, "begin_review", PermissionDenied),  # role may not transition at all
        (TRIAGE, "begin_review", TransitionNotAllowed),  # role not listed on the transition
    ],
)
def test_refused_transitions_write_nothing(app: App, actor, name, error) -> None:
    case_id = _create(app)
    before = _counts(app)
    with pytest.raises(error):
        transition_case(app.deps, actor, case_id, name, 1)
    assert _counts(app) == before


def test_guard_failure_with_field_changes_rolls_back_the_changes(app: App) -> None:
    case_id = _create(app)
    transition_case(app.deps, INTAKE, case_id, "begin_review", 1)
    with pytest.raises(GuardFailed):
        transition_case(
            app.deps,
            INTAKE,
            case_id,
            "documentation_complete",
            2,
            changes=ReferralChanges(reason="changed"),
        )
    case, _ = queries.get_case(app.deps, ADMIN, case_id)
    assert case.data["reason"] == "Exertional chest pain, abnormal ECG"
    assert case.version == 2


def test_full_lifecycle_to_completed(app: App, clock: ManualClock) -> None:
    case_id = _create(app)
    steps = [(INTAKE, "begin_review", None)]
    version = 1
    for actor, name, changes in steps:
        version = transition_case(app.deps, actor, case_id, name, version, None, changes).version
    attachments.add_document(
        app.deps,
        INTAKE,
        case_id,
        "referral_letter",
        "letter.pdf",
        "application/pdf",
        b"%PDF-1.7 letter",
    )
    for actor, name, changes in [
        (INTAKE, "documentation_complete", None),
        (ADMIN, "eligible_no_authorization", None),
        (TRIAGE, "triage_accept", None),
        (
            SCHEDULER,
            "schedule_appointment",
            ReferralChanges(specialist="Dr. Heart", appointment_at=clock.now()),
        ),
        (SCHEDULER, "notify_patient", None),
        (SCHEDULER, "complete", None),
    ]:
        clock.advance(hours=3)
        version = transition_case(app.deps, actor, case_id, name, version, None, changes).version
    case, workflow = queries.get_case(app.deps, ADMIN, case_id)
    assert case.state == "completed" and workflow.states[case.state].terminal
    assert case.data["specialist"] == "Dr. Heart"
    assert len(queries.read_case_part(app.deps, ADMIN, case_id, "history")) == 8
    assert all(r.ok for r in verify_audit_log(app.engine))


def test_assignment_uses_optimistic_concurrency(app: App) -> None:
    case_id = _create(app)
    case = assign_case(app.deps, ADMIN, case_id, 1, "cora.coordinator")
    assert (case.assignee, case.version) == ("cora.coordinator", 2)
    with pytest.raises(StaleVersion):
        assign_case(app.deps, ADMIN, case_id, 1, "someone.else")


def test_idempotency_key_returns_the_first_result_or_refuses_a_new_body(app: App) -> None:
    payload = validate_referral(referral_payload())
    first, created = create_referral(app.deps, INTAKE, payload, "fax-2026-0001")
    again, created_again = create_referral(app.deps, INTAKE, payload, "fax-2026-0001")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        create_referral(
            app.deps,
            INTAKE,
            validate_referral(referral_payload(urgency="routine")),
            "fax-2026-0001",
        )
    assert _counts(app)["cases"] == 1


def test_reads_of_patient_data_are_audited(app: App) -> None:
    case_id = _create(app)
    queries.get_case(app.deps, ADMIN, case_id)
    queries.read_case_part(app.deps, ADMIN, case_id, "notes")
    with app.engine.connect() as connection:
        actions = connection.execute(
            select(audit_log.c.action, audit_log.c.actor_name, audit_log.c.data_category)
            .where(audit_log.c.case_id == case_id)
            .order_by(audit_log.c.occurred_at, audit_log.c.seq)
        ).all()
    assert ("case.read", "ada.admin", "demographics") in actions
    assert ("case.notes.read", "ada.admin", "clinical") in actions


def test_audit_log_rejects_update_and_delete_in_the_database(app: App) -> None:
    _create(app)
    for statement in ("UPDATE audit_log SET actor_name = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), app.engine.begin() as connection:
            connection.execute(text(statement))
    assert _counts(app)["audit_log"] == 1


def test_cases_pin_the_workflow_version_they_started_with(app: App, clock: ManualClock) -> None:
    case_id = _create(app)
    from careloop.adapters.definitions import shipped_definitions

    text_v1 = dict(shipped_definitions())["careloop/definitions/referral.yaml"]
    text_v2 = text_v1.replace("version: 1", "version: 2").replace(
        "    requires_fields: [patient.family_name, patient.birth_date, specialty]\n",
        "    requires_fields: [patient.family_name, patient.birth_date, specialty, specialist]\n",
    )
    store_and_activate(app, text_v2, "referral-v2.yaml")
    new_id = _create(app)
    old, _ = queries.get_case(app.deps, ADMIN, case_id)
    new, _ = queries.get_case(app.deps, ADMIN, new_id)
    assert (old.workflow_version, new.workflow_version) == (1, 2)
    transition_case(app.deps, INTAKE, case_id, "begin_review", 1)  # v1: no specialist needed
    with pytest.raises(GuardFailed):
        transition_case(app.deps, INTAKE, new_id, "begin_review", 1)
