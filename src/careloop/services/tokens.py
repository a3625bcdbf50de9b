"""API tokens: create with scopes and an expiry, rotate with a grace period, revoke, list.

API tokens are 256-bit random secrets, so a fast SHA-256 digest is the right storage
form (it is what makes per-request lookup cheap); passwords, which people choose, are
hashed with argon2id instead. A token's secret is visible once, when it is issued.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from careloop.domain.access import SCOPE_NAMES, Action, Actor
from careloop.domain.errors import FieldProblem, InvalidInput, NotFound, PermissionDenied
from careloop.services.credentials import AuthPolicy, NoTokenCache, TokenCache
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork
from careloop.services.recording import audit

TOKEN_PREFIX = "clp_"  # noqa: S105 - a public marker, not a secret
API, SESSION, ENROLMENT = "api", "session", "enrolment"
_DEFAULT_POLICY = AuthPolicy()


@dataclass(frozen=True)
class IssuedToken:
    id: int
    token: str  # the secret: returned to the caller once, never stored
    kind: str
    scopes: list[str] | None
    expires_at: datetime | None
    idle_timeout_seconds: int | None = None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    uow: UnitOfWork,
    user_id: int,
    name: str,
    now: datetime,
    expires_at: datetime,
    *,
    scopes: list[str] | None = None,
    kind: str = API,
    idle_timeout: timedelta | None = None,
) -> IssuedToken:
    """Store a new token in the caller's transaction; the caller audits and commits."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    idle = int(idle_timeout.total_seconds()) if idle_timeout else None
    token_id = uow.accounts.add_token(
        user_id,
        name,
        token[:12],
        token_digest(token),
        now,
        expires_at,
        scopes=scopes,
        kind=kind,
        idle_timeout_seconds=idle,
    )
    return IssuedToken(token_id, token, kind, scopes, expires_at, idle)


def create_token(
    deps: Deps,
    actor: Actor,
    username: str,
    name: str,
    ttl: timedelta | None,
    *,
    scopes: list[str] | None = None,
    policy: AuthPolicy = _DEFAULT_POLICY,
) -> str:
    """Create an API token for ``username``; the only time its secret is visible."""
    return create_api_token(deps, actor, username, name, ttl, scopes=scopes, policy=policy).token


def create_api_token(
    deps: Deps,
    actor: Actor,
    username: str,
    name: str,
    ttl: timedelta | None,
    *,
    scopes: list[str] | None = None,
    policy: AuthPolicy = _DEFAULT_POLICY,
) -> IssuedToken:
    """An API token for ``username`` (another user's needs user management), lasting
    ``ttl`` or, if None, the longest lifetime the policy allows."""
    if actor.username != username:
        actor.require(Action.USER_MANAGE)
    problems = _name_problems(name) + _lifetime_problems(ttl, policy)
    scopes = _checked_scopes(scopes, problems)
    if problems:
        raise InvalidInput(problems)
    _require_within_own_scopes(actor, scopes)
    now = deps.clock.now()
    with deps.uow() as uow:
        user = uow.accounts.find_user(username)
        if user is None or not user["active"]:
            raise InvalidInput([FieldProblem("username", f"no active user {username!r}")])
        issued = issue_token(
            uow, user["id"], name, now, now + (ttl or policy.token_max_lifetime), scopes=scopes
        )
        audit(
            uow,
            actor,
            "token.create",
            now,
            category="security",
            detail={"token_id": issued.id, "user": username, "name": name, "scopes": scopes},
        )
        uow.commit()
    return issued


def rotate_token(
    deps: Deps,
    actor: Actor,
    token_id: int,
    *,
    policy: AuthPolicy = _DEFAULT_POLICY,
    cache: TokenCache | None = None,
) -> tuple[IssuedToken, datetime]:
    """A new secret for an API token: same user, name and scopes, a fresh lifetime as
    long as the old one's. The old secret keeps working for the grace period only, so
    clients can switch over without an outage. Returns the new token and when the old
    one stops working."""
    now = deps.clock.now()
    with deps.uow() as uow:
        old = _owned_token(uow, actor, token_id)
        if old["kind"] != API:
            raise InvalidInput(
                [FieldProblem("token_id", "only API tokens rotate; sign in again instead")]
            )
        if old["replaced_by"] is not None or old["revoked_at"] is not None or _expired(old, now):
            raise InvalidInput(
                [FieldProblem("token_id", f"token {token_id} is rotated, revoked or expired")]
            )
        _require_within_own_scopes(actor, old["scopes"])
        lifetime = policy.token_max_lifetime
        if old["expires_at"] is not None:
            lifetime = min(lifetime, old["expires_at"] - old["created_at"])
        new = issue_token(
            uow, old["user_id"], old["name"], now, now + lifetime, scopes=old["scopes"]
        )
        retire_at = min(now + policy.rotation_grace, old["expires_at"] or now + lifetime)
        if not uow.accounts.replace_token(token_id, new.id, retire_at):
            raise InvalidInput([FieldProblem("token_id", f"token {token_id} was just rotated")])
        audit(
            uow,
            actor,
            "token.rotate",
            now,
            category="security",
            detail={"token_id": token_id, "replaced_by": new.id, "old_valid_until": str(retire_at)},
        )
        uow.commit()
    (cache or NoTokenCache()).forget(token_ids=[token_id])
    return new, retire_at


def revoke_token(
    deps: Deps, actor: Actor, token_id: int, *, cache: TokenCache | None = None
) -> None:
    """Revoke a token at once. Revoking a revoked token changes nothing."""
    now = deps.clock.now()
    with deps.uow() as uow:
        token = _owned_token(uow, actor, token_id)
        if not uow.accounts.revoke_token(token_id, now):
            return
        audit(
            uow,
            actor,
            "token.revoke",
            now,
            category="security",
            detail={"token_id": token_id, "user_id": token["user_id"], "kind": token["kind"]},
        )
        uow.commit()
    (cache or NoTokenCache()).forget(token_ids=[token_id])


def list_tokens(deps: Deps, actor: Actor) -> list[dict[str, Any]]:
    """The actor's own usable tokens and sessions, without their secrets."""
    with deps.read_uow() as uow:
        return uow.accounts.tokens_of(actor.user_id, deps.clock.now())


def _owned_token(uow: UnitOfWork, actor: Actor, token_id: int) -> dict[str, Any]:
    token = uow.accounts.token(token_id)
    # Someone else's token: only user management may touch it, and nobody else learns
    # that it exists.
    foreign = token is not None and token["user_id"] != actor.user_id
    if token is None or (foreign and not actor.can(Action.USER_MANAGE)):
        raise NotFound(f"no token {token_id} of yours")
    return token


def _expired(token: dict[str, Any], now: datetime) -> bool:
    return token["expires_at"] is not None and token["expires_at"] <= now


def _name_problems(name: str) -> list[FieldProblem]:
    if not name.strip() or len(name) > 100:
        return [FieldProblem("name", "1-100 characters saying what the token is for")]
    return []


def _lifetime_problems(ttl: timedelta | None, policy: AuthPolicy) -> list[FieldProblem]:
    if ttl is None:
        return []
    if ttl <= timedelta(0):
        return [FieldProblem("expires_in", "must be positive")]
    if ttl > policy.token_max_lifetime:
        days = policy.token_max_lifetime.days
        return [FieldProblem("expires_in", f"at most {days} days (the maximum token lifetime)")]
    return []


def _checked_scopes(scopes: list[str] | None, problems: list[FieldProblem]) -> list[str] | None:
    if scopes is None:
        return None
    unknown = sorted(set(scopes) - SCOPE_NAMES)
    if unknown:
        problems.append(
            FieldProblem("scopes", f"unknown scopes {unknown}; use {sorted(SCOPE_NAMES)}")
        )
    elif not scopes:
        problems.append(
            FieldProblem("scopes", "name at least one scope, or omit scopes for the full roles")
        )
    return sorted(set(scopes))


def _require_within_own_scopes(actor: Actor, scopes: list[str] | None) -> None:
    """A scoped token may hand out no more than it holds itself."""
    if actor.scopes is None:
        return
    if scopes is None or not set(scopes) <= actor.scopes:
        raise PermissionDenied(
            f"a token with scopes {sorted(actor.scopes)} cannot issue one with "
            f"{'all scopes' if scopes is None else sorted(scopes)}"
        )
