"""Users, API tokens and authentication. Tokens are shown once and stored as digests.

API tokens are 256-bit random secrets, so a fast SHA-256 digest is the right storage
form (it is what makes per-request lookup cheap); passwords, which people choose, are
hashed with argon2id instead.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from careloop.domain.access import ROLE_NAMES, Action, Actor
from careloop.domain.errors import FieldProblem, InvalidInput, NotAuthenticated
from careloop.services.deps import Deps
from careloop.services.recording import audit

TOKEN_PREFIX = "clp_"  # noqa: S105 - a public marker, not a secret
MIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class PasswordHashing:
    hash: Callable[[str], str]
    verify: Callable[[str, str], bool]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    problems = []
    if (
        not username
        or len(username) > 150
        or not username.replace(".", "").replace("_", "").replace("-", "").isalnum()
    ):
        problems.append(FieldProblem("username", "1-150 letters, digits, '.', '_' or '-'"))
    unknown = sorted(set(roles) - ROLE_NAMES)
    if not roles or unknown:
        problems.append(
            FieldProblem(
                "roles",
                f"unknown roles {unknown}; use {sorted(ROLE_NAMES)}"
                if unknown
                else "at least one role is required",
            )
        )
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        problems.append(FieldProblem("password", f"at least {MIN_PASSWORD_LENGTH} characters"))
    if problems:
        raise InvalidInput(problems)
    now = deps.clock.now()
    password_hash = hashing.hash(password) if password else None
    with deps.uow() as uow:
        user_id = uow.accounts.add_user(
            username,
            display_name or username,
            password_hash,
            sorted(set(roles)),
            now,
            organisation=organisation,
            locations=sorted(set(locations)),
            teams=sorted(set(teams)),
            manager=manager,
        )
        audit(
            uow,
            actor,
            "user.create",
            now,
            category="security",
            detail={
                "user_id": user_id,
                "username": username,
                "roles": sorted(set(roles)),
                "locations": sorted(set(locations)),
                "teams": sorted(set(teams)),
            },
        )
        uow.commit()
    return user_id


def create_token(deps: Deps, actor: Actor, username: str, name: str, ttl: timedelta | None) -> str:
    """Create an API token for ``username``; the only time its secret is visible."""
    if actor.username != username:
        actor.require(Action.USER_MANAGE)
    now = deps.clock.now()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with deps.uow() as uow:
        user = uow.accounts.find_user(username)
        if user is None:
            raise InvalidInput([FieldProblem("username", f"no user {username!r}")])
        token_id = uow.accounts.add_token(
            user["id"], name, token[:12], token_digest(token), now, now + ttl if ttl else None
        )
        audit(
            uow,
            actor,
            "token.create",
            now,
            category="security",
            detail={"token_id": token_id, "user": username, "name": name},
        )
        uow.commit()
    return token


class TokenAuthenticator:
    """Resolves bearer tokens to actors, caching hits briefly to keep requests cheap.

    A revoked token stops working within ``cache_seconds``.
    """

    def __init__(self, deps: Deps, cache_seconds: float = 10.0) -> None:
        self._deps = deps
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Actor]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str, source_address: str) -> Actor | None:
        """The actor of a recently seen valid token, without touching the database."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        cached = self._cache.get(token_digest(token))
        if cached is not None and cached[0] > time.monotonic():
            return _with_address(cached[1], source_address)
        return None

    def authenticate(self, token: str, source_address: str) -> Actor:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            raise NotAuthenticated("malformed API token")
        actor = self.cached(token, source_address)
        if actor is not None:
            return actor
        digest = token_digest(token)
        with self._deps.read_uow() as uow:
            row = uow.accounts.token_with_user(digest)
        now = self._deps.clock.now()
        if row is None or row["revoked_at"] is not None or not row["active"]:
            raise NotAuthenticated("unknown or revoked API token")
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise NotAuthenticated("the API token has expired")
        actor = Actor(
            user_id=row["user_id"],
            username=row["username"],
            roles=frozenset(row["roles"]),
            token_id=row["token_id"],
            organisation=row["organisation"],
            locations=frozenset(row["locations"]),
            teams=frozenset(row["teams"]),
            scopes=frozenset(row["scopes"]) if row["scopes"] is not None else None,
        )
        expiry = time.monotonic() + self._cache_seconds
        if row["expires_at"] is not None:
            expiry = min(expiry, time.monotonic() + (row["expires_at"] - now).total_seconds())
        with self._lock:
            self._cache[digest] = (expiry, actor)
        return _with_address(actor, source_address)


def login(
    deps: Deps,
    hashing: PasswordHashing,
    username: str,
    password: str,
    source_address: str,
    ttl: timedelta = timedelta(hours=12),
) -> str:
    """Exchange a username and password for a short-lived API token."""
    with deps.uow() as uow:
        user = uow.accounts.find_user(username)
    if (
        user is None
        or not user["active"]
        or not user["password_hash"]
        or not hashing.verify(user["password_hash"], password)
    ):
        raise NotAuthenticated("wrong username or password")
    actor = Actor(
        user_id=user["id"],
        username=user["username"],
        roles=frozenset(user["roles"]),
        source_address=source_address,
        organisation=user["organisation"],
        locations=frozenset(user["locations"]),
        teams=frozenset(user["teams"]),
    )
    return create_token(deps, actor, username, "login", ttl)


def _with_address(actor: Actor, source_address: str) -> Actor:
    return actor.with_address(source_address)
