"""Break-glass grants: time-limited access to one case outside the actor's record rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from careloop.adapters.db.tables import access_grants


class AccessStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add_grant(
        self,
        user_id: int,
        username: str,
        case_id: int,
        reason: str,
        at: datetime,
        expires_at: datetime,
    ) -> int:
        return int(
            self._connection.execute(
                access_grants.insert().returning(access_grants.c.id),
                {
                    "user_id": user_id,
                    "username": username,
                    "case_id": case_id,
                    "reason": reason,
                    "granted_at": at,
                    "expires_at": expires_at,
                },
            ).scalar_one()
        )

    def active_grant(self, user_id: int, case_id: int, now: datetime) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(access_grants)
                .where(
                    access_grants.c.user_id == user_id,
                    access_grants.c.case_id == case_id,
                    access_grants.c.expires_at > now,
                    access_grants.c.revoked_at.is_(None),
                )
                .order_by(access_grants.c.expires_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def grants(self, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        query = select(access_grants).order_by(access_grants.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(access_grants.c.granted_at >= since)
        return [dict(r) for r in self._connection.execute(query).mappings()]
