"""Outbox rows: written in the same transaction as the change that caused them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from careloop.adapters.db.driver_sql import insert_into
from careloop.adapters.db.tables import outbox

_INSERT = insert_into(outbox)


class OutboxStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add(
        self,
        case_id: int | None,
        event_type: str,
        payload: dict[str, Any],
        idempotency_key: str,
        at: datetime,
    ) -> None:
        _INSERT.execute(
            self._connection,
            {
                "case_id": case_id,
                "event_type": event_type,
                "payload": payload,
                "idempotency_key": idempotency_key,
                "created_at": at,
                "available_at": at,
                "attempts": 0,
            },
        )

    def claim_pending(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Lock a batch of due rows; other workers skip them (PostgreSQL SKIP LOCKED)."""
        earlier = outbox.alias("earlier")
        # Only the oldest pending event of each case is eligible: a later event never
        # overtakes one that is waiting out a retry backoff.
        blocked = (
            select(earlier.c.id)
            .where(
                earlier.c.case_id == outbox.c.case_id,
                earlier.c.published_at.is_(None),
                earlier.c.id < outbox.c.id,
            )
            .exists()
        )
        query = (
            select(outbox)
            .where(outbox.c.published_at.is_(None), outbox.c.available_at <= now, ~blocked)
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def mark_published(self, outbox_ids: list[int], at: datetime) -> None:
        """One statement for a whole delivered batch."""
        if outbox_ids:
            self._connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(outbox_ids))
                .values(published_at=at, attempts=outbox.c.attempts + 1, last_error=None)
            )

    def mark_failed(self, outbox_id: int, error: str, retry_at: datetime) -> None:
        self._connection.execute(
            update(outbox)
            .where(outbox.c.id == outbox_id)
            .values(attempts=outbox.c.attempts + 1, last_error=error[:2000], available_at=retry_at)
        )
