"""Who may do what over HTTP: bearer-token authentication and role permissions."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest

from careloop.domain.access import SYSTEM_ACTOR, Role
from careloop.services import accounts
from careloop.services.ports import ManualClock
from tests.conftest import referral_payload
from tests.e2e.conftest import Clients, Server, case_count

REFERRALS = "/api/v1/referrals"
PROBLEM_JSON = "application/problem+json"
PDF = b"%PDF-1.4\n%%EOF\n"






@pytest.fixture
def case_id(api: Clients) -> int:
    response = api("intake_coordinator").post(REFERRALS, json=referral_payload())
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def get_with_token(server: Server, token: str | None, path: str = REFERRALS,
                   scheme: str = "Bearer") -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}".strip()} if token is not None else {}
    with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as client:
        return client.get(path)


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(f"/{code}")



def version_of(api: Clients, case_id: int) -> int:
    return int(api("administrator").get(f"{REFERRALS}/{case_id}").json()["version"])


# --- authentication ---------------------------------------------------------------------


def test_a_request_without_a_token_is_a_401_problem_asking_for_a_bearer_token(
        shared_server: Server) -> None:
    response = get_with_token(shared_server, None)

    assert_problem(response, 401, "not_authenticated")
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("scheme", "token"),
    [
        pytest.param("Bearer", "clp_" + "A" * 43, id="unknown-token"),
        pytest.param("Bearer", "not-a-careloop-token", id="malformed-token"),
        pytest.param("Bearer", "clp_" + "A" * 200, id="overlong-token"),
        pytest.param("Basic", "dXNlcjpwYXNz", id="basic-scheme"),
        pytest.param("Bearer", "", id="empty-token"),
    ],
)
def test_a_request_with_a_bad_token_is_a_401_problem(
        shared_server: Server, scheme: str, token: str) -> None:
    response = get_with_token(shared_server, token, scheme=scheme)

    assert_problem(response, 401, "not_authenticated")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_an_unauthenticated_create_writes_nothing(
        shared_server: Server, api: Clients) -> None:
    before = case_count(api)

    with httpx.Client(base_url=shared_server.base_url, timeout=10) as anonymous:
        response = anonymous.post(REFERRALS, json=referral_payload())

    assert_problem(response, 401, "not_authenticated")
    assert case_count(api) == before


def test_a_token_past_its_expiry_is_a_401_problem(server: Server, clock: ManualClock) -> None:
    # A fresh token, never presented before the clock moves: the authenticator caches hits.
    token = accounts.create_token(server.app.deps, SYSTEM_ACTOR, "user.scheduler", "short",
                                  timedelta(hours=1))
    clock.advance(hours=1, seconds=1)

    response = get_with_token(server, token)

    assert_problem(response, 401, "not_authenticated")
    assert "expired" in response.json()["detail"]


def test_a_token_within_its_lifetime_is_accepted(server: Server, clock: ManualClock) -> None:
    token = accounts.create_token(server.app.deps, SYSTEM_ACTOR, "user.scheduler", "short",
                                  timedelta(hours=1))
    clock.advance(minutes=59)

    response = get_with_token(server, token, "/api/v1/me")

    assert response.status_code == 200, response.text
    assert response.json()["username"] == "user.scheduler"
    assert response.json()["roles"] == ["scheduler"]


def test_signing_in_with_the_right_password_issues_a_working_token(server: Server) -> None:
    password = secrets.token_urlsafe(16)
    accounts.add_user(server.app.deps, SYSTEM_ACTOR, server.app.hashing, "sam.scheduler",
                      "Sam", ["scheduler"], password)
    with httpx.Client(base_url=server.base_url, timeout=10) as anonymous:
        signed_in = anonymous.post("/api/v1/auth/login",
                                   json={"username": "sam.scheduler", "password": password})

    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["token_type"] == "bearer"
    me = get_with_token(server, signed_in.json()["access_token"], "/api/v1/me")
    assert me.status_code == 200
    assert me.json()["username"] == "sam.scheduler"


@pytest.mark.parametrize(
    ("username", "password"),
    [("sam.scheduler", "wrong password!"), ("nobody.here", "irrelevant password")],
    ids=["wrong-password", "unknown-user"],
)
def test_signing_in_with_wrong_credentials_is_a_401_problem(
        server: Server, username: str, password: str) -> None:
    accounts.add_user(server.app.deps, SYSTEM_ACTOR, server.app.hashing, "sam.scheduler",
                      "Sam", ["scheduler"], "the right password")
    with httpx.Client(base_url=server.base_url, timeout=10) as anonymous:
        response = anonymous.post("/api/v1/auth/login",
                                  json={"username": username, "password": password})

    assert_problem(response, 401, "not_authenticated")


# --- permissions ------------------------------------------------------------------------


def test_every_staff_role_may_read_a_referral_at_its_location(
        api: Clients, case_id: int) -> None:
    for role in Role:
        if role is Role.INTEGRATION_CLIENT:
            continue
        response = api(role.value).get(f"{REFERRALS}/{case_id}")
        assert response.status_code == 200, f"{role.value}: {response.text}"
        assert response.json()["id"] == case_id


def test_an_integration_client_reads_only_the_referrals_it_submitted(
        api: Clients, case_id: int) -> None:
    own = api("integration_client").post(REFERRALS, json=referral_payload()).json()["id"]

    assert api("integration_client").get(f"{REFERRALS}/{own}").status_code == 200
    assert_problem(api("integration_client").get(f"{REFERRALS}/{case_id}"), 404, "not_found")


@pytest.mark.parametrize("role", ["finance", "auditor", "clinical_triage", "scheduler",
                                  "utilization_review"])
def test_roles_without_intake_duties_cannot_create_referrals(api: Clients, role: str) -> None:
    before = case_count(api)

    response = api(role).post(REFERRALS, json=referral_payload())

    assert_problem(response, 403, "permission_denied")
    assert case_count(api) == before


@pytest.mark.parametrize("role", ["intake_coordinator", "referral_coordinator",
                                  "integration_client", "administrator"])
def test_intake_roles_and_integrations_may_create_referrals(api: Clients, role: str) -> None:
    response = api(role).post(REFERRALS, json=referral_payload())

    assert response.status_code == 201, response.text


def test_the_auditor_can_read_the_audit_trail_of_a_referral(
        api: Clients, case_id: int) -> None:
    api("scheduler").get(f"{REFERRALS}/{case_id}")

    response = api("auditor").get(f"{REFERRALS}/{case_id}/audit")

    assert response.status_code == 200, response.text
    trail = response.json()["items"]
    assert ("case.create", "user.intake_coordinator") in {
        (entry["action"], entry["actor_name"]) for entry in trail}
    assert ("case.read", "user.scheduler") in {
        (entry["action"], entry["actor_name"]) for entry in trail}
    assert all(len(entry["hash"]) == 64 for entry in trail)


@pytest.mark.parametrize("role", ["clinical_triage", "intake_coordinator", "finance",
                                  "scheduler"])
def test_working_roles_cannot_read_the_audit_trail(
        api: Clients, case_id: int, role: str) -> None:
    response = api(role).get(f"{REFERRALS}/{case_id}/audit")

    assert_problem(response, 403, "permission_denied")


def test_an_intake_coordinator_cannot_assign_a_referral(api: Clients, case_id: int) -> None:
    response = api("intake_coordinator").post(f"{REFERRALS}/{case_id}/assignment",
                                              json={"version": 1, "assignee": "ian.intake"})

    assert_problem(response, 403, "permission_denied")
    case = api("administrator").get(f"{REFERRALS}/{case_id}").json()
    assert case["assignee"] is None
    assert case["version"] == 1


def test_a_referral_coordinator_can_assign_and_unassign_a_referral(
        api: Clients, case_id: int) -> None:
    coordinator = api("referral_coordinator")

    assigned = coordinator.post(f"{REFERRALS}/{case_id}/assignment",
                                json={"version": 1, "assignee": "cora.coordinator"})
    unassigned = coordinator.post(f"{REFERRALS}/{case_id}/assignment",
                                  json={"version": 2, "assignee": None})

    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignee"] == "cora.coordinator"
    assert assigned.json()["version"] == 2
    assert unassigned.json()["assignee"] is None
    assert unassigned.json()["version"] == 3
    trail = api("auditor").get(f"{REFERRALS}/{case_id}/audit").json()["items"]
    assignments = [entry["detail"] for entry in trail if entry["action"] == "case.assign"]
    # both happen at the same instant of the test clock, so compare without order
    assert sorted(assignments, key=str) == sorted(
        [{"from": None, "to": "cora.coordinator"}, {"from": "cora.coordinator", "to": None}],
        key=str)


@pytest.mark.parametrize(
    ("role", "method", "suffix", "body"),
    [
        pytest.param("finance", "post", "/notes", {"body": "Balance overdue"},
                     id="finance-adds-note"),
        pytest.param("auditor", "post", "/tasks", {"title": "Look into this"},
                     id="auditor-adds-task"),
        pytest.param("integration_client", "post", "/tasks", {"title": "Sync"},
                     id="integration-adds-task"),
        pytest.param("finance", "get", "/documents", None, id="finance-lists-documents"),
        pytest.param("auditor", "get", "/documents", None, id="auditor-lists-documents"),
        pytest.param("integration_client", "get", "/documents", None,
                     id="integration-lists-documents"),
        pytest.param("auditor", "post", "/transitions",
                     {"transition": "begin_review", "version": 1}, id="auditor-transitions"),
        pytest.param("integration_client", "post", "/transitions",
                     {"transition": "begin_review", "version": 1},
                     id="integration-transitions"),
        pytest.param("finance", "patch", "", {"version": 1, "changes": {"reason": "x"}},
                     id="finance-changes-fields"),
    ],
)
def test_roles_are_refused_actions_they_are_not_granted_and_nothing_changes(
        api: Clients, case_id: int, role: str, method: str, suffix: str,
        body: dict[str, Any] | None) -> None:
    kwargs = {"json": body} if body is not None else {}

    response = api(role).request(method.upper(), f"{REFERRALS}/{case_id}{suffix}", **kwargs)

    assert_problem(response, 403, "permission_denied")
    admin = api("administrator")
    assert version_of(api, case_id) == 1
    for part in ("notes", "tasks"):
        assert admin.get(f"{REFERRALS}/{case_id}/{part}").json()["items"] == []


def test_finance_cannot_upload_a_document(api: Clients, case_id: int) -> None:
    response = api("finance").post(
        f"{REFERRALS}/{case_id}/documents", data={"doc_type": "insurance_card"},
        files={"file": ("card.pdf", PDF, "application/pdf")})

    assert_problem(response, 403, "permission_denied")
    assert api("administrator").get(f"{REFERRALS}/{case_id}/documents").json()["items"] == []


def test_an_integration_client_can_attach_a_document_to_a_referral_it_sent(
        api: Clients) -> None:
    integration = api("integration_client")
    created = integration.post(REFERRALS, json=referral_payload(channel="fhir"))

    response = integration.post(
        f"{REFERRALS}/{created.json()['id']}/documents", data={"doc_type": "referral_letter"},
        files={"file": ("letter.pdf", PDF, "application/pdf")})

    assert response.status_code == 201, response.text
    assert response.json()["doc_type"] == "referral_letter"


def test_every_role_the_workflow_names_for_a_transition_may_attempt_it(
        shared_server: Server, api: Clients, case_id: int) -> None:
    """A role listed on a transition in the definition must hold the transition permission.

    Version 999 is stale, so each attempt gets past the permission check and stops at the
    version check without changing anything.
    """
    workflow = shared_server.app.deps.workflows.latest("referral")
    refused = []
    for transition in workflow.transitions.values():
        for role in sorted(transition.roles):
            response = api(role).post(f"{REFERRALS}/{case_id}/transitions",
                                      json={"transition": transition.name, "version": 999,
                                            "reason": "checking permissions"})
            if response.status_code == 403:
                refused.append((transition.name, role))
            else:
                assert response.json()["code"] == "stale_version", response.text

    assert refused == []
    assert version_of(api, case_id) == 1
