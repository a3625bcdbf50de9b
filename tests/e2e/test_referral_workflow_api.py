"""Moving referrals through the standard workflow over HTTP, and every way a move is refused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from careloop.adapters.db.audit_store import verify_audit_log
from careloop.services.ports import ManualClock
from tests.conftest import referral_payload
from tests.e2e.conftest import Clients, Server

REFERRALS = "/api/v1/referrals"
PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"

APPOINTMENT = {"specialist": "Dr. Priya Natarajan", "appointment_at": "2026-03-09T14:30:00Z"}

# (transition, role, resulting state, FHIR task / business / service-request status)
HAPPY_PATH = [
    ("begin_review", "intake_coordinator", "documentation_review",
     ("in-progress", "documentation-review", "active")),
    ("documentation_complete", "intake_coordinator", "eligibility_verification",
     ("in-progress", "eligibility-verification", "active")),
    ("eligible_no_authorization", "utilization_review", "clinical_triage",
     ("in-progress", "clinical-triage", "active")),
    ("triage_accept", "clinical_triage", "specialist_assignment",
     ("accepted", "specialist-assignment", "active")),
    ("schedule_appointment", "scheduler", "appointment_scheduled",
     ("in-progress", "appointment-scheduled", "active")),
    ("notify_patient", "scheduler", "patient_notified",
     ("in-progress", "patient-notified", "active")),
    ("complete", "scheduler", "completed", ("completed", "completed", "completed")),
]








def create(api: Clients, **overrides: object) -> int:
    response = api("intake_coordinator").post(REFERRALS, json=referral_payload(**overrides))
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def move(client: httpx.Client, case_id: int, transition: str, version: int,
         **extra: Any) -> httpx.Response:
    return client.post(f"{REFERRALS}/{case_id}/transitions",
                       json={"transition": transition, "version": version, **extra})


def upload_letter(api: Clients, case_id: int) -> None:
    response = api("intake_coordinator").post(
        f"{REFERRALS}/{case_id}/documents", data={"doc_type": "referral_letter"},
        files={"file": ("letter.pdf", PDF, "application/pdf")})
    assert response.status_code == 201, response.text


def advance(api: Clients, case_id: int, until: str) -> int:
    """Walk the happy path up to (not including) ``until``; returns the case version."""
    version = 1
    for transition, role, _, _ in HAPPY_PATH:
        if transition == until:
            return version
        if transition == "documentation_complete":
            upload_letter(api, case_id)
        extra = {"changes": APPOINTMENT} if transition == "schedule_appointment" else {}
        response = move(api(role), case_id, transition, version, **extra)
        assert response.status_code == 200, response.text
        version = response.json()["version"]
    raise AssertionError(f"{until} is not on the happy path")


def snapshot(api: Clients, case_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    admin = api("administrator")
    return (admin.get(f"{REFERRALS}/{case_id}").json(),
            admin.get(f"{REFERRALS}/{case_id}/history").json()["items"])


def transitions_audited(api: Clients, case_id: int) -> list[dict[str, Any]]:
    trail = api("auditor").get(f"{REFERRALS}/{case_id}/audit").json()["items"]
    return [entry for entry in trail if entry["action"] == "case.transition"]


def error_fields(response: httpx.Response) -> set[str]:
    return {error["field"] for error in response.json().get("errors", [])}


# --- the happy path ----------------------------------------------------------------------


def test_a_referral_travels_the_happy_path_to_completed_by_the_right_roles(
        shared_server: Server, api: Clients, shared_clock: ManualClock) -> None:
    case_id = create(api)
    version = 1
    for transition, role, state, (task, business, request) in HAPPY_PATH:
        shared_clock.advance(minutes=10)
        if transition == "documentation_complete":
            upload_letter(api, case_id)
        extra = {"changes": APPOINTMENT} if transition == "schedule_appointment" else {}

        response = move(api(role), case_id, transition, version, **extra)

        assert response.status_code == 200, f"{transition}: {response.text}"
        body = response.json()
        assert body["state"] == state
        assert body["version"] == version + 1
        assert body["fhir"] == {"task_status": task, "business_status": business,
                                "service_request_status": request}
        assert datetime.fromisoformat(body["state_entered_at"]) == shared_clock.now()
        version = body["version"]

    final, history = snapshot(api, case_id)
    assert final["state"] == "completed"
    assert final["state_kind"] == "closed"
    assert final["version"] == 1 + len(HAPPY_PATH)
    assert final["allowed_transitions"] == []
    assert final["sla_due_at"] is None
    assert final["referral"]["specialist"] == APPOINTMENT["specialist"]
    assert datetime.fromisoformat(final["referral"]["appointment_at"]) == datetime.fromisoformat(
        APPOINTMENT["appointment_at"])

    assert [(row["from_state"], row["to_state"], row["transition"], row["actor_name"])
            for row in history] == [
        (None, "intake_received", None, "user.intake_coordinator"),
        ("intake_received", "documentation_review", "begin_review", "user.intake_coordinator"),
        ("documentation_review", "eligibility_verification", "documentation_complete",
         "user.intake_coordinator"),
        ("eligibility_verification", "clinical_triage", "eligible_no_authorization",
         "user.utilization_review"),
        ("clinical_triage", "specialist_assignment", "triage_accept", "user.clinical_triage"),
        ("specialist_assignment", "appointment_scheduled", "schedule_appointment",
         "user.scheduler"),
        ("appointment_scheduled", "patient_notified", "notify_patient", "user.scheduler"),
        ("patient_notified", "completed", "complete", "user.scheduler"),
    ]

    trail = api("auditor").get(f"{REFERRALS}/{case_id}/audit").json()["items"]
    actions = [entry["action"] for entry in trail]
    assert actions.count("case.create") == 1
    assert actions.count("case.document.add") == 1
    moves = [entry for entry in trail if entry["action"] == "case.transition"]
    assert [(m["detail"]["transition"], m["detail"]["from"], m["detail"]["to"], m["actor_name"])
            for m in moves] == [
        (transition, before, after, f"user.{role}")
        for (transition, role, after, _), before in zip(
            HAPPY_PATH, ["intake_received"] + [step[2] for step in HAPPY_PATH[:-1]],
            strict=True)
    ]
    assert {entry["patient_ref"] for entry in trail} == {"MRN100234"}
    assert {entry["source_address"] for entry in trail} == {"127.0.0.1"}
    assert all(result.ok for result in verify_audit_log(shared_server.app.engine))


# --- optimistic concurrency -------------------------------------------------------------


def test_a_transition_on_a_stale_version_is_a_409_with_the_current_version(
        api: Clients) -> None:
    case_id = create(api)
    assert move(api("intake_coordinator"), case_id, "begin_review", 1).status_code == 200
    before = snapshot(api, case_id)

    response = move(api("intake_coordinator"), case_id, "cancel", 1, reason="duplicate")

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "stale_version"
    assert response.json()["current_version"] == 2
    assert snapshot(api, case_id) == before
    assert [m["detail"]["transition"] for m in transitions_audited(api, case_id)] == [
        "begin_review"]


def test_two_concurrent_transitions_on_one_version_let_exactly_one_win(
        shared_server: Server, api: Clients) -> None:
    case_id = create(api)

    def attempt(transition: str) -> httpx.Response:
        with shared_server.client("referral_coordinator") as client:
            return move(client, case_id, transition, 1, reason="racing")

    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(attempt, ["begin_review", "cancel"]))

    assert sorted(r.status_code for r in responses) == [200, 409]
    [loser] = [r for r in responses if r.status_code == 409]
    assert loser.json()["code"] == "stale_version"
    case, history = snapshot(api, case_id)
    assert case["version"] == 2
    assert len(history) == 2


# --- refused transitions write nothing --------------------------------------------------


def test_a_transition_not_allowed_from_the_current_state_is_a_409(api: Clients) -> None:
    case_id = create(api)
    before = snapshot(api, case_id)

    response = move(api("scheduler"), case_id, "complete", 1)

    assert response.status_code == 409
    assert response.json()["code"] == "transition_not_allowed"
    assert "begin_review" in response.json()["detail"]
    assert snapshot(api, case_id) == before


def test_an_unknown_transition_name_is_a_409_and_changes_nothing(api: Clients) -> None:
    case_id = create(api)
    before = snapshot(api, case_id)

    response = move(api("administrator"), case_id, "teleport_to_completed", 1)

    assert response.status_code == 409
    assert response.json()["code"] == "transition_not_allowed"
    assert snapshot(api, case_id) == before


def test_a_transition_by_a_role_the_definition_does_not_list_is_a_409_and_writes_nothing(
        api: Clients) -> None:
    case_id = create(api)
    before = snapshot(api, case_id)

    # schedulers may move cases, but not begin a documentation review
    response = move(api("scheduler"), case_id, "begin_review", 1)

    assert response.status_code == 409
    assert response.json()["code"] == "transition_not_allowed"
    assert "intake_coordinator" in response.json()["detail"]
    case, history = snapshot(api, case_id)
    assert (case, history) == before
    assert case["version"] == 1
    assert len(history) == 1
    assert transitions_audited(api, case_id) == []


def test_triage_decisions_are_refused_to_coordinators(api: Clients) -> None:
    case_id = create(api)
    version = advance(api, case_id, until="triage_accept")

    response = move(api("referral_coordinator"), case_id, "triage_accept", version)

    assert response.status_code == 409
    assert response.json()["code"] == "transition_not_allowed"
    assert snapshot(api, case_id)[0]["state"] == "clinical_triage"


def test_documentation_complete_without_a_referral_letter_is_a_422_naming_documents(
        api: Clients) -> None:
    case_id = create(api)
    assert move(api("intake_coordinator"), case_id, "begin_review", 1).status_code == 200
    before = snapshot(api, case_id)

    response = move(api("intake_coordinator"), case_id, "documentation_complete", 2)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "transition_guard_failed"
    assert error_fields(response) == {"documents"}
    assert "referral_letter" in response.json()["errors"][0]["problem"]
    assert snapshot(api, case_id) == before


def test_documentation_complete_requires_at_least_one_diagnosis(api: Clients) -> None:
    case_id = create(api, diagnoses=[])
    assert move(api("intake_coordinator"), case_id, "begin_review", 1).status_code == 200
    upload_letter(api, case_id)

    response = move(api("intake_coordinator"), case_id, "documentation_complete", 2)

    assert response.status_code == 422
    assert response.json()["code"] == "transition_guard_failed"
    assert "diagnoses" in response.json()["detail"]
    assert snapshot(api, case_id)[0]["state"] == "documentation_review"


def test_eligibility_without_payer_details_is_a_422_listing_the_missing_fields(
        api: Clients) -> None:
    case_id = create(api, payer=None)
    version = advance(api, case_id, until="eligible_no_authorization")
    before = snapshot(api, case_id)

    response = move(api("utilization_review"), case_id, "eligible_no_authorization", version)

    assert response.status_code == 422
    assert response.json()["code"] == "transition_guard_failed"
    assert error_fields(response) == {"payer.name", "payer.member_id"}
    assert snapshot(api, case_id) == before


def test_an_out_of_network_referral_fails_the_no_authorization_guard(api: Clients) -> None:
    case_id = create(api, network_status="out_of_network")
    version = advance(api, case_id, until="eligible_no_authorization")

    refused = move(api("utilization_review"), case_id, "eligible_no_authorization", version)
    needs_auth = move(api("utilization_review"), case_id, "eligible_authorization_required",
                      version)

    assert refused.status_code == 422
    assert refused.json()["code"] == "transition_guard_failed"
    assert "network_status" in refused.json()["detail"]
    assert needs_auth.status_code == 200, needs_auth.text
    assert needs_auth.json()["state"] == "authorization_pending"


def test_scheduling_without_specialist_and_time_is_a_422_listing_both(api: Clients) -> None:
    case_id = create(api)
    version = advance(api, case_id, until="schedule_appointment")
    before = snapshot(api, case_id)

    response = move(api("scheduler"), case_id, "schedule_appointment", version)

    assert response.status_code == 422
    assert response.json()["code"] == "transition_guard_failed"
    assert error_fields(response) == {"specialist", "appointment_at"}
    assert snapshot(api, case_id) == before


def test_changes_sent_with_a_refused_transition_are_not_saved(api: Clients) -> None:
    case_id = create(api)
    version = advance(api, case_id, until="schedule_appointment")
    before = snapshot(api, case_id)

    response = move(api("scheduler"), case_id, "schedule_appointment", version,
                    changes={"specialist": "Dr. Priya Natarajan"})

    assert response.status_code == 422
    assert error_fields(response) == {"appointment_at"}
    after = snapshot(api, case_id)
    assert after == before
    assert "specialist" not in after[0]["referral"]


def test_invalid_changes_sent_with_a_transition_are_a_422_naming_the_field(
        api: Clients) -> None:
    case_id = create(api)
    version = advance(api, case_id, until="schedule_appointment")

    response = move(api("scheduler"), case_id, "schedule_appointment", version,
                    changes={**APPOINTMENT, "appointment_at": "2026-02-30T10:00:00Z"})

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert error_fields(response) == {"changes.appointment_at"}
    assert snapshot(api, case_id)[0]["state"] == "specialist_assignment"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"transition": "begin_review", "version": 0}, "version"),
     ({"transition": "begin_review"}, "version"),
     ({"version": 1}, "transition"),
     ({"transition": "begin_review", "version": 1, "force": True}, "force")],
    ids=["version-zero", "version-missing", "transition-missing", "unknown-field"],
)
def test_a_malformed_transition_request_is_a_422_naming_the_field(
        api: Clients, body: dict[str, Any], field: str) -> None:
    case_id = create(api)
    before = snapshot(api, case_id)

    response = api("intake_coordinator").post(f"{REFERRALS}/{case_id}/transitions", json=body)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert error_fields(response) == {field}
    assert snapshot(api, case_id) == before


@pytest.mark.parametrize("reason", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_a_transition_that_requires_a_reason_is_a_422_without_one(
        api: Clients, reason: str | None) -> None:
    case_id = create(api)
    before = snapshot(api, case_id)
    extra = {} if reason is None else {"reason": reason}

    response = move(api("intake_coordinator"), case_id, "cancel", 1, **extra)

    assert response.status_code == 422
    assert response.json()["code"] == "transition_guard_failed"
    assert error_fields(response) == {"reason"}
    assert snapshot(api, case_id) == before


def test_a_reason_given_with_a_transition_is_kept_in_history_and_audit(api: Clients) -> None:
    case_id = create(api)

    response = move(api("intake_coordinator"), case_id, "cancel", 1,
                    reason="Patient moved out of state")

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert response.json()["fhir"]["service_request_status"] == "revoked"
    _, history = snapshot(api, case_id)
    assert history[-1]["reason"] == "Patient moved out of state"
    [audited] = transitions_audited(api, case_id)
    assert audited["reason"] == "Patient moved out of state"


def test_a_closed_referral_refuses_further_transitions_and_changes(api: Clients) -> None:
    case_id = create(api)
    assert move(api("intake_coordinator"), case_id, "cancel", 1,
                reason="duplicate").status_code == 200
    before = snapshot(api, case_id)

    moved = move(api("administrator"), case_id, "begin_review", 2)
    patched = api("administrator").patch(f"{REFERRALS}/{case_id}",
                                         json={"version": 2, "changes": {"reason": "again"}})

    assert moved.status_code == 409
    assert moved.json()["code"] == "transition_not_allowed"
    assert patched.status_code == 409
    assert patched.json()["code"] == "transition_not_allowed"
    assert snapshot(api, case_id) == before


# --- changing fields --------------------------------------------------------------------


def test_changing_a_field_bumps_the_version_and_is_audited(api: Clients) -> None:
    case_id = create(api)

    response = api("intake_coordinator").patch(
        f"{REFERRALS}/{case_id}",
        json={"version": 1, "changes": {"reason": "Chest pain at rest", "urgency": "emergent"}})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == 2
    assert body["state"] == "intake_received"
    assert body["referral"]["reason"] == "Chest pain at rest"
    assert body["referral"]["urgency"] == "emergent"
    trail = api("auditor").get(f"{REFERRALS}/{case_id}/audit").json()["items"]
    [update] = [entry for entry in trail if entry["action"] == "case.update"]
    assert update["detail"]["fields"] == ["reason", "urgency"]


def test_changing_a_field_on_a_stale_version_is_a_409(api: Clients) -> None:
    case_id = create(api)
    assert move(api("intake_coordinator"), case_id, "begin_review", 1).status_code == 200

    response = api("intake_coordinator").patch(
        f"{REFERRALS}/{case_id}", json={"version": 1, "changes": {"reason": "late edit"}})

    assert response.status_code == 409
    assert response.json()["code"] == "stale_version"
    assert response.json()["current_version"] == 2
    assert snapshot(api, case_id)[0]["referral"]["reason"] == referral_payload()["reason"]


def test_a_nested_change_is_revalidated_against_the_whole_referral(api: Clients) -> None:
    case_id = create(api)
    before = snapshot(api, case_id)

    response = api("intake_coordinator").patch(
        f"{REFERRALS}/{case_id}",
        json={"version": 1, "changes": {"patient": {"birth_date": "2999-01-01"}}})

    assert response.status_code == 422
    assert error_fields(response) == {"patient.birth_date"}
    assert snapshot(api, case_id) == before
