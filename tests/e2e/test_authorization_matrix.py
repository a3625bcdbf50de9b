"""The authorization matrix: every API endpoint x every role x a case at the user's own
and at another location, over HTTP, against the policy in careloop.domain.access
(roles grant actions) and careloop.domain.record_rules (which cases a role reaches).

"Other" is a case at another clinic, or, for the organisation-wide roles (administrator,
auditor, operations manager), a case of another organisation; for an integration client
"own" is a case it submitted and "other" one it did not.

Each endpoint is classified below by the action it needs. The endpoint list is read from
the running application's OpenAPI document, so an endpoint nobody classified fails the
test: a new route cannot ship without a decision about who may call it.

Allowed means the request got past authentication, the role check and the record rule
(any answer but 401, 403 and, for a case the role reaches, 404); the workflow may still
refuse it (409, 422) for its own reasons. Denied means 403, or 404 for a case outside
the reach (answered like a missing case on purpose). Zero unexpected allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from careloop.adapters.definitions import shipped_definitions
from careloop.bootstrap import App
from careloop.domain.access import GRANTS, SYSTEM_ACTOR, Action, Actor, Role
from careloop.domain.record_rules import ROLE_REACH, Reach, scope_of
from careloop.services import accounts, approvals, attachments, tokens
from careloop.services.cases import create_referral
from careloop.services.ports import ManualClock
from careloop.services.referral_input import validate_referral
from tests.conftest import START, make_app, referral_payload
from tests.e2e.conftest import start_server

OWN_CLINIC, OTHER_CLINIC = "North Clinic", "South Clinic"
PDF = b"%PDF-1.4\n%%EOF\n"
Body = Callable[["Context"], dict[str, Any]]


@dataclass(frozen=True)
class Endpoint:
    action: Action | None  # None: any signed-in user (self-service)
    case: bool = False  # names a case: the record rule decides too
    body: Body | None = None
    files: bool = False
    fresh: bool = False  # changes the case: each request gets a new one
    params: dict[str, str] = field(default_factory=dict)
    # The approval policy's reviewers, when only they may (beyond the role's grant).
    reviewers: frozenset[Role] | None = None
    # Only from a signed-in session, never with an API token (the matrix uses API tokens).
    session_only: bool = False


def _calendars(_: Context) -> dict[str, Any]:
    return {"text": shipped_definitions("calendars")[0][1]}


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    # referrals
    ("POST", "/api/v1/referrals"): Endpoint(
        Action.CASE_CREATE, body=lambda ctx: referral_payload(clinic=OWN_CLINIC)),
    ("GET", "/api/v1/referrals"): Endpoint(Action.CASE_READ),
    ("GET", "/api/v1/referrals/{case_id}"): Endpoint(Action.CASE_READ, case=True),
    ("PATCH", "/api/v1/referrals/{case_id}"): Endpoint(
        Action.CASE_UPDATE, case=True, fresh=True,
        body=lambda ctx: {"version": 1, "changes": {"urgency": "urgent"}}),
    ("POST", "/api/v1/referrals/{case_id}/transitions"): Endpoint(
        Action.CASE_TRANSITION, case=True, fresh=True,
        body=lambda ctx: {"transition": "begin_review", "version": 1}),
    # Bulk moves: the role is checked for the request; each item's record rule is answered
    # in that item's result (tests/integration/test_bulk_transitions.py).
    ("POST", "/api/v1/referrals/transitions"): Endpoint(
        Action.CASE_TRANSITION,
        body=lambda ctx: {"items": [{"id": 999_999, "transition": "begin_review", "version": 1}]}),
    ("POST", "/api/v1/referrals/{case_id}/assignment"): Endpoint(
        Action.CASE_ASSIGN, case=True, fresh=True,
        body=lambda ctx: {"version": 1, "assignee": "someone.else"}),
    ("GET", "/api/v1/referrals/{case_id}/history"): Endpoint(Action.CASE_READ, case=True),
    ("GET", "/api/v1/referrals/{case_id}/audit"): Endpoint(Action.AUDIT_READ, case=True),
    ("GET", "/api/v1/referrals/{case_id}/notes"): Endpoint(Action.CASE_READ, case=True),
    ("POST", "/api/v1/referrals/{case_id}/notes"): Endpoint(
        Action.CASE_NOTE, case=True, body=lambda ctx: {"body": "Called the patient"}),
    ("GET", "/api/v1/referrals/{case_id}/tasks"): Endpoint(Action.CASE_READ, case=True),
    ("POST", "/api/v1/referrals/{case_id}/tasks"): Endpoint(
        Action.CASE_TASK, case=True, body=lambda ctx: {"title": "Chase the imaging"}),
    ("GET", "/api/v1/referrals/{case_id}/documents"): Endpoint(
        Action.CASE_DOCUMENT_READ, case=True),
    ("POST", "/api/v1/referrals/{case_id}/documents"): Endpoint(
        Action.CASE_DOCUMENT_ADD, case=True, files=True),
    ("GET", "/api/v1/referrals/{case_id}/documents/{document_id}/content"): Endpoint(
        Action.CASE_DOCUMENT_READ, case=True),
    ("GET", "/api/v1/referrals/{case_id}/automation"): Endpoint(Action.CASE_READ, case=True),
    ("POST", "/api/v1/referrals/{case_id}/break-glass"): Endpoint(
        Action.BREAK_GLASS, fresh=True,
        body=lambda ctx: {"reason": "Patient collapsed in the emergency room", "minutes": 5}),
    ("GET", "/api/v1/access/break-glass"): Endpoint(Action.AUDIT_READ),
    # approvals
    ("GET", "/api/v1/approvals"): Endpoint(Action.APPROVAL_READ),
    ("GET", "/api/v1/approvals/{approval_id}"): Endpoint(Action.APPROVAL_READ, case=True),
    ("POST", "/api/v1/approvals/{approval_id}/decisions"): Endpoint(
        Action.APPROVAL_DECIDE, case=True, fresh=True,
        reviewers=frozenset({Role.CLINIC_MANAGER}),
        body=lambda ctx: {"decision": "reject", "reason": "Not medically necessary"}),
    ("POST", "/api/v1/approvals/{approval_id}/resubmission"): Endpoint(
        Action.APPROVAL_REQUEST, case=True, fresh=True,
        body=lambda ctx: {"reason": "Added the imaging report"}),
    ("GET", "/api/v1/referrals/{case_id}/approvals"): Endpoint(Action.APPROVAL_READ, case=True),
    ("POST", "/api/v1/referrals/{case_id}/approvals"): Endpoint(
        Action.APPROVAL_REQUEST, case=True, fresh=True,
        body=lambda ctx: {"transition": "notify_patient"}),
    ("POST", "/api/v1/delegations"): Endpoint(
        Action.DELEGATION_MANAGE,
        body=lambda ctx: {"starts_at": (START + timedelta(days=1)).isoformat(),
                          "ends_at": (START + timedelta(days=2)).isoformat(),
                          "reason": "Annual leave"}),
    ("GET", "/api/v1/delegations"): Endpoint(Action.DELEGATION_MANAGE),
    ("DELETE", "/api/v1/delegations/{delegation_id}"): Endpoint(Action.DELEGATION_MANAGE),
    # automation and webhooks
    ("GET", "/api/v1/automation/definitions"): Endpoint(Action.AUTOMATION_READ),
    ("POST", "/api/v1/automation/definitions"): Endpoint(
        Action.AUTOMATION_MANAGE, body=_calendars),
    ("GET", "/api/v1/automation/definitions/{kind}/{key}/{version}"): Endpoint(
        Action.AUTOMATION_READ),
    ("POST", "/api/v1/automation/definitions/validate"): Endpoint(
        Action.AUTOMATION_READ, body=_calendars),
    ("POST", "/api/v1/automation/definitions/{kind}/{key}/{version}/activate"): Endpoint(
        Action.AUTOMATION_MANAGE),
    ("GET", "/api/v1/webhooks/subscriptions"): Endpoint(Action.WEBHOOK_MANAGE),
    ("POST", "/api/v1/webhooks/subscriptions"): Endpoint(
        Action.WEBHOOK_MANAGE,
        body=lambda ctx: {"name": "ehr", "url": "https://ehr.example.org/hook",
                          "event_types": ["case.created"]}),
    ("POST", "/api/v1/webhooks/subscriptions/{subscription_id}/rotate-secret"): Endpoint(
        Action.WEBHOOK_MANAGE),
    ("POST", "/api/v1/webhooks/subscriptions/{subscription_id}/finish-rotation"): Endpoint(
        Action.WEBHOOK_MANAGE),
    ("POST", "/api/v1/webhooks/subscriptions/{subscription_id}/{state}"): Endpoint(
        Action.WEBHOOK_MANAGE),
    ("GET", "/api/v1/webhooks/deliveries"): Endpoint(Action.WEBHOOK_MANAGE),
    ("PUT", "/api/v1/webhooks/sources/{key}"): Endpoint(
        Action.WEBHOOK_MANAGE,
        body=lambda ctx: {"case_field": "data.case_id", "event_field": "type",
                          "events": ["scheduled"]}),
    ("GET", "/api/v1/dead-letters"): Endpoint(Action.AUTOMATION_MANAGE),
    ("POST", "/api/v1/dead-letters/replay"): Endpoint(
        Action.AUTOMATION_MANAGE, body=lambda ctx: {"kind": "events", "ids": []}),
    ("PUT", "/api/v1/specialists/{name}"): Endpoint(
        Action.AUTOMATION_MANAGE,
        body=lambda ctx: {"specialty": "cardiology", "clinics": [OWN_CLINIC],
                          "max_workload": 10, "open_slots": 3}),
    # governance and audit
    ("GET", "/api/v1/governance/changes"): Endpoint(Action.GOVERNANCE_READ),
    ("POST", "/api/v1/governance/changes"): Endpoint(
        Action.AUTOMATION_MANAGE,
        body=lambda ctx: {"kind": "calendars", "key": "calendars", "version": 1}),
    ("GET", "/api/v1/governance/changes/{change_id}"): Endpoint(Action.GOVERNANCE_READ),
    ("POST", "/api/v1/governance/definitions"): Endpoint(
        Action.AUTOMATION_MANAGE, body=_calendars),
    ("POST", "/api/v1/governance/changes/{change_id}/approve"): Endpoint(
        Action.GOVERNANCE_APPROVE, body=lambda ctx: {"reason": "Reviewed"}),
    ("POST", "/api/v1/governance/changes/{change_id}/reject"): Endpoint(
        Action.GOVERNANCE_APPROVE, body=lambda ctx: {"reason": "Not now"}),
    ("POST", "/api/v1/governance/changes/{change_id}/withdraw"): Endpoint(
        Action.AUTOMATION_MANAGE, body=lambda ctx: {"reason": "Superseded"}),
    ("GET", "/api/v1/governance/diff/{kind}/{key}"): Endpoint(
        Action.GOVERNANCE_READ, params={"from": "1", "to": "1"}),
    ("GET", "/api/v1/governance/report"): Endpoint(Action.GOVERNANCE_READ),
    ("GET", "/api/v1/audit/report"): Endpoint(Action.AUDIT_READ),
    ("GET", "/api/v1/audit/report.csv"): Endpoint(Action.AUDIT_READ),
    ("GET", "/api/v1/workflows"): Endpoint(Action.WORKFLOW_READ),
    # users
    ("GET", "/api/v1/users"): Endpoint(Action.USER_MANAGE),
    ("POST", "/api/v1/users"): Endpoint(
        Action.USER_MANAGE,
        body=lambda ctx: {"username": f"new.user.{ctx.next_number()}",
                          "roles": ["scheduler"], "locations": [OWN_CLINIC]}),
    ("PATCH", "/api/v1/users/{username}/access"): Endpoint(
        Action.USER_MANAGE, body=lambda ctx: {"teams": ["cardiology-triage"]}),
    ("POST", "/api/v1/users/{username}/deactivate"): Endpoint(Action.USER_MANAGE),
    ("POST", "/api/v1/users/{username}/totp/reset"): Endpoint(Action.USER_MANAGE),
    # self-service: any signed-in user, on their own account and tokens
    ("GET", "/api/v1/me"): Endpoint(None),
    ("POST", "/api/v1/auth/logout"): Endpoint(None),
    ("POST", "/api/v1/auth/totp/enrol"): Endpoint(None, session_only=True),
    ("POST", "/api/v1/auth/totp/confirm"): Endpoint(
        None, session_only=True, body=lambda ctx: {"code": "123456"}),
    ("GET", "/api/v1/auth/tokens"): Endpoint(None),
    ("POST", "/api/v1/auth/tokens"): Endpoint(None, body=lambda ctx: {"name": "laptop"}),
    ("POST", "/api/v1/auth/tokens/{token_id}/rotate"): Endpoint(None),
    ("DELETE", "/api/v1/auth/tokens/{token_id}"): Endpoint(None),
}

# No bearer token by design: each authenticates the caller its own way.
PUBLIC = {
    ("GET", "/api/v1/health"): "liveness, says nothing about data",
    ("POST", "/api/v1/auth/login"): "password (+ TOTP) sign-in, rate limited",
    ("GET", "/api/v1/auth/oidc/login"): "redirect to the identity provider",
    ("GET", "/api/v1/auth/oidc/callback"): "authorization code + state + PKCE",
    ("POST", "/api/v1/webhooks/inbound/{source}"): "Standard Webhooks signature per source",
}


def allowed_by_policy(role: Role, endpoint: Endpoint, location: str) -> bool:
    """The oracle: the role grants the action, and the role reaches the case."""
    if endpoint.action is not None and endpoint.action not in GRANTS[role]:
        return False
    if endpoint.session_only:
        return False
    if endpoint.case and location == "other":
        return False
    return endpoint.reviewers is None or role in endpoint.reviewers


class Context:
    """The server, one user per role at North Clinic, and cases to point requests at."""

    def __init__(self, app: App, base_url: str) -> None:
        self.app = app
        self.base_url = base_url
        self.users: dict[Role, Actor] = {}
        self.tokens: dict[Role, str] = {}
        self._number = 0
        admin = Actor(0, "system", frozenset({Role.ADMINISTRATOR.value}), locations=frozenset("*"))
        self.admin = admin
        self.other_organisation = Actor(0, "system", admin.roles, organisation="other-health",
                                        locations=frozenset("*"))
        for role in Role:
            username = f"matrix.{role.value}"
            user_id = accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, username, username,
                                        [role.value], None, locations=[OWN_CLINIC])
            self.users[role] = Actor(user_id, username, frozenset({role.value}),
                                     locations=frozenset({OWN_CLINIC}))
            self.tokens[role] = accounts.create_token(app.deps, SYSTEM_ACTOR, username,
                                                      "matrix", timedelta(days=1))
        # The user the user-management endpoints act on (deactivation revokes tokens).
        accounts.add_user(app.deps, SYSTEM_ACTOR, app.hashing, "matrix.target", "Target",
                          [Role.SCHEDULER.value], None, locations=[OWN_CLINIC])
        self.shared: dict[tuple[Role, str], int] = {}
        self.staff_of: dict[int, Actor] = {}  # who set up each case's documents, approvals

    def next_number(self) -> int:
        self._number += 1
        return self._number

    def new_case(self, role: Role, location: str, **overrides: Any) -> int:
        """A case ``role`` reaches ("own") or does not ("other")."""
        partner = role is Role.INTEGRATION_CLIENT
        creator = self.users[role] if partner and location == "own" else self.admin
        clinic = OTHER_CLINIC if location == "other" and not partner else OWN_CLINIC
        if location == "other" and ROLE_REACH[role] is Reach.ORGANISATION:
            # Organisation-wide roles reach every clinic: "other" is another organisation.
            creator = self.other_organisation
        payload = referral_payload(clinic=clinic, **overrides)
        case, _ = create_referral(self.app.deps, creator, validate_referral(payload))
        self.staff_of[case.id] = self.other_organisation if creator is self.other_organisation \
            else self.admin
        assert scope_of(self.users[role]).reaches(
            case.organisation, case.clinic, case.team, case.assignee, case.created_by
        ) is (location == "own")
        return case.id

    def case_for(self, role: Role, location: str, fresh: bool) -> int:
        if fresh:
            return self.new_case(role, location, network_status="out_of_network")
        key = (role, location)
        if key not in self.shared:
            self.shared[key] = self.new_case(role, location, network_status="out_of_network")
        return self.shared[key]

    def path_values(self, role: Role, location: str, path: str,
                    endpoint: Endpoint) -> dict[str, str]:
        values = {"document_id": "1", "kind": "calendars", "key": "calendars", "version": "1",
                  "subscription_id": "1", "state": "disable", "change_id": "1",
                  "delegation_id": "1", "name": "dr.matrix", "username": "matrix.target",
                  "token_id": "999999", "source": "nowhere"}
        case_id = self.case_for(role, location, endpoint.fresh)
        values["case_id"] = str(case_id)
        if "{document_id}" in path:
            document = attachments.add_document(self.app.deps, self.staff_of[case_id], case_id,
                                                "referral_letter", "letter.pdf",
                                                "application/pdf", PDF)
            values["document_id"] = str(document["id"])
        if "{approval_id}" in path:
            # Out-of-network: the clinic manager must approve before notify_patient.
            ids = approvals.request_approval(self.app.deps, self.staff_of[case_id], case_id,
                                             "notify_patient")
            values["approval_id"] = str(ids[0])
        return values


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    folder = tmp_path_factory.mktemp("matrix")
    app = make_app(f"sqlite:///{folder / 'careloop.db'}", ManualClock(START))
    uv, thread, base_url = start_server(app)
    try:
        yield Context(app, base_url)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        app.engine.dispose()


def openapi_endpoints(context: Context) -> set[tuple[str, str]]:
    spec = httpx.get(f"{context.base_url}/openapi.json", timeout=10).json()
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_every_endpoint_is_classified(context: Context) -> None:
    unclassified = openapi_endpoints(context) - set(ENDPOINTS) - set(PUBLIC)

    assert not unclassified, f"classify these endpoints in ENDPOINTS or PUBLIC: {unclassified}"
    assert not set(ENDPOINTS) & set(PUBLIC)


def call(context: Context, role: Role, method: str, path: str, endpoint: Endpoint,
         location: str) -> httpx.Response:
    url = path.format(**context.path_values(role, location, path, endpoint))
    kwargs: dict[str, Any] = {"params": endpoint.params}
    if endpoint.body is not None:
        kwargs["json"] = endpoint.body(context)
    if endpoint.files:
        kwargs["data"] = {"doc_type": "referral_letter"}
        kwargs["files"] = {"file": ("letter.pdf", PDF, "application/pdf")}
    headers = {"Authorization": f"Bearer {context.tokens[role]}"}
    with httpx.Client(base_url=context.base_url, timeout=30, headers=headers) as client:
        return client.request(method, url, **kwargs)


def refused(response: httpx.Response) -> bool:
    if response.status_code in (401, 403):
        return True
    return response.status_code == 404 and response.json().get("code") == "not_found"


@pytest.mark.parametrize("role", list(Role), ids=lambda role: role.value)
def test_each_role_gets_exactly_what_the_policy_grants_at_own_and_other_locations(
        context: Context, role: Role) -> None:
    unexpected_allows, unexpected_denials = [], []
    cells = {True: 0, False: 0}
    for (method, path), endpoint in sorted(ENDPOINTS.items()):
        if path.endswith("/logout"):
            continue  # ends the caller's session: checked alone below
        for location in ("own", "other") if endpoint.case else ("own",):
            response = call(context, role, method, path, endpoint, location)
            assert response.status_code != 401, (method, path, response.text)
            expected = allowed_by_policy(role, endpoint, location)
            cells[expected] += 1
            cell = f"{method} {path} @{location}: {response.status_code} {response.text[:160]}"
            if not expected and not refused(response):
                unexpected_allows.append(cell)
            if expected and refused(response) and not _missing_object(endpoint, response):
                unexpected_denials.append(cell)

    assert unexpected_allows == []
    assert unexpected_denials == []
    assert cells[True] > 0 and cells[False] > 0  # the role was tried both ways


def _missing_object(endpoint: Endpoint, response: httpx.Response) -> bool:
    """An allowed request for an object that does not exist (a placeholder id on an
    endpoint that does not name a case) is a 404 for a different reason."""
    return not endpoint.case and response.status_code == 404


def test_signing_out_is_open_to_every_session_and_refused_for_api_tokens(
        context: Context) -> None:
    for role in Role:
        response = call(context, role, "POST", "/api/v1/auth/logout",
                        ENDPOINTS[("POST", "/api/v1/auth/logout")], "own")
        assert response.status_code not in (401, 403), (role, response.text)


def test_public_endpoints_serve_no_case_data_without_credentials(context: Context) -> None:
    with httpx.Client(base_url=context.base_url, timeout=10) as anonymous:
        assert anonymous.get("/api/v1/health").json() == {"status": "ok"}
        login = anonymous.post("/api/v1/auth/login",
                               json={"username": "matrix.scheduler", "password": "x" * 12})
        inbound = anonymous.post("/api/v1/webhooks/inbound/nowhere", content=b"{}")
        for method, path in ENDPOINTS:
            if "{" not in path and method == "GET":
                assert anonymous.get(path).status_code == 401, path
    assert login.status_code == 401
    assert inbound.status_code in (401, 404)


def test_a_scoped_token_is_held_to_its_scopes_whatever_its_roles_grant(
        context: Context) -> None:
    admin = context.users[Role.ADMINISTRATOR]
    token = tokens.create_token(context.app.deps, admin, admin.username, "read-only",
                                timedelta(days=1), scopes=["referrals:read"])
    case_id = context.new_case(Role.ADMINISTRATOR, "own")
    with httpx.Client(base_url=context.base_url, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        read = client.get(f"/api/v1/referrals/{case_id}")
        write = client.post(f"/api/v1/referrals/{case_id}/notes", json={"body": "hello"})
        users = client.get("/api/v1/users")

    assert read.status_code == 200
    assert write.status_code == 403 and "referrals:write" in write.json()["detail"]
    assert users.status_code == 403
