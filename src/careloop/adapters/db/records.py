"""Small repositories: idempotency keys and stored workflow definitions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from careloop.adapters.db.insert_new import insert_new
from careloop.adapters.db.tables import idempotency_keys, workflow_definitions
from careloop.domain.errors import IdempotencyConflict


class IdempotencyRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def find(self, actor_id: int, key: str) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.actor_id == actor_id,
                    idempotency_keys.c.key == key,
                )
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def add(self, actor_id: int, key: str, request_hash: str, case_id: int, at: datetime) -> None:
        row = {
            "actor_id": actor_id,
            "key": key,
            "request_hash": request_hash,
            "case_id": case_id,
            "created_at": at,
        }
        if not insert_new(self._connection, idempotency_keys, row):
            raise IdempotencyConflict(
                f"a concurrent request with Idempotency-Key {key!r} won; retry to get its result"
            )


class DefinitionRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def all(self) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            select(workflow_definitions).order_by(
                workflow_definitions.c.key, workflow_definitions.c.version
            )
        ).mappings()
        return [dict(r) for r in rows]

    def find(self, key: str, version: int) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(workflow_definitions).where(
                    workflow_definitions.c.key == key,
                    workflow_definitions.c.version == version,
                )
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def add(self, values: dict[str, Any]) -> None:
        self._connection.execute(workflow_definitions.insert(), values)
