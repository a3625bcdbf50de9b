"""Password sign-in with TOTP and lockout, sessions with an idle time-out, sign-out.

A session is an api_tokens row of kind "session": an absolute lifetime plus an idle
time-out (checked by services.authentication). Failed sign-ins are counted per user;
the Nth in a row locks the account for the lockout period, refusing even the right
password. Failures and lockouts are audited in the transaction that counts them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from careloop.domain.access import Actor
from careloop.domain.errors import (
    AccountLocked,
    CareloopError,
    FieldProblem,
    InvalidInput,
    NotAuthenticated,
    SecondFactorInvalid,
    SecondFactorRequired,
)
from careloop.services.credentials import (
    STAFF_EXEMPT_ROLES,
    Authentication,
    AuthPolicy,
    NoTokenCache,
    PasswordHashing,
    TokenCache,
)
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit
from careloop.services.second_factor import check_totp_code, claim_totp
from careloop.services.tokens import API, ENROLMENT, SESSION, IssuedToken, issue_token


@dataclass(frozen=True)
class LoginAttempt:
    username: str
    password: str
    totp_code: str | None
    source_address: str


@dataclass(frozen=True)
class SignIn:
    token: IssuedToken
    username: str
    # True when the token is an enrolment token: it can only set up TOTP.
    totp_enrolment_required: bool = False


def login(
    deps: Deps, auth: Authentication, attempt: LoginAttempt, cache: TokenCache | None = None
) -> SignIn:
    """Exchange a username, password and (when enrolled) TOTP code for a session."""
    failed = _Refusal(deps, auth.policy, cache or NoTokenCache(), attempt)
    now = deps.clock.now()
    with deps.read_uow() as uow:
        user = uow.accounts.find_user(attempt.username)
    if user is not None and user["locked_until"] is not None and user["locked_until"] > now:
        failed.refuse(user, AccountLocked(_locked(user["locked_until"])))
    if not _password_matches(auth.hashing, user, attempt.password) or user is None:
        failed.refuse(user, NotAuthenticated("wrong username or password"))
    totp_state = None
    if user["totp_enabled_at"] is not None:
        if not attempt.totp_code:
            failed.refuse(
                user,
                SecondFactorRequired(
                    "this account needs a TOTP code from its authenticator app ('totp_code')"
                ),
            )
        try:
            totp_state = check_totp_code(auth.totp, user, attempt.totp_code, now)
        except SecondFactorInvalid as error:
            failed.refuse(user, error)
    with deps.uow() as uow:
        if totp_state is not None:
            claim_totp(uow, user, totp_state)
        signed_in = open_session(uow, auth.policy, user, now, attempt.source_address, "password")
        uow.commit()
    return signed_in


def open_session(
    uow: UnitOfWork,
    policy: AuthPolicy,
    user: dict[str, Any],
    now: datetime,
    source_address: str,
    method: str,
) -> SignIn:
    """Issue the session (or, for staff who must but have not set up TOTP, an enrolment
    token that can do nothing else) and audit the sign-in; the caller commits."""
    if user["failed_logins"]:
        uow.accounts.update_user(user["id"], {"failed_logins": 0})
    enrol = (
        method == "password"
        and policy.require_totp_for_staff
        and user["totp_enabled_at"] is None
        and bool(set(user["roles"]) - STAFF_EXEMPT_ROLES)
    )
    if enrol:
        token = issue_token(
            uow,
            user["id"],
            "totp enrolment",
            now,
            now + policy.enrolment_lifetime,
            scopes=[],
            kind=ENROLMENT,
        )
    else:
        token = issue_token(
            uow,
            user["id"],
            f"{method} sign-in",
            now,
            now + policy.session_lifetime,
            kind=SESSION,
            idle_timeout=policy.session_idle_timeout,
        )
    audit(
        uow,
        person_actor(user, source_address),
        "auth.login",
        now,
        category="security",
        detail={"method": method, "token_id": token.id, "kind": token.kind},
    )
    return SignIn(token, user["username"], totp_enrolment_required=enrol)


def logout(deps: Deps, actor: Actor, cache: TokenCache | None = None) -> None:
    """Revoke the session (or enrolment token) the request came with."""
    if actor.token_id is None:
        return
    if actor.extra.get("token_kind") == API:
        raise InvalidInput(
            [
                FieldProblem(
                    "authorization",
                    "API tokens are revoked, not signed out: DELETE /api/v1/auth/tokens/{id}",
                )
            ]
        )
    now = deps.clock.now()
    with deps.uow() as uow:
        if uow.accounts.revoke_token(actor.token_id, now):
            audit(
                uow,
                actor,
                "auth.logout",
                now,
                category="security",
                detail={"token_id": actor.token_id},
            )
        uow.commit()
    (cache or NoTokenCache()).forget(token_ids=[actor.token_id])


@dataclass(frozen=True)
class _Refusal:
    deps: Deps
    policy: AuthPolicy
    cache: TokenCache
    attempt: LoginAttempt

    def refuse(self, user: dict[str, Any] | None, error: CareloopError) -> NoReturn:
        """Count the failure (a wrong password or code), audit it, then raise ``error``."""
        now = self.deps.clock.now()
        detail: dict[str, Any] = {"method": "password", "refused": error.code}
        countable = (
            user is not None
            and user["active"]
            and bool(user["password_hash"])
            and not isinstance(error, AccountLocked | SecondFactorRequired)
        )
        locked = False
        with self.deps.uow() as uow:
            actor = person_actor(user, self.attempt.source_address, self.attempt.username)
            if countable and user is not None:
                failures, until = uow.accounts.record_failed_login(
                    user["id"], self.policy.max_failures, now + self.policy.lockout
                )
                detail["failures"] = failures
                locked = until is not None and until > now
                if locked and until is not None:
                    audit(
                        uow,
                        actor,
                        "user.lock",
                        now,
                        category="security",
                        detail={"user": user["username"], "until": str(until)},
                    )
                    error = AccountLocked(f"{error.detail}; {_locked(until)}")
            audit(
                uow, actor, "auth.login", now, category="security", outcome="failure", detail=detail
            )
            uow.commit()
        if locked and user is not None:
            self.cache.forget(user_id=user["id"])
        # Recorded above, with the failure count: the API edge need not audit it again.
        error.audited = False
        raise error


def _password_matches(hashing: PasswordHashing, user: dict[str, Any] | None, password: str) -> bool:
    if user is None or not user["active"] or not user["password_hash"]:
        # The same argon2 work as a real check, so timing does not tell who exists.
        hashing.verify(_dummy_hash(hashing), password)
        return False
    return hashing.verify(user["password_hash"], password)


@functools.cache
def _dummy_hash(hashing: PasswordHashing) -> str:
    return hashing.hash("not the password of anyone")


def _locked(until: datetime) -> str:
    return (
        f"the account is locked until {until.isoformat(timespec='seconds')} after too many "
        "failed sign-ins"
    )


def person_actor(user: dict[str, Any] | None, source_address: str, username: str = "") -> Actor:
    if user is None:
        return Actor(
            user_id=0, username=username[:150], roles=frozenset(), source_address=source_address
        )
    return Actor(
        user_id=user["id"],
        username=user["username"],
        roles=frozenset(user["roles"]),
        source_address=source_address,
    )
