"""What authentication use cases need besides the database: password hashing, TOTP
codes, the sign-in policy, and a way to drop cached tokens at once. Wired in bootstrap."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from careloop.domain.access import Role

# Staff are people; an integration client is a system and signs in with API tokens.
STAFF_EXEMPT_ROLES = frozenset({Role.INTEGRATION_CLIENT.value})


@dataclass(frozen=True)
class PasswordHashing:
    hash: Callable[[str], str]
    verify: Callable[[str, str], bool]


class TotpCodes(Protocol):
    """RFC 6238 codes (the adapter is careloop.adapters.totp)."""

    def new_secret(self) -> str: ...
    def provisioning_uri(self, secret: str, username: str) -> str: ...
    def matching_step(self, secret: str, code: str, at: datetime) -> int | None:
        """The time step ``code`` belongs to, within one step either side of ``at``."""
        ...


class TokenCache(Protocol):
    """The process's cache of resolved tokens; use cases that end a token's or a user's
    access evict them after commit so this process refuses them at once."""

    def forget(self, *, token_ids: Iterable[int] = (), user_id: int | None = None) -> None: ...


class NoTokenCache:
    def forget(self, *, token_ids: Iterable[int] = (), user_id: int | None = None) -> None:
        return None


@dataclass(frozen=True)
class AuthPolicy:
    """Sign-in and token rules, from settings (docs/authentication.md)."""

    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)
    session_lifetime: timedelta = timedelta(hours=12)
    session_idle_timeout: timedelta = timedelta(minutes=30)
    token_max_lifetime: timedelta = timedelta(days=365)
    rotation_grace: timedelta = timedelta(hours=1)
    require_totp_for_staff: bool = False
    # Long enough to scan a QR code and type one code; the token can do nothing else.
    enrolment_lifetime: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Authentication:
    hashing: PasswordHashing
    totp: TotpCodes
    policy: AuthPolicy = field(default_factory=AuthPolicy)
