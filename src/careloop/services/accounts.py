"""Users: create, change roles and where they work, deactivate. Every privilege change
is audited (category "security") with the values before and after.

Tokens, sign-in and request authentication live in services.tokens, services.sessions
and services.authentication; the names below are re-exported for existing callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from careloop.domain.access import ROLE_NAMES, Action, Actor
from careloop.domain.errors import FieldProblem, InvalidInput, NotFound
from careloop.services.authentication import TokenAuthenticator
from careloop.services.credentials import (
    NoTokenCache,
    PasswordHashing,
    TokenCache,
)
from careloop.services.deps import Deps
from careloop.services.recording import audit
from careloop.services.tokens import TOKEN_PREFIX, create_token, token_digest

__all__ = [
    "TOKEN_PREFIX",
    "AccessChange",
    "PasswordHashing",
    "TokenAuthenticator",
    "add_user",
    "change_access",
    "create_token",
    "deactivate_user",
    "list_users",
    "token_digest",
]

MIN_PASSWORD_LENGTH = 12
_ACCESS_FIELDS = ("roles", "organisation", "locations", "teams", "manager")


@dataclass(frozen=True)
class AccessChange:
    """New values for what a user may do and where; None leaves a field as it is."""

    roles: list[str] | None = None
    organisation: str | None = None
    locations: list[str] | None = None
    teams: list[str] | None = None
    manager: str | None = None
    clear_manager: bool = False


def add_user(
    deps: Deps,
    actor: Actor,
    hashing: PasswordHashing,
    username: str,
    display_name: str,
    roles: list[str],
    password: str | None,
    *,
    organisation: str = "",
    locations: list[str] | tuple[str, ...] = (),
    teams: list[str] | tuple[str, ...] = (),
    manager: str | None = None,
) -> int:
    actor.require(Action.USER_MANAGE)
    problems = _username_problems(username) + _role_problems(roles)
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        problems.append(FieldProblem("password", f"at least {MIN_PASSWORD_LENGTH} characters"))
    if problems:
        raise InvalidInput(problems)
    now = deps.clock.now()
    password_hash = hashing.hash(password) if password else None
    granted: dict[str, Any] = {
        "roles": sorted(set(roles)),
        "organisation": organisation,
        "locations": sorted(set(locations)),
        "teams": sorted(set(teams)),
        "manager": manager,
    }
    with deps.uow() as uow:
        user_id = uow.accounts.add_user(
            username, display_name or username, password_hash, at=now, **granted
        )
        detail = {"user_id": user_id, "username": username, **granted}
        audit(uow, actor, "user.create", now, category="security", detail=detail)
        uow.commit()
    return user_id


def change_access(
    deps: Deps,
    actor: Actor,
    username: str,
    change: AccessChange,
    cache: TokenCache | None = None,
) -> dict[str, Any]:
    """Change a user's roles, organisation, locations, teams or manager; returns the
    values after. The user's cached tokens pick the change up at once in this process."""
    actor.require(Action.USER_MANAGE)
    after = _access_values(change)
    problems = _role_problems(after["roles"]) if "roles" in after else []
    if not after:
        problems.append(FieldProblem("body", "name at least one field to change"))
    if problems:
        raise InvalidInput(problems)
    now = deps.clock.now()
    with deps.uow() as uow:
        user = uow.accounts.find_user(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        before = {name: user[name] for name in after}
        uow.accounts.update_user(user["id"], after)
        audit(
            uow,
            actor,
            "user.access.change",
            now,
            category="security",
            detail={"user": username, "before": before, "after": after},
        )
        uow.commit()
    (cache or NoTokenCache()).forget(user_id=user["id"])
    return {name: after.get(name, user[name]) for name in _ACCESS_FIELDS}


def deactivate_user(
    deps: Deps, actor: Actor, username: str, cache: TokenCache | None = None
) -> None:
    """Deactivate a user and revoke every token and session they hold."""
    actor.require(Action.USER_MANAGE)
    if username == actor.username:
        raise InvalidInput([FieldProblem("username", "you cannot deactivate yourself")])
    now = deps.clock.now()
    with deps.uow() as uow:
        user = uow.accounts.find_user(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        if not user["active"]:
            return
        uow.accounts.update_user(user["id"], {"active": False})
        revoked = uow.accounts.revoke_tokens_of(user["id"], now)
        audit(
            uow,
            actor,
            "user.deactivate",
            now,
            category="security",
            detail={
                "user": username,
                "before": {"active": True, "roles": user["roles"]},
                "after": {"active": False},
                "revoked_tokens": revoked,
            },
        )
        uow.commit()
    (cache or NoTokenCache()).forget(user_id=user["id"])


def list_users(deps: Deps, actor: Actor) -> list[dict[str, Any]]:
    """Every user without secrets: no password hash, no TOTP secret."""
    actor.require(Action.USER_MANAGE)
    with deps.read_uow() as uow:
        rows = uow.accounts.users()
    hidden = {"password_hash", "totp_secret", "oidc_subject"}
    return [
        {
            **{k: v for k, v in row.items() if k not in hidden},
            "totp": row["totp_enabled_at"] is not None,
        }
        for row in rows
    ]


def _access_values(change: AccessChange) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if change.roles is not None:
        values["roles"] = sorted(set(change.roles))
    if change.organisation is not None:
        values["organisation"] = change.organisation
    if change.locations is not None:
        values["locations"] = sorted(set(change.locations))
    if change.teams is not None:
        values["teams"] = sorted(set(change.teams))
    if change.manager is not None or change.clear_manager:
        values["manager"] = change.manager
    return values


def _username_problems(username: str) -> list[FieldProblem]:
    plain = username.replace(".", "").replace("_", "").replace("-", "").replace("@", "")
    if not username or len(username) > 150 or not plain.isalnum():
        return [FieldProblem("username", "1-150 letters, digits, '.', '_', '-' or '@'")]
    return []


def _role_problems(roles: list[str]) -> list[FieldProblem]:
    unknown = sorted(set(roles) - ROLE_NAMES)
    if unknown:
        return [FieldProblem("roles", f"unknown roles {unknown}; use {sorted(ROLE_NAMES)}")]
    if not roles:
        return [FieldProblem("roles", "at least one role is required")]
    return []
