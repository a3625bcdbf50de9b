"""Change requests and the active workflow version per key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from careloop.adapters.db.governance_tables import active_workflows, definition_changes
from careloop.adapters.db.tables import workflow_definitions
from careloop.domain.errors import NotFound


class GovernanceStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    # -- change requests -------------------------------------------------------------
    def add_change(self, values: dict[str, Any]) -> int:
        return int(
            self._connection.execute(
                definition_changes.insert().returning(definition_changes.c.id), values
            ).scalar_one()
        )

    def change(self, change_id: int) -> dict[str, Any]:
        row = (
            self._connection.execute(
                select(definition_changes).where(definition_changes.c.id == change_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"change {change_id} does not exist")
        return dict(row)

    def changes(
        self,
        status: str | None = None,
        kind: str | None = None,
        key: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        table = definition_changes
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        for column, value in ((table.c.status, status), (table.c.kind, kind), (table.c.key, key)):
            if value is not None:
                query = query.where(column == value)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def decide(self, change_id: int, values: dict[str, Any]) -> bool:
        """Close a proposed change; False when another decision closed it first."""
        table = definition_changes
        result = self._connection.execute(
            update(table)
            .where(table.c.id == change_id, table.c.status == "proposed")
            .values(values)
        )
        return bool(result.rowcount == 1)

    def approved_change(self, kind: str, key: str, version: int) -> dict[str, Any] | None:
        """The latest approved change that activated this version, if any."""
        table = definition_changes
        row = (
            self._connection.execute(
                select(table)
                .where(
                    table.c.kind == kind,
                    table.c.key == key,
                    table.c.version == version,
                    table.c.status == "approved",
                )
                .order_by(table.c.decided_at.desc(), table.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    # -- active workflows --------------------------------------------------------------
    def active_workflows(self) -> list[dict[str, Any]]:
        query = select(active_workflows).order_by(active_workflows.c.key)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def active_workflow(self, key: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(select(active_workflows).where(active_workflows.c.key == key))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def activate_workflow(
        self, key: str, version: int, by: str, at: datetime, change_id: int | None
    ) -> None:
        """Exactly one active version per key."""
        stored = self._connection.execute(
            select(workflow_definitions.c.case_type).where(
                workflow_definitions.c.key == key, workflow_definitions.c.version == version
            )
        ).scalar_one_or_none()
        if stored is None:
            raise NotFound(f"workflow {key} version {version} is not stored")
        values = {
            "version": version,
            "case_type": stored,
            "activated_at": at,
            "activated_by": by,
            "change_id": change_id,
        }
        updated = self._connection.execute(
            update(active_workflows).where(active_workflows.c.key == key).values(values)
        )
        if updated.rowcount == 0:
            self._connection.execute(active_workflows.insert(), {"key": key, **values})
