"""Users and API tokens. Tokens are stored as SHA-256 digests and shown only once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from careloop.adapters.db.tables import api_tokens, users
from careloop.domain.errors import FieldProblem, InvalidInput


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

    def add_token(
        self,
        user_id: int,
        name: str,
        prefix: str,
        token_hash: str,
        at: datetime,
        expires_at: datetime | None,
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
                },
            ).scalar_one()
        )

    def token_with_user(self, token_hash: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(
                    api_tokens.c.id.label("token_id"),
                    api_tokens.c.expires_at,
                    api_tokens.c.revoked_at,
                    users.c.id.label("user_id"),
                    users.c.username,
                    users.c.roles,
                    users.c.active,
                    users.c.organisation,
                    users.c.locations,
                    users.c.teams,
                    api_tokens.c.scopes,
                )
                .join(users, users.c.id == api_tokens.c.user_id)
                .where(api_tokens.c.token_hash == token_hash)
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None
