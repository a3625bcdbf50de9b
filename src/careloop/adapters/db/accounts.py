"""Users and API tokens. Tokens are stored as SHA-256 digests and shown only once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, or_, select, update

from careloop.adapters.db.tables import api_tokens, users
from careloop.domain.errors import FieldProblem, InvalidInput

# What a token listing shows: never the digest.
_TOKEN_COLUMNS = (
    api_tokens.c.id,
    api_tokens.c.user_id,
    api_tokens.c.name,
    api_tokens.c.prefix,
    api_tokens.c.kind,
    api_tokens.c.scopes,
    api_tokens.c.created_at,
    api_tokens.c.expires_at,
    api_tokens.c.revoked_at,
    api_tokens.c.last_used_at,
    api_tokens.c.idle_timeout_seconds,
    api_tokens.c.replaced_by,
)


class AccountRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add_user(
        self,
        username: str,
        display_name: str,
        password_hash: str | None,
        roles: list[str],
        at: datetime,
        *,
        organisation: str = "",
        locations: list[str] | None = None,
        teams: list[str] | None = None,
        manager: str | None = None,
    ) -> int:
        if self.find_user(username) is not None:
            raise InvalidInput([FieldProblem("username", f"user {username!r} already exists")])
        return int(
            self._connection.execute(
                users.insert().returning(users.c.id),
                {
                    "username": username,
                    "display_name": display_name,
                    "password_hash": password_hash,
                    "roles": roles,
                    "active": True,
                    "created_at": at,
                    "organisation": organisation,
                    "locations": locations or [],
                    "teams": teams or [],
                    "manager": manager,
                },
            ).scalar_one()
        )

    def find_user(self, username: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(select(users).where(users.c.username == username))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def users(self) -> list[dict[str, Any]]:
        rows = self._connection.execute(select(users).order_by(users.c.username)).mappings()
        return [dict(row) for row in rows]

    def find_oidc_user(self, issuer: str, subject: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(users).where(users.c.oidc_issuer == issuer, users.c.oidc_subject == subject)
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def update_user(self, user_id: int, values: dict[str, Any]) -> None:
        self._connection.execute(update(users).where(users.c.id == user_id).values(**values))

    def record_failed_login(
        self, user_id: int, max_failures: int, lock_until: datetime
    ) -> tuple[int, datetime | None]:
        """Count one more failure and lock the account when it reaches ``max_failures``;
        one statement, so concurrent failures can neither be lost nor skip the lock."""
        failures = users.c.failed_logins + 1
        row = self._connection.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(
                failed_logins=case((failures >= max_failures, 0), else_=failures),
                locked_until=case(
                    (failures >= max_failures, lock_until), else_=users.c.locked_until
                ),
            )
            .returning(users.c.failed_logins, users.c.locked_until)
        ).one()
        return int(row.failed_logins), row.locked_until

    def claim_totp_secret(self, user_id: int, seen: str, replacement: str) -> bool:
        """Compare-and-set on the stored TOTP state: False if another sign-in changed it
        since ``seen`` was read (the same code used twice at once)."""
        result = self._connection.execute(
            update(users)
            .where(users.c.id == user_id, users.c.totp_secret == seen)
            .values(totp_secret=replacement)
        )
        return bool(result.rowcount == 1)

    def add_token(
        self,
        user_id: int,
        name: str,
        prefix: str,
        token_hash: str,
        at: datetime,
        expires_at: datetime | None,
        *,
        scopes: list[str] | None = None,
        kind: str = "api",
        idle_timeout_seconds: int | None = None,
    ) -> int:
        return int(
            self._connection.execute(
                api_tokens.insert().returning(api_tokens.c.id),
                {
                    "user_id": user_id,
                    "name": name,
                    "prefix": prefix,
                    "token_hash": token_hash,
                    "created_at": at,
                    "expires_at": expires_at,
                    "scopes": scopes,
                    "kind": kind,
                    "last_used_at": at,
                    "idle_timeout_seconds": idle_timeout_seconds,
                },
            ).scalar_one()
        )

    def token(self, token_id: int) -> dict[str, Any] | None:
        row = (
            self._connection.execute(select(*_TOKEN_COLUMNS).where(api_tokens.c.id == token_id))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def tokens_of(self, user_id: int, now: datetime) -> list[dict[str, Any]]:
        """The user's tokens still usable at ``now`` (not revoked, not expired)."""
        rows = self._connection.execute(
            select(*_TOKEN_COLUMNS)
            .where(
                api_tokens.c.user_id == user_id,
                api_tokens.c.revoked_at.is_(None),
                or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
            )
            .order_by(api_tokens.c.id)
        ).mappings()
        return [dict(row) for row in rows]

    def revoke_token(self, token_id: int, at: datetime) -> bool:
        result = self._connection.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return bool(result.rowcount == 1)

    def revoke_tokens_of(self, user_id: int, at: datetime) -> list[int]:
        rows = self._connection.execute(
            update(api_tokens)
            .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
            .returning(api_tokens.c.id)
        )
        return [int(token_id) for token_id in rows.scalars()]

    def replace_token(self, token_id: int, replacement_id: int, retire_at: datetime) -> bool:
        """Point the old token at its replacement and end its life at ``retire_at`` (or
        earlier, if it was to expire sooner). False if it was replaced or revoked already."""
        expires = api_tokens.c.expires_at
        result = self._connection.execute(
            update(api_tokens)
            .where(
                api_tokens.c.id == token_id,
                api_tokens.c.replaced_by.is_(None),
                api_tokens.c.revoked_at.is_(None),
            )
            .values(
                replaced_by=replacement_id,
                expires_at=case(
                    (and_(expires.is_not(None), expires < retire_at), expires), else_=retire_at
                ),
            )
        )
        return bool(result.rowcount == 1)

    def touch_token(self, token_id: int, at: datetime) -> None:
        self._connection.execute(
            update(api_tokens)
            .where(
                api_tokens.c.id == token_id,
                or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at < at),
            )
            .values(last_used_at=at)
        )

    def token_with_user(self, token_hash: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(
                    api_tokens.c.id.label("token_id"),
                    api_tokens.c.created_at,
                    api_tokens.c.expires_at,
                    api_tokens.c.revoked_at,
                    api_tokens.c.scopes,
                    api_tokens.c.kind,
                    api_tokens.c.last_used_at,
                    api_tokens.c.idle_timeout_seconds,
                    api_tokens.c.replaced_by,
                    users.c.id.label("user_id"),
                    users.c.username,
                    users.c.roles,
                    users.c.active,
                    users.c.organisation,
                    users.c.locations,
                    users.c.teams,
                    users.c.locked_until,
                )
                .join(users, users.c.id == api_tokens.c.user_id)
                .where(api_tokens.c.token_hash == token_hash)
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None
