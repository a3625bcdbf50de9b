"""Outbox rows: written in the same transaction as the change that caused them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

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
        pending = outbox.c.published_at.is_(None) & outbox.c.dead_at.is_(None)
        # Only the oldest pending event of each case is eligible: a later event never
        # overtakes one that is waiting out a retry backoff. Grouping the pending rows
        # (a partial index) is linear in their number whatever the planner's statistics;
        # a per-row NOT EXISTS probe went quadratic on a burst with stale statistics.
        heads = select(func.min(outbox.c.id)).where(pending).group_by(outbox.c.case_id)
        query = (
            select(outbox)
            .where(
                pending,
                outbox.c.available_at <= now,
                outbox.c.id.in_(heads) | outbox.c.case_id.is_(None),
            )
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

    def mark_failed(
        self, outbox_id: int, error: str, retry_at: datetime | None, at: datetime
    ) -> None:
        """Schedule a retry at ``retry_at``, or dead-letter the row when it is None."""
        values: dict[str, Any] = {"attempts": outbox.c.attempts + 1, "last_error": error[:2000]}
        if retry_at is None:
            values["dead_at"] = at
        else:
            values["available_at"] = retry_at
        self._connection.execute(update(outbox).where(outbox.c.id == outbox_id).values(values))

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        query = (
            select(outbox).where(outbox.c.dead_at.is_not(None)).order_by(outbox.c.id).limit(limit)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def replay(self, outbox_ids: list[int] | None, now: datetime) -> int:
        """Put dead letters back in line, with a fresh retry schedule."""
        query = (
            update(outbox)
            .where(outbox.c.dead_at.is_not(None))
            .values(dead_at=None, attempts=0, available_at=now)
        )
        if outbox_ids is not None:
            query = query.where(outbox.c.id.in_(outbox_ids))
        return int(self._connection.execute(query).rowcount or 0)

    def for_case(self, case_id: int) -> list[dict[str, Any]]:
        query = select(outbox).where(outbox.c.case_id == case_id).order_by(outbox.c.id)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def counts(self) -> dict[str, int]:
        pending = outbox.c.published_at.is_(None) & outbox.c.dead_at.is_(None)
        query = select(
            func.count().filter(pending), func.count().filter(outbox.c.dead_at.is_not(None))
        )
        waiting, dead = self._connection.execute(query).one()
        return {"pending": int(waiting), "dead": int(dead)}
