"""Resolving a bearer token to an actor on every request, cheaply.

A valid token is cached for ``cache_seconds`` (10 s): a cached request costs one dict
lookup and no database query. Revoking, rotating, signing out, deactivating, locking
out or changing a user's access evicts the user's tokens from this process's cache at
once; other API processes notice within ``cache_seconds``.

Sessions carry an idle time-out. Their last use is written back at most once a minute
(``TOUCH_INTERVAL``) so that busy sessions do not write on every request; this process
also remembers the last use it saw, so within one process the time-out is exact, and
across processes it may come up to a minute early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from careloop.domain.access import Actor
from careloop.domain.errors import AccountLocked, NotAuthenticated, SessionTimedOut
from careloop.services.deps import Deps
from careloop.services.tokens import SESSION, TOKEN_PREFIX, token_digest

TOUCH_INTERVAL = timedelta(minutes=1)
_MAX_SEEN = 10_000


@dataclass(frozen=True)
class _Entry:
    actor: Actor
    fresh_until: float  # time.monotonic()
    fresh_until_clock: datetime  # the deps clock, which tests move
    idle: bool


class TokenAuthenticator:
    def __init__(self, deps: Deps, cache_seconds: float = 10.0) -> None:
        self._deps = deps
        self._cache_seconds = cache_seconds
        self._cache: dict[str, _Entry] = {}
        self._seen: dict[int, datetime] = {}  # session token id -> last use seen here
        self._lock = threading.Lock()

    def cached(self, token: str, source_address: str) -> Actor | None:
        """The actor of a recently seen valid token, without touching the database."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        entry = self._cache.get(token_digest(token))
        if entry is None or entry.fresh_until <= time.monotonic():
            return None
        now = self._deps.clock.now()
        if entry.fresh_until_clock <= now:
            return None
        if entry.idle and entry.actor.token_id is not None:
            self._seen[entry.actor.token_id] = now
        return entry.actor.with_address(source_address)

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
        _refuse_unusable(row, now)
        assert row is not None
        self._refuse_idle(row, now)
        if row["last_used_at"] is None or now - row["last_used_at"] >= TOUCH_INTERVAL:
            with self._deps.uow() as uow:
                uow.accounts.touch_token(row["token_id"], now)
                uow.commit()
        actor = _actor(row)
        fresh_for = self._cache_seconds
        if row["expires_at"] is not None:
            fresh_for = min(fresh_for, (row["expires_at"] - now).total_seconds())
        entry = _Entry(
            actor,
            time.monotonic() + fresh_for,
            now + timedelta(seconds=fresh_for),
            row["idle_timeout_seconds"] is not None,
        )
        with self._lock:
            self._cache[digest] = entry
            if entry.idle:
                self._remember_use(row["token_id"], now)
        return actor.with_address(source_address)

    def forget(self, *, token_ids: Iterable[int] = (), user_id: int | None = None) -> None:
        """Drop cached tokens (by id, or all of a user's) so the next request re-checks."""
        ids = set(token_ids)
        with self._lock:
            stale = [
                digest
                for digest, entry in self._cache.items()
                if entry.actor.token_id in ids or entry.actor.user_id == user_id
            ]
            for digest in stale:
                self._cache.pop(digest, None)

    def _refuse_idle(self, row: dict[str, Any], now: datetime) -> None:
        idle = row["idle_timeout_seconds"]
        if idle is None:
            return
        last_use = max(
            row["last_used_at"] or row["created_at"],
            self._seen.get(row["token_id"], row["created_at"]),
        )
        if now - last_use > timedelta(seconds=idle):
            self._seen.pop(row["token_id"], None)
            raise SessionTimedOut(
                f"the session timed out after {idle // 60} minutes without use; sign in again"
            )

    def _remember_use(self, token_id: int, now: datetime) -> None:
        if len(self._seen) >= _MAX_SEEN:
            # Forgetting only costs accuracy: the database's last use (at most a minute
            # old) still decides.
            self._seen.clear()
        self._seen[token_id] = now


def _refuse_unusable(row: dict[str, Any] | None, now: datetime) -> None:
    if row is None:
        raise NotAuthenticated("unknown or revoked API token")
    session = row["kind"] == SESSION
    if row["revoked_at"] is not None:
        raise NotAuthenticated(
            "the session has ended (signed out); sign in again"
            if session
            else "unknown or revoked API token"
        )
    if not row["active"]:
        raise NotAuthenticated(f"the account {row['username']!r} is deactivated")
    if row["locked_until"] is not None and row["locked_until"] > now:
        raise AccountLocked(
            f"the account is locked until {row['locked_until'].isoformat(timespec='seconds')} "
            "after too many failed sign-ins"
        )
    if row["expires_at"] is not None and row["expires_at"] <= now:
        if row["replaced_by"] is not None:
            raise NotAuthenticated(
                "the API token was rotated and its grace period is over; use its replacement"
            )
        raise NotAuthenticated(
            "the session has expired; sign in again" if session else "the API token has expired"
        )


def _actor(row: dict[str, Any]) -> Actor:
    return Actor(
        user_id=row["user_id"],
        username=row["username"],
        roles=frozenset(row["roles"]),
        token_id=row["token_id"],
        extra={"token_kind": row["kind"]},
        organisation=row["organisation"],
        locations=frozenset(row["locations"]),
        teams=frozenset(row["teams"]),
        scopes=frozenset(row["scopes"]) if row["scopes"] is not None else None,
    )
