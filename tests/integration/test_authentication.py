"""Authentication on SQLite and PostgreSQL with a moved clock: lockout, TOTP, token
expiry and rotation, session idle time-out, scopes, and the audit of privilege changes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from careloop.adapters.db.tables import api_tokens, audit_log, users
from careloop.bootstrap import App
from careloop.domain.access import SYSTEM_ACTOR, Action
from careloop.domain.errors import (
    AccountLocked,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    SecondFactorInvalid,
    SecondFactorRequired,
    SessionTimedOut,
)
from careloop.services import accounts, second_factor, sessions, tokens
from careloop.services.authentication import TokenAuthenticator
from careloop.services.credentials import Authentication, AuthPolicy
from careloop.services.ports import ManualClock
from tests.conftest import ADMIN

PASSWORD = "correct horse battery staple"
NAME = "nora.nurse"


def add_person(app: App, roles: tuple[str, ...] = ("scheduler",), name: str = NAME) -> int:
    return accounts.add_user(
        app.deps, SYSTEM_ACTOR, app.hashing, name, "Nora", list(roles), PASSWORD,
        locations=["riverside-clinic"],
    )


def sign_in(
    app: App, code: str | None = None, password: str = PASSWORD,
    authenticator: TokenAuthenticator | None = None,
) -> sessions.SignIn:
    attempt = sessions.LoginAttempt(NAME, password, code, "10.0.0.7")
    return sessions.login(app.deps, app.authentication, attempt, authenticator)


def audit_entries(app: App, action: str) -> list[dict[str, Any]]:
    with app.engine.connect() as connection:
        rows = connection.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.occurred_at)
        ).mappings()
        return [{**row, "detail": json.loads(row["detail"])} for row in rows]


def user_row(app: App, name: str = NAME) -> dict[str, Any]:
    with app.engine.connect() as connection:
        query = select(users).where(users.c.username == name)
        return dict(connection.execute(query).mappings().one())


def enrol(app: App, clock: ManualClock) -> pyotp.TOTP:
    """Turn TOTP on for NAME; returns the phone's view of the secret."""
    session = sign_in(app).token.token
    actor = TokenAuthenticator(app.deps).authenticate(session, "10.0.0.7")
    uri = second_factor.enrol_totp(app.deps, app.authentication.totp, actor)
    phone = pyotp.parse_uri(uri)
    assert isinstance(phone, pyotp.TOTP)
    second_factor.confirm_totp(app.deps, app.authentication.totp, actor, phone.at(clock.now()))
    return phone


# --- lockout -----------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account_even_against_the_right_password(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    for _ in range(4):
        with pytest.raises(NotAuthenticated, match="wrong username or password"):
            sign_in(app, password="wrong password!")
    with pytest.raises(AccountLocked, match="locked until"):
        sign_in(app, password="wrong password!")

    with pytest.raises(AccountLocked, match="locked until 2026-03-02T09:15:00"):
        sign_in(app)

    failures = audit_entries(app, "auth.login")
    assert [e["outcome"] for e in failures] == ["failure"] * 6
    assert [e["detail"].get("failures") for e in failures] == [1, 2, 3, 4, 0, None]
    assert failures[-1]["detail"]["refused"] == "account_locked"
    assert all(e["source_address"] == "10.0.0.7" for e in failures)
    [lock] = audit_entries(app, "user.lock")
    assert lock["detail"]["user"] == NAME and lock["data_category"] == "security"


def test_a_lock_ends_after_the_lockout_period_and_a_success_resets_the_count(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    for _ in range(5):
        with pytest.raises(NotAuthenticated):
            sign_in(app, password="wrong password!")
    clock.advance(minutes=14, seconds=59)
    with pytest.raises(AccountLocked):
        sign_in(app)

    clock.advance(seconds=2)
    signed_in = sign_in(app)

    assert signed_in.token.kind == "session"
    with pytest.raises(NotAuthenticated):
        sign_in(app, password="wrong password!")
    sign_in(app)
    assert user_row(app)["failed_logins"] == 0


def test_locking_an_account_refuses_its_tokens_at_once_in_this_process(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    authenticator = TokenAuthenticator(app.deps)
    token = tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "laptop", timedelta(days=1))
    assert authenticator.authenticate(token, "10.0.0.7").username == NAME

    for _ in range(5):
        with pytest.raises(NotAuthenticated):
            sign_in(app, password="wrong password!", authenticator=authenticator)

    with pytest.raises(AccountLocked):
        authenticator.authenticate(token, "10.0.0.7")


def test_unknown_users_are_refused_like_wrong_passwords_and_audited(app: App) -> None:
    with pytest.raises(NotAuthenticated, match="wrong username or password"):
        sign_in(app)

    [entry] = audit_entries(app, "auth.login")
    assert entry["actor_name"] == NAME and entry["actor_id"] == 0
    assert entry["outcome"] == "failure"


# --- TOTP --------------------------------------------------------------------------------


def test_after_totp_enrolment_a_password_alone_no_longer_signs_in(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    enrol(app, clock)

    with pytest.raises(SecondFactorRequired):
        sign_in(app)
    assert user_row(app)["failed_logins"] == 0
    assert [e["action"] for e in audit_entries(app, "user.totp.confirm")] == ["user.totp.confirm"]


def test_a_totp_code_from_one_step_either_side_is_accepted_but_not_two(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    phone = enrol(app, clock)
    clock.advance(minutes=5)

    assert sign_in(app, phone.at(clock.now() - timedelta(seconds=30))).token.kind == "session"
    clock.advance(seconds=60)
    assert sign_in(app, phone.at(clock.now() + timedelta(seconds=30))).token.kind == "session"
    clock.advance(seconds=90)
    with pytest.raises(SecondFactorInvalid, match="wrong"):
        sign_in(app, phone.at(clock.now() - timedelta(seconds=60)))


def test_a_totp_code_cannot_be_used_twice_nor_the_one_that_confirmed_enrolment(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    phone = enrol(app, clock)

    with pytest.raises(SecondFactorInvalid, match="used already"):
        sign_in(app, phone.at(clock.now()))
    clock.advance(seconds=30)
    code = phone.at(clock.now())
    sign_in(app, code)
    with pytest.raises(SecondFactorInvalid, match="used already"):
        sign_in(app, code)
    sessions_count = len([t for t in token_rows(app) if t["kind"] == "session"])
    assert sessions_count == 2  # the enrolment session and the one good sign-in


def test_wrong_totp_codes_count_towards_the_lockout(app: App, clock: ManualClock) -> None:
    add_person(app)
    enrol(app, clock)
    for _ in range(4):
        with pytest.raises(SecondFactorInvalid):
            sign_in(app, "000000")
    with pytest.raises(AccountLocked):
        sign_in(app, "000000")


def test_staff_who_must_use_totp_get_only_an_enrolment_token_until_they_set_it_up(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    strict = Authentication(
        app.hashing, app.authentication.totp, AuthPolicy(require_totp_for_staff=True)
    )
    attempt = sessions.LoginAttempt(NAME, PASSWORD, None, "10.0.0.7")

    signed_in = sessions.login(app.deps, strict, attempt)

    assert signed_in.totp_enrolment_required
    actor = TokenAuthenticator(app.deps).authenticate(signed_in.token.token, "10.0.0.7")
    assert not actor.can(Action.CASE_READ)
    with pytest.raises(PermissionDenied):
        tokens.create_token(app.deps, actor, NAME, "sneaky", None)
    assert signed_in.token.expires_at == clock.now() + timedelta(minutes=10)
    uri = second_factor.enrol_totp(app.deps, strict.totp, actor)
    assert uri.startswith("otpauth://totp/")


# --- tokens ------------------------------------------------------------------------------


def token_rows(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(api_tokens)).mappings()]


def test_a_token_works_until_its_expiry_and_is_refused_after(app: App, clock: ManualClock) -> None:
    add_person(app)
    token = tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "short", timedelta(hours=1))
    authenticator = TokenAuthenticator(app.deps)
    clock.advance(minutes=59)
    assert authenticator.authenticate(token, "").username == NAME

    clock.advance(minutes=1)

    with pytest.raises(NotAuthenticated, match="expired"):
        authenticator.authenticate(token, "")


def test_a_token_longer_than_the_maximum_lifetime_is_refused_naming_the_field(app: App) -> None:
    add_person(app)
    with pytest.raises(InvalidInput) as refused:
        tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "forever", timedelta(days=400))

    assert [p.field for p in refused.value.problems] == ["expires_in"]
    assert token_rows(app) == []


def test_a_rotated_token_keeps_working_for_the_grace_period_only(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    owner = TokenAuthenticator(app.deps)
    old = tokens.create_api_token(app.deps, SYSTEM_ACTOR, NAME, "ci", timedelta(days=30),
                                  scopes=["referrals:read"])
    actor = owner.authenticate(old.token, "")

    new, old_valid_until = tokens.rotate_token(app.deps, actor, old.id, cache=owner)

    assert old_valid_until == clock.now() + timedelta(hours=1)
    assert new.scopes == ["referrals:read"]
    assert new.expires_at == clock.now() + timedelta(days=30)
    clock.advance(minutes=59)
    assert owner.authenticate(old.token, "").token_id == old.id
    clock.advance(minutes=1)
    with pytest.raises(NotAuthenticated, match="rotated"):
        owner.authenticate(old.token, "")
    assert owner.authenticate(new.token, "").scopes == frozenset({"referrals:read"})
    with pytest.raises(InvalidInput, match="rotated"):
        tokens.rotate_token(app.deps, actor, old.id)
    [entry] = audit_entries(app, "token.rotate")
    assert entry["detail"]["replaced_by"] == new.id


def test_someone_elses_token_is_invisible_without_user_management(app: App) -> None:
    add_person(app)
    add_person(app, name="otto.other")
    theirs = tokens.create_api_token(app.deps, SYSTEM_ACTOR, "otto.other", "theirs", None)
    mine = TokenAuthenticator(app.deps).authenticate(sign_in(app).token.token, "")

    with pytest.raises(NotFound, match="no token"):
        tokens.revoke_token(app.deps, mine, theirs.id)

    assert all(t["revoked_at"] is None for t in token_rows(app) if t["id"] == theirs.id)


# --- scopes ------------------------------------------------------------------------------


def test_a_scoped_token_may_do_only_what_its_scopes_and_roles_both_allow(app: App) -> None:
    add_person(app, roles=("intake_coordinator",))
    token = tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "reader", None,
                                scopes=["referrals:read"])

    actor = TokenAuthenticator(app.deps).authenticate(token, "")

    assert actor.scopes == frozenset({"referrals:read"})
    actor.require(Action.CASE_READ)
    with pytest.raises(PermissionDenied, match="referrals:write"):
        actor.require(Action.CASE_CREATE)


def test_an_unknown_scope_is_refused_naming_the_field_and_the_known_scopes(app: App) -> None:
    add_person(app)
    with pytest.raises(InvalidInput) as refused:
        tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "bad", None,
                            scopes=["referrals:read", "everything"])

    [problem] = refused.value.problems
    assert problem.field == "scopes" and "'everything'" in problem.problem
    assert "webhooks:manage" in problem.problem
    assert token_rows(app) == []


def test_a_scoped_token_cannot_mint_a_token_with_more_scopes(app: App) -> None:
    add_person(app)
    token = tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "reader", None,
                                scopes=["referrals:read"])
    actor = TokenAuthenticator(app.deps).authenticate(token, "")

    for scopes in (None, ["referrals:read", "referrals:write"]):
        with pytest.raises(PermissionDenied):
            tokens.create_token(app.deps, actor, NAME, "wider", None, scopes=scopes)
    assert len(token_rows(app)) == 1


# --- sessions ----------------------------------------------------------------------------


def test_a_session_unused_for_longer_than_the_idle_timeout_is_refused(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    session = sign_in(app).token.token
    authenticator = TokenAuthenticator(app.deps)
    for _ in range(3):  # in use: each request within the idle time-out keeps it alive
        clock.advance(minutes=29)
        assert authenticator.authenticate(session, "").username == NAME

    clock.advance(minutes=30, seconds=1)

    with pytest.raises(SessionTimedOut, match="timed out after 30 minutes"):
        authenticator.authenticate(session, "")


def test_another_process_sees_a_session_in_use_through_its_last_use_in_the_database(
    app: App, clock: ManualClock
) -> None:
    add_person(app)
    session = sign_in(app).token.token
    clock.advance(minutes=20)
    TokenAuthenticator(app.deps).authenticate(session, "")
    clock.advance(minutes=20)

    assert TokenAuthenticator(app.deps).authenticate(session, "").username == NAME


def test_last_use_is_written_at_most_once_a_minute(app: App, clock: ManualClock) -> None:
    add_person(app)
    signed_in = sign_in(app)
    authenticator = TokenAuthenticator(app.deps, cache_seconds=0)
    started = clock.now()

    for _ in range(5):
        clock.advance(seconds=10)
        authenticator.authenticate(signed_in.token.token, "")

    [row] = [t for t in token_rows(app) if t["id"] == signed_in.token.id]
    assert row["last_used_at"] == started
    clock.advance(seconds=10)
    authenticator.authenticate(signed_in.token.token, "")
    [row] = [t for t in token_rows(app) if t["id"] == signed_in.token.id]
    assert row["last_used_at"] == started + timedelta(seconds=60)


# --- user administration -----------------------------------------------------------------


def test_a_role_change_is_audited_with_before_and_after_and_reaches_cached_tokens(
    app: App,
) -> None:
    add_person(app)
    authenticator = TokenAuthenticator(app.deps)
    token = tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "laptop", None)
    assert authenticator.authenticate(token, "").roles == frozenset({"scheduler"})

    after = accounts.change_access(
        app.deps, ADMIN, NAME,
        accounts.AccessChange(roles=["clinic_manager", "scheduler"], teams=["cardiology"]),
        authenticator,
    )

    assert after["roles"] == ["clinic_manager", "scheduler"] and after["teams"] == ["cardiology"]
    assert authenticator.authenticate(token, "").roles == frozenset({"clinic_manager", "scheduler"})
    [entry] = audit_entries(app, "user.access.change")
    assert entry["actor_name"] == "ada.admin" and entry["data_category"] == "security"
    assert entry["detail"] == {
        "user": NAME,
        "before": {"roles": ["scheduler"], "teams": []},
        "after": {"roles": ["clinic_manager", "scheduler"], "teams": ["cardiology"]},
    }


def test_an_unknown_role_changes_nothing(app: App) -> None:
    add_person(app)
    with pytest.raises(InvalidInput, match="unknown roles"):
        accounts.change_access(app.deps, ADMIN, NAME, accounts.AccessChange(roles=["root"]))

    assert user_row(app)["roles"] == ["scheduler"]
    assert audit_entries(app, "user.access.change") == []


def test_deactivating_a_user_revokes_every_token_and_session(app: App) -> None:
    add_person(app)
    authenticator = TokenAuthenticator(app.deps)
    token = tokens.create_token(app.deps, SYSTEM_ACTOR, NAME, "laptop", None)
    session = sign_in(app).token.token
    authenticator.authenticate(token, "")

    accounts.deactivate_user(app.deps, ADMIN, NAME, authenticator)

    for each in (token, session):
        with pytest.raises(NotAuthenticated):
            authenticator.authenticate(each, "")
    with pytest.raises(NotAuthenticated, match="wrong username or password"):
        sign_in(app)
    [entry] = audit_entries(app, "user.deactivate")
    assert entry["detail"]["before"]["active"] is True
    assert entry["detail"]["after"] == {"active": False}
    assert len(entry["detail"]["revoked_tokens"]) == 2
