"""Record rules, field rules and break-glass through the use cases, on SQLite and
PostgreSQL: who reaches which case, what they see of it, and what is on record."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from careloop.adapters.db.automation_tables import notifications
from careloop.adapters.db.cases import CaseFilter
from careloop.adapters.db.tables import audit_log, outbox
from careloop.bootstrap import App
from careloop.domain.access import Actor
from careloop.domain.errors import InvalidInput, OutOfReach, PermissionDenied
from careloop.services import attachments, break_glass, queries
from careloop.services.cases import assign_case, create_referral
from careloop.services.ports import ManualClock
from careloop.services.referral_input import validate_referral
from tests.conftest import referral_payload


def staff(role: str, user_id: int, username: str, locations: tuple[str, ...] = (),
          teams: tuple[str, ...] = ()) -> Actor:
    return Actor(user_id=user_id, username=username, roles=frozenset({role}),
                 source_address="10.0.0.9", locations=frozenset(locations),
                 teams=frozenset(teams))


NORTH_INTAKE = staff("intake_coordinator", 20, "nia.intake", ("North Clinic",))
SOUTH_TRIAGE = staff("clinical_triage", 21, "dr.sol", ("South Clinic",))
CARDIO_TEAM = staff("clinical_triage", 22, "dr.teamwork", (), ("cardiology-triage",))
PARTNER = staff("integration_client", 23, "acme.portal", ("*",))
OPS = staff("operations_manager", 24, "olga.ops")
NORTH_COORD = staff("referral_coordinator", 25, "cora.north", ("North Clinic",))


def open_case(app: App, actor: Actor, **overrides: object) -> int:
    payload = referral_payload(clinic="North Clinic", **overrides)
    case, _ = create_referral(app.deps, actor, validate_referral(payload))
    return case.id


def listed_ids(app: App, actor: Actor) -> set[int]:
    rows, _ = queries.list_cases(app.deps, actor, CaseFilter(), 200, None)
    return {row["id"] for row in rows}


def test_staff_at_another_clinic_neither_read_nor_list_the_case(app: App) -> None:
    case_id = open_case(app, NORTH_INTAKE)

    with pytest.raises(OutOfReach, match=f"case {case_id} does not exist"):
        queries.get_case(app.deps, SOUTH_TRIAGE, case_id)
    with pytest.raises(OutOfReach):
        attachments.add_note(app.deps, SOUTH_TRIAGE, case_id, "looking around")

    assert case_id not in listed_ids(app, SOUTH_TRIAGE)
    assert case_id in listed_ids(app, NORTH_INTAKE)
    assert case_id in listed_ids(app, OPS)


def test_a_case_routed_to_a_team_reaches_the_team_wherever_its_members_work(app: App) -> None:
    routed = open_case(app, NORTH_INTAKE, team="cardiology-triage")
    other = open_case(app, NORTH_INTAKE, team="neurology-triage")

    case, _ = queries.get_case(app.deps, CARDIO_TEAM, routed)
    assert case.id == routed
    assert listed_ids(app, CARDIO_TEAM) == {routed}
    with pytest.raises(OutOfReach):
        queries.get_case(app.deps, CARDIO_TEAM, other)


def test_assigning_a_case_brings_it_into_the_assignees_reach(app: App) -> None:
    case_id = open_case(app, NORTH_INTAKE)
    assert case_id not in listed_ids(app, SOUTH_TRIAGE)

    assign_case(app.deps, NORTH_COORD, case_id, 1, "dr.sol")

    assert case_id in listed_ids(app, SOUTH_TRIAGE)
    assert queries.get_case(app.deps, SOUTH_TRIAGE, case_id)[0].assignee == "dr.sol"


def test_an_external_partner_sees_only_the_referrals_it_submitted(app: App) -> None:
    own = open_case(app, PARTNER)
    staffs = open_case(app, NORTH_INTAKE)

    assert listed_ids(app, PARTNER) == {own}
    with pytest.raises(OutOfReach):
        queries.read_case_part(app.deps, PARTNER, staffs, "history")


def test_a_refused_read_writes_nothing(app: App) -> None:
    case_id = open_case(app, NORTH_INTAKE)
    with app.engine.connect() as connection:
        before = len(connection.execute(select(audit_log.c.seq)).all())

    with pytest.raises(OutOfReach):
        queries.get_case(app.deps, SOUTH_TRIAGE, case_id)

    with app.engine.connect() as connection:
        assert len(connection.execute(select(audit_log.c.seq)).all()) == before


def test_finance_lists_masked_mrns_and_reads_notes_without_their_text(app: App) -> None:
    finance = staff("finance", 26, "fay.finance", ("North Clinic",))
    case_id = open_case(app, NORTH_INTAKE)
    attachments.add_note(app.deps, NORTH_INTAKE, case_id, "Patient reports chest pain")

    rows, _ = queries.list_cases(app.deps, finance, CaseFilter(), 50, None)
    notes = queries.read_case_part(app.deps, finance, case_id, "notes")
    full_notes = queries.read_case_part(app.deps, NORTH_INTAKE, case_id, "notes")

    mrn = str(referral_payload()["patient"]["mrn"])  # type: ignore[index]
    assert [row["patient_ref"] for row in rows] == ["****" + mrn[-4:]]
    assert notes[0]["body"] is None and notes[0]["masked"] is True
    assert full_notes[0]["body"] == "Patient reports chest pain"


def test_break_glass_opens_one_case_for_a_limited_time_on_record_and_alerted(
        app: App, clock: ManualClock) -> None:
    case_id = open_case(app, NORTH_INTAKE)
    with pytest.raises(OutOfReach):
        queries.get_case(app.deps, SOUTH_TRIAGE, case_id)

    grant = break_glass.break_glass(app.deps, SOUTH_TRIAGE, case_id,
                                    "Patient collapsed in the South ED, need history", 15)
    case, _ = queries.get_case(app.deps, SOUTH_TRIAGE, case_id)
    assert case.id == case_id and grant["case_id"] == case_id

    clock.advance(minutes=16)
    with pytest.raises(OutOfReach):
        queries.get_case(app.deps, SOUTH_TRIAGE, case_id)

    with app.engine.connect() as connection:
        entries = connection.execute(
            select(audit_log.c.action, audit_log.c.outcome, audit_log.c.reason)
            .where(audit_log.c.actor_name == "dr.sol")).all()
        alerts = connection.execute(
            select(notifications.c.recipient, notifications.c.subject)
            .where(notifications.c.case_id == case_id)).all()
        events = connection.execute(
            select(outbox.c.event_type).where(outbox.c.case_id == case_id)).scalars().all()
    assert ("access.break_glass", "success",
            "Patient collapsed in the South ED, need history") in entries
    assert ("case.read", "break_glass",
            "break-glass: Patient collapsed in the South ED, need history") in entries
    assert alerts == [("role:administrator",
                       f"Break-glass access to case {case_id} by dr.sol")]
    assert "access.break_glass" in events


def test_break_glass_needs_a_real_reason_a_short_window_and_the_right_role(app: App) -> None:
    case_id = open_case(app, NORTH_INTAKE)
    scheduler = staff("scheduler", 27, "sid.south", ("South Clinic",))

    with pytest.raises(InvalidInput) as refused:
        break_glass.break_glass(app.deps, SOUTH_TRIAGE, case_id, "because", 600)
    with pytest.raises(PermissionDenied):
        break_glass.break_glass(app.deps, scheduler, case_id, "Patient collapsed in the ED", 10)

    assert {p.field for p in refused.value.problems} == {"reason", "minutes"}
    with pytest.raises(OutOfReach):
        queries.get_case(app.deps, SOUTH_TRIAGE, case_id)


def test_a_queue_filtered_to_a_clinic_shows_only_what_the_actor_reaches(app: App) -> None:
    north = open_case(app, NORTH_INTAKE)
    south_case, _ = create_referral(
        app.deps, OPS, validate_referral(referral_payload(clinic="South Clinic")))

    def queue(actor: Actor, clinic: str) -> set[int]:
        rows, _ = queries.list_cases(app.deps, actor, CaseFilter(clinic=clinic), 200, None)
        return {row["id"] for row in rows}

    assert queue(NORTH_INTAKE, "North Clinic") == {north}
    assert queue(NORTH_INTAKE, "South Clinic") == set()
    assert queue(SOUTH_TRIAGE, "South Clinic") == {south_case.id}
    assert queue(OPS, "North Clinic") == {north}
