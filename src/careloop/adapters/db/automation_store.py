"""Automation definitions, the per-case execution log, duplicate links and specialists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from careloop.adapters.db.automation_tables import (
    automation_definitions,
    automation_runs,
    case_links,
    patient_keys,
    specialists,
)
from careloop.adapters.db.driver_sql import insert_into
from careloop.adapters.db.insert_new import insert_new
from careloop.adapters.db.tables import cases
from careloop.adapters.db.write_buffer import COMMITTED_READ, WriteBuffer

_INSERT_RUN = insert_into(automation_runs)
# Built once: the relay runs these for every new case and every routed assignment.
_CANDIDATE_IDS = (
    select(patient_keys.c.case_id)
    .where(
        patient_keys.c.key.in_(bindparam("keys", expanding=True)),
        patient_keys.c.specialty == bindparam("specialty"),
        patient_keys.c.case_id != bindparam("case_id"),
        patient_keys.c.created_at >= bindparam("since"),
    )
    .distinct()
    .limit(bindparam("limit"))
    .subquery()
)
# Other cases as committed: what this batch's rules changed on them (never the patient's
# identity, which is what matching compares) need not be written out first.
_CANDIDATES = (
    select(cases.c.id, cases.c.data, cases.c.state)
    .where(cases.c.id.in_(select(_CANDIDATE_IDS)))
    .order_by(cases.c.id)
    .execution_options(**{COMMITTED_READ: True})
)
_WORKLOAD = (
    select(cases.c.assignee, func.count())
    .where(
        cases.c.assignee.in_(bindparam("names", expanding=True)),
        cases.c.state.in_(bindparam("states", expanding=True)),
    )
    .group_by(cases.c.assignee)
)


class AutomationStore:
    def __init__(self, connection: Connection, buffer: WriteBuffer | None = None) -> None:
        self._connection = connection
        self._buffer = buffer

    # -- definitions -------------------------------------------------------------
    def definitions(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(automation_definitions).order_by(
            automation_definitions.c.kind,
            automation_definitions.c.key,
            automation_definitions.c.version,
        )
        if kind is not None:
            query = query.where(automation_definitions.c.kind == kind)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def definition(self, kind: str, key: str, version: int) -> dict[str, Any] | None:
        row = (
            self._connection.execute(
                select(automation_definitions).where(
                    automation_definitions.c.kind == kind,
                    automation_definitions.c.key == key,
                    automation_definitions.c.version == version,
                )
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    def active_definitions(self, kind: str) -> list[dict[str, Any]]:
        query = select(automation_definitions).where(
            automation_definitions.c.kind == kind, automation_definitions.c.active.is_(True)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def add_definition(self, values: dict[str, Any]) -> None:
        self._connection.execute(automation_definitions.insert(), values)

    def activate(self, kind: str, key: str, version: int, by: str, at: datetime) -> None:
        """Exactly one active version per (kind, key)."""
        table = automation_definitions
        self._connection.execute(
            update(table)
            .where(table.c.kind == kind, table.c.key == key, table.c.version != version)
            .values(active=False)
        )
        self._connection.execute(
            update(table)
            .where(table.c.kind == kind, table.c.key == key, table.c.version == version)
            .values(active=True, activated_at=at, activated_by=by)
        )

    # -- execution log -------------------------------------------------------------
    def record_run(self, values: dict[str, Any]) -> bool:
        """Record one (event, rule) evaluation; False when it was recorded before.

        A deferring batch writes it with a plain INSERT later: a row recorded before
        then fails the batch, which re-runs carefully and gets False here."""
        if self._buffer is not None and self._buffer.active:
            self._buffer.insert(_INSERT_RUN, dict(values))
            return True
        return insert_new(self._connection, automation_runs, values)

    def runs_for_case(self, case_id: int, limit: int = 500) -> list[dict[str, Any]]:
        query = (
            select(automation_runs)
            .where(automation_runs.c.case_id == case_id)
            .order_by(automation_runs.c.id)
            .limit(limit)
        )
        return [dict(r) for r in self._connection.execute(query).mappings()]

    # -- duplicate detection --------------------------------------------------------
    def add_patient_keys(self, case_id: int, keys: set[str], specialty: str, at: datetime) -> None:
        if keys:
            self._connection.execute(
                patient_keys.insert(),
                [
                    {"key": key, "case_id": case_id, "specialty": specialty, "created_at": at}
                    for key in sorted(keys)
                ],
            )

    def duplicate_candidates(
        self, case_id: int, keys: set[str], specialty: str, since: datetime, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Other recent cases of the same specialty sharing a blocking key."""
        if not keys:
            return []
        params = {
            "keys": sorted(keys),
            "specialty": specialty,
            "case_id": case_id,
            "since": since,
            "limit": limit,
        }
        return [dict(r) for r in self._connection.execute(_CANDIDATES, params).mappings()]

    def link_cases(
        self, case_id: int, links: list[tuple[int, float, list[str]]], kind: str, at: datetime
    ) -> None:
        """Link ``case_id`` both ways to each (other case, score, reasons): one statement."""
        rows = [
            {
                "case_id": a,
                "other_case_id": b,
                "kind": kind,
                "score": score,
                "reasons": reasons,
                "created_at": at,
            }
            for other, score, reasons in links
            for a, b in ((case_id, other), (other, case_id))
        ]
        if rows:
            self._connection.execute(case_links.insert(), rows)

    def links(self, case_id: int) -> list[dict[str, Any]]:
        query = select(case_links).where(case_links.c.case_id == case_id).order_by(case_links.c.id)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    # -- specialists and capacity ------------------------------------------------------
    def put_specialist(self, values: dict[str, Any]) -> None:
        existing = self._connection.execute(
            select(specialists.c.name).where(specialists.c.name == values["name"])
        ).first()
        if existing:
            self._connection.execute(
                update(specialists).where(specialists.c.name == values["name"]).values(values)
            )
        else:
            self._connection.execute(specialists.insert(), values)

    def specialists(self, specialty: str | None = None) -> list[dict[str, Any]]:
        query = select(specialists).order_by(specialists.c.name)
        if specialty is not None:
            query = query.where(specialists.c.specialty == specialty)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def open_workload(self, names: list[str], open_states: list[str]) -> dict[str, int]:
        """How many open cases each specialist is assigned to."""
        if not names:
            return {}
        params = {"names": names, "states": open_states}
        counts = {str(n): int(count) for n, count in self._connection.execute(_WORKLOAD, params)}
        return {name: counts.get(name, 0) for name in names}
