"""Approvals over HTTP: a guarded transition answers 409 and opens the approval, the
reviewer's queue and decision, and every bad decision or delegation refused."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import referral_payload
from tests.e2e.conftest import Clients

REFERRALS = "/api/v1/referrals"
APPROVALS = "/api/v1/approvals"
DELEGATIONS = "/api/v1/delegations"
PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
APPOINTMENT = {"specialist": "Dr. Priya Natarajan", "appointment_at": "2026-03-09T14:30:00Z"}
PATH = [
    ("begin_review", "intake_coordinator"),
    ("documentation_complete", "intake_coordinator"),
    ("eligible_no_authorization", "utilization_review"),
    ("triage_accept", "clinical_triage"),
]


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def move(client: httpx.Client, case_id: int, transition: str, version: int, **extra: Any) -> Any:
    body = {"transition": transition, "version": version, **extra}
    return client.post(f"{REFERRALS}/{case_id}/transitions", json=body)


def scheduled_out_of_network(api: Clients) -> tuple[int, int]:
    """A referral found out of network after triage, now booked; (id, version)."""
    case_id = ok(api("intake_coordinator").post(REFERRALS, json=referral_payload()), 201)["id"]
    ok(
        api("intake_coordinator").post(
            f"{REFERRALS}/{case_id}/documents",
            data={"doc_type": "referral_letter"},
            files={"file": ("letter.pdf", PDF, "application/pdf")},
        ),
        201,
    )
    version = 1
    for transition, role in PATH:
        version = ok(move(api(role), case_id, transition, version))["version"]
    changes = {"version": version, "changes": {"network_status": "out_of_network"}}
    version = ok(api("referral_coordinator").patch(f"{REFERRALS}/{case_id}", json=changes))[
        "version"
    ]
    booked = move(api("scheduler"), case_id, "schedule_appointment", version, changes=APPOINTMENT)
    return case_id, ok(booked)["version"]


def held_approval(api: Clients) -> tuple[int, int]:
    """(case id, approval id) of an out-of-network referral whose patient notice waits."""
    case_id, version = scheduled_out_of_network(api)
    refused = move(api("scheduler"), case_id, "notify_patient", version)
    assert refused.status_code == 409, refused.text
    (approval_id,) = refused.json()["approvals"]
    return case_id, approval_id


def test_notifying_an_out_of_network_patient_waits_for_the_clinic_manager(api: Clients) -> None:
    case_id, version = scheduled_out_of_network(api)

    refused = move(api("scheduler"), case_id, "notify_patient", version)

    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert (body["code"], body["policies"]) == ("approval_required", ["out-of-network-manager"])
    (approval_id,) = body["approvals"]
    assert ok(api("administrator").get(f"{REFERRALS}/{case_id}"))["state"] == (
        "appointment_scheduled"
    )
    queue = ok(api("clinic_manager").get(APPROVALS))["items"]
    assert approval_id in [item["id"] for item in queue]
    assert ok(api("utilization_review").get(APPROVALS))["items"] == []

    decided = ok(
        api("clinic_manager").post(
            f"{APPROVALS}/{approval_id}/decisions", json={"decision": "approve"}
        ),
        201,
    )

    assert decided["status"] == "approved"
    assert decided["decisions"][0]["role"] == "clinic_manager"
    assert ok(api("administrator").get(f"{REFERRALS}/{case_id}"))["state"] == "patient_notified"
    (listed,) = ok(api("auditor").get(f"{REFERRALS}/{case_id}/approvals"))["items"]
    assert listed["consumed_at"] is not None and listed["requester"] == "user.scheduler"


def test_a_second_refusal_points_at_the_same_open_approval(api: Clients) -> None:
    case_id, approval_id = held_approval(api)
    version = ok(api("administrator").get(f"{REFERRALS}/{case_id}"))["version"]
    again = move(api("referral_coordinator"), case_id, "notify_patient", version)
    assert (again.status_code, again.json()["approvals"]) == (409, [approval_id])


@pytest.mark.parametrize(
    ("role", "body", "status", "code", "field"),
    [
        ("clinic_manager", {"decision": "reject"}, 422, "invalid_input", "reason"),
        ("clinic_manager", {"decision": "request_information", "reason": " "}, 422,
         "invalid_input", "reason"),
        ("clinic_manager", {"decision": "perhaps"}, 422, "invalid_input", "decision"),
        ("finance", {"decision": "approve"}, 403, "permission_denied", None),
        ("scheduler", {"decision": "approve"}, 403, "permission_denied", None),
    ],
)  # fmt: skip
def test_bad_decisions_are_refused_and_change_nothing(
    api: Clients, role: str, body: dict[str, str], status: int, code: str, field: str | None
) -> None:
    _, approval_id = held_approval(api)
    refused = api(role).post(f"{APPROVALS}/{approval_id}/decisions", json=body)
    assert (refused.status_code, refused.json()["code"]) == (status, code)
    if field is not None:
        assert [e["field"] for e in refused.json()["errors"]] == [field]
    after = ok(api("auditor").get(f"{APPROVALS}/{approval_id}"))
    assert (after["status"], after["decisions"]) == ("pending", [])


def test_a_decision_on_a_closed_approval_is_a_conflict(api: Clients) -> None:
    _, approval_id = held_approval(api)
    rejection = {"decision": "reject", "reason": "Refer in network instead"}
    ok(api("clinic_manager").post(f"{APPROVALS}/{approval_id}/decisions", json=rejection), 201)
    late = api("operations_manager").post(
        f"{APPROVALS}/{approval_id}/decisions", json={"decision": "approve"}
    )
    assert (late.status_code, late.json()["code"]) == (409, "approval_closed")
    assert len(ok(api("auditor").get(f"{APPROVALS}/{approval_id}"))["decisions"]) == 1


def test_asking_for_an_approval_no_policy_requires_names_the_transition(api: Clients) -> None:
    case_id = ok(api("intake_coordinator").post(REFERRALS, json=referral_payload()), 201)["id"]
    refused = api("referral_coordinator").post(
        f"{REFERRALS}/{case_id}/approvals", json={"transition": "begin_review"}
    )
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["transition"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delegate": "user.clinic_manager", "starts_at": "2026-03-03T09:00:00Z",
          "ends_at": "2026-03-05T09:00:00Z"}, "delegate"),
        ({"delegate": "user.operations_manager", "starts_at": "2026-03-05T09:00:00Z",
          "ends_at": "2026-03-03T09:00:00Z"}, "ends_at"),
    ],
)  # fmt: skip
def test_bad_delegations_are_refused_with_the_field_named(
    api: Clients, body: dict[str, str], field: str
) -> None:
    before = ok(api("clinic_manager").get(DELEGATIONS))["items"]
    refused = api("clinic_manager").post(DELEGATIONS, json=body)
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == [field]
    assert ok(api("clinic_manager").get(DELEGATIONS))["items"] == before


def test_a_delegation_is_listed_for_both_people_and_can_be_ended(api: Clients) -> None:
    window = {
        "delegate": "user.operations_manager",
        "starts_at": "2026-03-02T08:00:00Z",
        "ends_at": "2026-03-20T18:00:00Z",
        "reason": "Conference",
    }
    created = ok(api("clinic_manager").post(DELEGATIONS, json=window), 201)
    assert created["delegator"] == "user.clinic_manager"
    received = ok(api("operations_manager").get(DELEGATIONS))["items"]
    assert created["id"] in [d["id"] for d in received]
    ended = ok(api("clinic_manager").delete(f"{DELEGATIONS}/{created['id']}"))
    assert ended["revoked_at"] is not None
    stranger = api("administrator").delete(f"{DELEGATIONS}/{created['id']}")
    assert stranger.status_code == 200  # a user administrator may end anyone's
