"""Webhook subscriptions, deliveries with their attempt log, and inbound sources."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, update

from careloop.adapters.db.automation_tables import (
    inbound_sources,
    inbound_webhooks,
    notifications,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)
from careloop.adapters.db.insert_new import insert_new
from careloop.domain.errors import NotFound

_SUBSCRIPTION_COLUMNS = [c for c in webhook_subscriptions.c if c.key != "secrets"]


class WebhookStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    # -- subscriptions ----------------------------------------------------------
    def add_subscription(self, values: dict[str, Any]) -> int:
        result = self._connection.execute(
            webhook_subscriptions.insert().returning(webhook_subscriptions.c.id), values
        )
        return int(result.scalar_one())

    def subscription(self, subscription_id: int, with_secrets: bool = False) -> dict[str, Any]:
        columns = list(webhook_subscriptions.c) if with_secrets else _SUBSCRIPTION_COLUMNS
        row = (
            self._connection.execute(
                select(*columns).where(webhook_subscriptions.c.id == subscription_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"webhook subscription {subscription_id} does not exist")
        return dict(row)

    def subscriptions(self, active_only: bool = False) -> list[dict[str, Any]]:
        query = select(*_SUBSCRIPTION_COLUMNS).order_by(webhook_subscriptions.c.id)
        if active_only:
            query = query.where(webhook_subscriptions.c.active.is_(True))
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def update_subscription(self, subscription_id: int, values: dict[str, Any]) -> None:
        result = self._connection.execute(
            update(webhook_subscriptions)
            .where(webhook_subscriptions.c.id == subscription_id)
            .values(values)
        )
        if not result.rowcount:
            raise NotFound(f"webhook subscription {subscription_id} does not exist")

    # -- deliveries ---------------------------------------------------------------
    def enqueue(self, rows: list[dict[str, Any]]) -> int:
        """Insert pending deliveries; a (subscription, message id) seen before is skipped."""
        return sum(insert_new(self._connection, webhook_deliveries, row) for row in rows)

    def lease_due(self, now: datetime, until: datetime, limit: int) -> list[dict[str, Any]]:
        """Lease due deliveries to this worker until ``until``; an expired lease (a worker
        that died mid-send) makes the delivery due again, with the same webhook-id."""
        table = webhook_deliveries
        due = or_(table.c.leased_until.is_(None), table.c.leased_until <= now)
        query = (
            select(table, webhook_subscriptions.c.url, webhook_subscriptions.c.secrets)
            .join(webhook_subscriptions, webhook_subscriptions.c.id == table.c.subscription_id)
            .where(table.c.status == "pending", table.c.next_attempt_at <= now, due)
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=table)
        )
        rows = [dict(r) for r in self._connection.execute(query).mappings()]
        if rows:
            self._connection.execute(
                update(table)
                .where(table.c.id.in_([r["id"] for r in rows]))
                .values(leased_until=until)
            )
        return rows

    def record_attempts(self, attempts: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """A batch of sends in a few statements: the attempt rows in one INSERT, and the
        deliveries' new values in one UPDATE per shape of change (most batches: one)."""
        if not attempts:
            return
        self._connection.execute(webhook_attempts.insert(), [row for row, _ in attempts])
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for _, outcome in attempts:
            columns = tuple(sorted(key for key in outcome if key != "id"))
            shapes.setdefault(columns, []).append(
                {"delivery_id": outcome["id"], **{f"new_{k}": outcome[k] for k in columns}}
            )
        for columns, rows in shapes.items():
            values = {k: bindparam(f"new_{k}", type_=webhook_deliveries.c[k].type) for k in columns}
            statement = (
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == bindparam("delivery_id"))
                .values(leased_until=None, **values)
            )
            self._connection.execute(statement, rows)

    def deliveries(
        self, subscription_id: int | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        table = webhook_deliveries
        query = select(*[c for c in table.c if c.key != "body"]).order_by(table.c.id.desc())
        if subscription_id is not None:
            query = query.where(table.c.subscription_id == subscription_id)
        if status is not None:
            query = query.where(table.c.status == status)
        return [dict(r) for r in self._connection.execute(query.limit(limit)).mappings()]

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        query = (
            select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id == delivery_id)
            .order_by(webhook_attempts.c.attempt)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def replay_dead(self, delivery_ids: list[int] | None, now: datetime) -> int:
        table = webhook_deliveries
        query = (
            update(table)
            .where(table.c.status == "dead")
            .values(status="pending", next_attempt_at=now, leased_until=None, finished_at=None)
        )
        if delivery_ids is not None:
            query = query.where(table.c.id.in_(delivery_ids))
        return int(self._connection.execute(query).rowcount or 0)

    def pending_for_subscription(self, subscription_id: int, status: str, now: datetime) -> None:
        """Park a disabled endpoint's queue: nothing is dropped, replay brings it back."""
        self._connection.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.subscription_id == subscription_id,
                webhook_deliveries.c.status == "pending",
            )
            .values(status=status, finished_at=now, leased_until=None)
        )

    # -- inbound ---------------------------------------------------------------------
    def put_source(self, values: dict[str, Any]) -> None:
        existing = self._connection.execute(
            select(inbound_sources.c.key).where(inbound_sources.c.key == values["key"])
        ).first()
        if existing:
            self._connection.execute(
                update(inbound_sources).where(inbound_sources.c.key == values["key"]).values(values)
            )
        else:
            self._connection.execute(inbound_sources.insert(), values)

    def source(self, key: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(select(inbound_sources).where(inbound_sources.c.key == key))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def sources(self) -> list[dict[str, Any]]:
        query = select(*[c for c in inbound_sources.c if c.key != "secrets"])
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def remember_inbound(
        self, source: str, webhook_id: str, case_id: int, event: str, at: datetime
    ) -> bool:
        """False when this webhook-id from this source was received before."""
        return insert_new(
            self._connection,
            inbound_webhooks,
            {
                "source": source,
                "webhook_id": webhook_id,
                "case_id": case_id,
                "event": event,
                "received_at": at,
            },
        )

    # -- notifications -------------------------------------------------------------
    def add_notification(self, values: dict[str, Any]) -> bool:
        return insert_new(self._connection, notifications, values)

    def notifications(self, case_id: int) -> list[dict[str, Any]]:
        query = (
            select(notifications)
            .where(notifications.c.case_id == case_id)
            .order_by(notifications.c.id)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]
