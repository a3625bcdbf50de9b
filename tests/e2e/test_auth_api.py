"""Authentication over HTTP: password + TOTP sessions, OpenID Connect against a real
provider on loopback, the sign-in rate limit, and every kind of bad token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp
import pytest
from sqlalchemy import func, select

from careloop.adapters.db.tables import api_tokens, audit_log, users
from careloop.services.ports import ManualClock
from tests.conftest import make_app, referral_payload
from tests.e2e import conftest as e2e
from tests.e2e.conftest import Server, running_server
from tests.support.oidc_provider import TAMPERING, OidcTestProvider

PASSWORD = "correct horse battery staple"
PROBLEM_JSON = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    return body


def anonymous(server: Server, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=10, **kwargs)


def bearer(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=10,
                        headers={"Authorization": f"Bearer {token}"})


def add_person(server: Server, username: str = "nora.nurse", roles: tuple[str, ...] = (
        "referral_coordinator",), password: str | None = PASSWORD) -> None:
    with server.client("administrator") as admin:
        response = admin.post("/api/v1/users", json={
            "username": username, "roles": list(roles), "password": password,
            "locations": ["*"]})
    assert response.status_code == 201, response.text


def sign_in(server: Server, code: str | None = None, username: str = "nora.nurse",
            password: str = PASSWORD) -> httpx.Response:
    with anonymous(server) as client:
        return client.post("/api/v1/auth/login", json={
            "username": username, "password": password, "totp_code": code})


def referral_ids(server: Server) -> list[int]:
    with server.client() as admin:
        return [item["id"] for item in admin.get("/api/v1/referrals").json()["items"]]


def count(server: Server, table: Any) -> int:
    with server.app.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def strict_server(sqlite_url: str, clock: ManualClock) -> Iterator[Server]:
    with running_server(make_app(sqlite_url, clock, require_totp_for_staff=True,
                                 login_rate_limit=1000)) as running:
        yield running


# --- password and TOTP -------------------------------------------------------------------


def test_a_person_signs_in_sets_up_totp_and_then_needs_a_fresh_code_each_time(
        server: Server, clock: ManualClock) -> None:
    add_person(server)
    first = sign_in(server)
    assert first.status_code == 200, first.text
    assert first.json()["kind"] == "session"
    assert first.json()["idle_timeout_seconds"] == 30 * 60
    with bearer(server, first.json()["access_token"]) as session:
        enrolled = session.post("/api/v1/auth/totp/enrol")
        assert enrolled.status_code == 201, enrolled.text
        phone = pyotp.parse_uri(enrolled.json()["otpauth_uri"])
        assert isinstance(phone, pyotp.TOTP)
        confirmed = session.post("/api/v1/auth/totp/confirm",
                                 json={"code": phone.at(clock.now())})
        assert confirmed.status_code == 200, confirmed.text

    assert_problem(sign_in(server), 401, "totp_required")
    assert_problem(sign_in(server, "123456" if phone.at(clock.now()) != "123456" else "654321"),
                   401, "totp_invalid")
    reused = assert_problem(sign_in(server, phone.at(clock.now())), 401, "totp_invalid")
    assert "used already" in reused["detail"]
    clock.advance(seconds=30)
    signed_in = sign_in(server, phone.at(clock.now()))
    assert signed_in.status_code == 200, signed_in.text
    with bearer(server, signed_in.json()["access_token"]) as session:
        assert session.get("/api/v1/me").json()["username"] == "nora.nurse"
        assert session.post("/api/v1/auth/logout").status_code == 204
        gone = assert_problem(session.get("/api/v1/me"), 401, "not_authenticated")
    assert "signed out" in gone["detail"]


def test_staff_without_totp_get_only_an_enrolment_token_when_totp_is_required(
        strict_server: Server, clock: ManualClock) -> None:
    add_person(strict_server)
    first = sign_in(strict_server)
    assert first.status_code == 200, first.text
    assert first.json()["totp_enrolment_required"] is True
    assert first.json()["kind"] == "enrolment"

    with bearer(strict_server, first.json()["access_token"]) as enrolment:
        assert_problem(enrolment.get("/api/v1/referrals"), 403, "permission_denied")
        phone = pyotp.parse_uri(enrolment.post("/api/v1/auth/totp/enrol").json()["otpauth_uri"])
        assert isinstance(phone, pyotp.TOTP)
        enrolment.post("/api/v1/auth/totp/confirm", json={"code": phone.at(clock.now())})
    clock.advance(seconds=30)
    second = sign_in(strict_server, phone.at(clock.now()))

    assert second.json()["kind"] == "session", second.text
    with bearer(strict_server, second.json()["access_token"]) as session:
        assert session.get("/api/v1/referrals").status_code == 200


def test_an_integration_client_is_not_staff_and_needs_no_totp(strict_server: Server) -> None:
    add_person(strict_server, "feed.bot", ("integration_client",))

    response = sign_in(strict_server, username="feed.bot")

    assert response.json()["kind"] == "session", response.text


def test_an_api_token_can_neither_set_up_totp_nor_be_signed_out(server: Server) -> None:
    with server.client("scheduler") as scheduler:
        enrol = scheduler.post("/api/v1/auth/totp/enrol")
        logout = scheduler.post("/api/v1/auth/logout")
        still_works = scheduler.get("/api/v1/me")

    assert_problem(enrol, 403, "permission_denied")
    assert "revoked, not signed out" in assert_problem(logout, 422, "invalid_input")["detail"]
    assert still_works.status_code == 200


# --- rate limit --------------------------------------------------------------------------


def test_too_many_sign_in_attempts_from_one_address_get_429_with_retry_after(
        sqlite_url: str, clock: ManualClock) -> None:
    with running_server(make_app(sqlite_url, clock, login_rate_limit=3,
                                 login_rate_window_seconds=60)) as server:
        add_person(server)
        for _ in range(3):
            assert_problem(sign_in(server, password="wrong password!"), 401,
                           "not_authenticated")

        limited = sign_in(server)
        clock.advance(seconds=61)
        allowed = sign_in(server)

    body = assert_problem(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "60"
    assert "retry in 60 seconds" in body["detail"]
    assert allowed.status_code == 200, allowed.text


# --- bad tokens --------------------------------------------------------------------------


def test_a_forged_token_is_refused(server: Server) -> None:
    with bearer(server, "clp_" + "x" * 43) as forged:
        assert_problem(forged.get("/api/v1/me"), 401, "not_authenticated")


def test_a_revoked_token_is_refused_at_once(server: Server) -> None:
    with server.client("scheduler") as scheduler:
        created = scheduler.post("/api/v1/auth/tokens", json={"name": "laptop"}).json()
    with bearer(server, created["token"]) as client:
        assert client.get("/api/v1/me").status_code == 200
        assert client.delete(f"/api/v1/auth/tokens/{created['id']}").status_code == 204

        body = assert_problem(client.get("/api/v1/me"), 401, "not_authenticated")

    assert "revoked" in body["detail"]


def test_a_rotated_token_is_refused_after_the_grace_period(
        server: Server, clock: ManualClock) -> None:
    with server.client("scheduler") as scheduler:
        old = scheduler.post("/api/v1/auth/tokens",
                             json={"name": "ci", "scopes": ["referrals:read"],
                                   "expires_in_days": 30}).json()
    with bearer(server, old["token"]) as client:
        rotated = client.post(f"/api/v1/auth/tokens/{old['id']}/rotate")
        assert rotated.status_code == 201, rotated.text
        assert rotated.json()["scopes"] == ["referrals:read"]
        clock.advance(minutes=59)
        assert client.get("/api/v1/referrals").status_code == 200
        clock.advance(minutes=2)

        body = assert_problem(client.get("/api/v1/referrals"), 401, "not_authenticated")

    assert "rotated" in body["detail"]
    with bearer(server, rotated.json()["token"]) as client:
        assert client.get("/api/v1/referrals").status_code == 200


def test_a_session_left_idle_times_out(server: Server, clock: ManualClock) -> None:
    add_person(server)
    token = sign_in(server).json()["access_token"]
    with bearer(server, token) as session:
        assert session.get("/api/v1/me").status_code == 200
        clock.advance(minutes=30, seconds=1)

        body = assert_problem(session.get("/api/v1/me"), 401, "session_timed_out")

    assert "timed out" in body["detail"]


def test_a_token_used_beyond_its_scopes_is_refused_and_nothing_is_written(
        server: Server) -> None:
    with server.client("intake_coordinator") as intake:
        created = intake.post("/api/v1/auth/tokens",
                              json={"name": "reader", "scopes": ["referrals:read"]})
    assert created.status_code == 201, created.text
    before = referral_ids(server)

    with bearer(server, created.json()["token"]) as reader:
        assert reader.get("/api/v1/referrals").status_code == 200
        body = assert_problem(reader.post("/api/v1/referrals", json=referral_payload()), 403,
                              "permission_denied")

    assert "referrals:write" in body["detail"]
    assert referral_ids(server) == before


def test_a_token_with_an_unknown_scope_is_refused_naming_the_field(server: Server) -> None:
    before = count(server, api_tokens)

    with server.client("scheduler") as scheduler:
        response = scheduler.post(
            "/api/v1/auth/tokens", json={"name": "x", "scopes": ["referrals:read", "root"]})

    body = assert_problem(response, 422, "invalid_input")
    assert [e["field"] for e in body["errors"]] == ["scopes"]
    assert count(server, api_tokens) == before


def test_my_token_list_never_shows_secrets(server: Server) -> None:
    with server.client("scheduler") as scheduler:
        scheduler.post("/api/v1/auth/tokens", json={"name": "laptop"})
        items = scheduler.get("/api/v1/auth/tokens").json()["items"]

    assert sorted(item["name"] for item in items) == ["laptop", "test"]
    assert all("token" not in item and "token_hash" not in item for item in items)
    assert all(item["prefix"].startswith("clp_") for item in items)


# --- user administration -----------------------------------------------------------------


def test_an_administrator_changes_roles_and_the_change_is_audited(server: Server) -> None:
    add_person(server)
    with server.client("administrator") as admin:
        response = admin.patch("/api/v1/users/nora.nurse/access",
                               json={"roles": ["scheduler"], "locations": ["riverside-clinic"]})
    with server.client("scheduler") as scheduler:
        refused = scheduler.patch("/api/v1/users/nora.nurse/access",
                                  json={"roles": ["administrator"]})

    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["scheduler"]
    assert_problem(refused, 403, "permission_denied")
    with server.app.engine.connect() as connection:
        actions = connection.execute(
            select(audit_log.c.action, audit_log.c.actor_name)
            .where(audit_log.c.action == "user.access.change")).all()
        roles = connection.execute(
            select(users.c.roles).where(users.c.username == "nora.nurse")).scalar_one()
    assert [tuple(a) for a in actions] == [("user.access.change", "user.administrator")]
    assert roles == ["scheduler"]


# --- OpenID Connect ----------------------------------------------------------------------


@contextmanager
def sso_server(sqlite_url: str, clock: ManualClock,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, OidcTestProvider]]:
    provider = OidcTestProvider(clock.now)
    port = e2e._free_port()
    # The provider must know careloop's callback address before careloop starts.
    monkeypatch.setattr(e2e, "_free_port", lambda: port)
    app = make_app(sqlite_url, clock, oidc_issuer=provider.issuer, oidc_client_id="careloop",
                   oidc_client_secret="s3cret",
                   oidc_redirect_uri=f"http://127.0.0.1:{port}/api/v1/auth/oidc/callback")
    with provider.running(), running_server(app) as server:
        yield server, provider


@pytest.fixture
def sso(sqlite_url: str, clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, OidcTestProvider]]:
    with sso_server(sqlite_url, clock, monkeypatch) as running:
        yield running


def sso_sign_in(server: Server) -> httpx.Response:
    with anonymous(server, follow_redirects=True) as browser:
        return browser.get("/api/v1/auth/oidc/login")


def linked_subject(server: Server, username: str) -> str | None:
    with server.app.engine.connect() as connection:
        value = connection.execute(
            select(users.c.oidc_subject).where(users.c.username == username)).scalar_one()
    return str(value) if value is not None else None


def test_single_sign_on_links_the_identity_to_the_existing_user_and_opens_a_session(
        sso: tuple[Server, OidcTestProvider]) -> None:
    server, provider = sso
    add_person(server, "olivia.oidc", password=None)
    provider.sign_in_as("sub-0042", preferred_username="olivia.oidc")

    response = sso_sign_in(server)

    assert response.status_code == 200, response.text
    assert response.json()["kind"] == "session"
    [authorize] = provider.authorize_requests
    assert authorize["code_challenge_method"] == "S256"
    assert authorize["nonce"] and authorize["state"]
    assert set(authorize["scope"].split()) == {"openid", "profile", "email"}
    with bearer(server, response.json()["access_token"]) as session:
        me = session.get("/api/v1/me").json()
    assert me["username"] == "olivia.oidc" and me["roles"] == ["referral_coordinator"]
    assert linked_subject(server, "olivia.oidc") == "sub-0042"


def test_later_sign_ins_match_on_the_subject_not_the_username_claim(
        sso: tuple[Server, OidcTestProvider]) -> None:
    server, provider = sso
    add_person(server, "olivia.oidc", password=None)
    provider.sign_in_as("sub-0042", preferred_username="olivia.oidc")
    sso_sign_in(server)
    provider.sign_in_as("sub-0042", preferred_username="renamed.at.the.provider")

    response = sso_sign_in(server)

    with bearer(server, response.json()["access_token"]) as session:
        assert session.get("/api/v1/me").json()["username"] == "olivia.oidc"


def test_single_sign_on_never_creates_a_user(sso: tuple[Server, OidcTestProvider]) -> None:
    server, provider = sso
    provider.sign_in_as("sub-9999", preferred_username="mallory")
    before = count(server, users), count(server, api_tokens)

    response = sso_sign_in(server)

    body = assert_problem(response, 401, "not_authenticated")
    assert "administrator must create the user" in body["detail"]
    assert (count(server, users), count(server, api_tokens)) == before


@pytest.mark.parametrize("tampering", TAMPERING)
def test_a_bad_id_token_is_refused_and_links_nothing(
        sso: tuple[Server, OidcTestProvider], tampering: str) -> None:
    server, provider = sso
    add_person(server, "olivia.oidc", password=None)
    provider.sign_in_as("sub-0042", preferred_username="olivia.oidc")
    provider.tamper = tampering
    tokens_before = count(server, api_tokens)

    response = sso_sign_in(server)

    body = assert_problem(response, 401, "not_authenticated")
    assert "ID token is not valid" in body["detail"]
    assert linked_subject(server, "olivia.oidc") is None
    assert count(server, api_tokens) == tokens_before


def test_a_callback_with_another_state_is_refused(
        sso: tuple[Server, OidcTestProvider]) -> None:
    server, provider = sso
    add_person(server, "olivia.oidc", password=None)
    provider.sign_in_as("sub-0042", preferred_username="olivia.oidc")
    with anonymous(server) as browser:
        to_provider = browser.get("/api/v1/auth/oidc/login")
        back = httpx.get(to_provider.headers["location"])
        query = {k: v[0] for k, v in parse_qs(urlparse(back.headers["location"]).query).items()}

        forged = browser.get("/api/v1/auth/oidc/callback",
                             params={"code": query["code"], "state": "attacker-state"})
        without_cookie = httpx.get(back.headers["location"])

    assert "state does not match" in assert_problem(forged, 401, "not_authenticated")["detail"]
    assert "cookie" in assert_problem(without_cookie, 401, "not_authenticated")["detail"]
    assert linked_subject(server, "olivia.oidc") is None


def test_single_sign_on_without_configuration_is_not_found(server: Server) -> None:
    with anonymous(server) as client:
        assert_problem(client.get("/api/v1/auth/oidc/login"), 404, "not_found")
