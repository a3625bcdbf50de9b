"""OpenID Connect single sign-on: an identity (issuer, subject) maps to a careloop user.

The first sign-in of an identity links it to the existing user named by a configured
claim (preferred_username, or a verified email); later sign-ins match on (issuer,
subject) alone. Nobody is created here: roles are given by an administrator, never by
whoever controls an account at the identity provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from careloop.domain.errors import AccountLocked, NotAuthenticated
from careloop.services.credentials import AuthPolicy
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit
from careloop.services.sessions import SignIn, open_session, person_actor


@dataclass(frozen=True)
class PendingSignIn:
    """What the browser carries from the redirect to the callback (state, nonce, PKCE)."""

    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class Identity:
    issuer: str
    subject: str
    claims: dict[str, Any]


class IdentityProvider(Protocol):
    @property
    def link_claim(self) -> str: ...
    def authorization_url(self) -> tuple[str, PendingSignIn]: ...
    def identity(self, params: Mapping[str, str], pending: PendingSignIn) -> Identity:
        """Validate the callback and the ID token; raise NotAuthenticated if anything
        is off, IdentityProviderUnavailable if the provider cannot be reached."""
        ...


def start_sign_in(provider: IdentityProvider) -> tuple[str, PendingSignIn]:
    """Where to send the browser, and what it must bring back."""
    return provider.authorization_url()


def finish_sign_in(
    deps: Deps,
    policy: AuthPolicy,
    provider: IdentityProvider,
    params: Mapping[str, str],
    pending: PendingSignIn,
    source_address: str,
) -> SignIn:
    """Redeem the provider's callback for a careloop session."""
    identity = provider.identity(params, pending)
    now = deps.clock.now()
    with deps.uow() as uow:
        user = uow.accounts.find_oidc_user(identity.issuer, identity.subject)
        if user is None:
            user = _link(uow, provider.link_claim, identity, source_address, now)
        if not user["active"]:
            raise NotAuthenticated(f"the account {user['username']!r} is deactivated")
        if user["locked_until"] is not None and user["locked_until"] > now:
            raise AccountLocked(
                f"the account is locked until {user['locked_until'].isoformat(timespec='seconds')}"
            )
        signed_in = open_session(uow, policy, user, now, source_address, "oidc")
        uow.commit()
    return signed_in


def _link(
    uow: UnitOfWork, claim: str, identity: Identity, source_address: str, now: datetime
) -> dict[str, Any]:
    value = identity.claims.get(claim)
    if claim == "email" and identity.claims.get("email_verified") is not True:
        # An unverified address proves nothing about who holds the account.
        raise NotAuthenticated("the identity provider has not verified this e-mail address")
    user = uow.accounts.find_user(value) if isinstance(value, str) and value else None
    if user is None:
        raise NotAuthenticated(
            f"no careloop user matches this identity ({claim} {value!r}); an administrator "
            "must create the user first"
        )
    if user["oidc_subject"] is not None:
        raise NotAuthenticated(
            f"user {user['username']!r} is linked to another single sign-on identity"
        )
    uow.accounts.update_user(
        user["id"], {"oidc_issuer": identity.issuer, "oidc_subject": identity.subject}
    )
    audit(
        uow,
        person_actor(user, source_address),
        "user.oidc.link",
        now,
        category="security",
        detail={"user": user["username"], "issuer": identity.issuer, "claim": claim},
    )
    user["oidc_issuer"], user["oidc_subject"] = identity.issuer, identity.subject
    return user
