"""Approval requests, decisions, delegation windows, and the active policies."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from careloop.adapters.approval_definitions import load_approvals_text
from careloop.adapters.db.approval_tables import (
    approval_decisions,
    approval_delegations,
    approval_requests,
)
from careloop.adapters.db.automation_tables import automation_definitions
from careloop.adapters.db.tables import cases, users
from careloop.adapters.db.write_buffer import WriteBuffer
from careloop.domain.approval_policy import (
    OPEN_STATUSES,
    ApprovalPolicySet,
    Person,
)
from careloop.domain.approvals import (
    ApprovalRequest,
    Vote,
)
from careloop.domain.errors import NotFound

_SAVED = (
    "status",
    "step",
    "level",
    "payload",
    "updated_at",
    "step_started_at",
    "decided_at",
    "consumed_at",
)
# Compiled policy sets by (database, key, version): a stored version never changes,
# so each is compiled once per process however often a transition or decision asks.
_COMPILED: dict[tuple[str, str, int], ApprovalPolicySet] = {}
_COMPILE_LOCK = threading.Lock()


class ApprovalStore:
    def __init__(self, connection: Connection, buffer: WriteBuffer | None = None) -> None:
        self._connection = connection
        self._buffer = buffer
        self._active: dict[str, tuple[ApprovalPolicySet, ...]] = {}

    # -- policies ------------------------------------------------------------------
    def active_policy_sets(self, case_type: str) -> tuple[ApprovalPolicySet, ...]:
        """The active policy sets of a case type. A deferring batch (a relay batch, a
        bulk move: neither activates definitions) asks once, not once per case."""
        keep = self._buffer is not None and self._buffer.active
        if keep and case_type in self._active:
            return self._active[case_type]
        found = self._query_active(case_type)
        if keep:
            self._active[case_type] = found
        return found

    def _query_active(self, case_type: str) -> tuple[ApprovalPolicySet, ...]:
        query = (
            select(automation_definitions.c.key, automation_definitions.c.version)
            .where(
                automation_definitions.c.kind == "approvals",
                automation_definitions.c.active.is_(True),
                automation_definitions.c.case_type == case_type,
            )
            .order_by(automation_definitions.c.key)
        )
        rows = self._connection.execute(query).all()
        return tuple(self.policy_set(r.key, r.version) for r in rows)

    def policy_set(self, key: str, version: int) -> ApprovalPolicySet:
        database = str(self._connection.engine.url)
        cached = _COMPILED.get((database, key, version))
        if cached is not None:
            return cached
        with _COMPILE_LOCK:  # threads starting at once compile it once, not each
            cached = _COMPILED.get((database, key, version))
            if cached is not None:
                return cached
            compiled = self._compile(key, version)
            _COMPILED[(database, key, version)] = compiled
            return compiled

    def _compile(self, key: str, version: int) -> ApprovalPolicySet:
        row = self._connection.execute(
            select(
                automation_definitions.c.source_name, automation_definitions.c.source_text
            ).where(
                automation_definitions.c.kind == "approvals",
                automation_definitions.c.key == key,
                automation_definitions.c.version == version,
            )
        ).first()
        if row is None:
            raise NotFound(f"approvals {key} version {version} is not stored")
        source = f"{row.source_name} (stored v{version})"
        return load_approvals_text(row.source_text, source, None)

    # -- requests ------------------------------------------------------------------
    def add(self, request: ApprovalRequest) -> int:
        values = {
            name: getattr(request, name)
            for name in (
                "case_id",
                "case_type",
                "policy_set",
                "policy_version",
                "policy",
                "target_kind",
                "target",
                "reason",
                "created_at",
                "requester_id",
                "requester_name",
                "requester_manager",
                *_SAVED,
            )
        }
        values["requester_roles"] = sorted(request.requester_roles)
        result = self._connection.execute(
            insert(approval_requests).returning(approval_requests.c.id), values
        )
        request.id = int(result.scalar_one())
        return request.id

    def get(self, request_id: int, for_update: bool = False) -> ApprovalRequest:
        # One round trip: the request joined with its decisions (a decision is on the
        # hot path; the lock covers the request row only).
        votes = [c.label(f"v__{c.name}") for c in approval_decisions.c]
        query = (
            select(approval_requests, *votes)
            .select_from(
                approval_requests.outerjoin(
                    approval_decisions, approval_decisions.c.request_id == approval_requests.c.id
                )
            )
            .where(approval_requests.c.id == request_id)
            .order_by(approval_decisions.c.id)
        )
        if for_update:
            query = query.with_for_update(of=approval_requests)
        rows = [dict(r) for r in self._connection.execute(query).mappings()]
        if not rows:
            raise NotFound(f"approval {request_id} does not exist")
        found = [
            _vote({k.removeprefix("v__"): v for k, v in r.items() if k.startswith("v__")})
            for r in rows
            if r["v__id"] is not None
        ]
        return _request({k: v for k, v in rows[0].items() if not k.startswith("v__")}, found)

    def save(self, request: ApprovalRequest) -> None:
        self._connection.execute(
            update(approval_requests)
            .where(approval_requests.c.id == request.id)
            .values({name: getattr(request, name) for name in _SAVED})
        )

    def add_vote(self, request_id: int, vote: Vote) -> int:
        values = {
            "request_id": request_id,
            "step": vote.step,
            "group_name": vote.group,
            "decision": vote.decision,
            "person_id": vote.person_id,
            "person_name": vote.person_name,
            "actor_id": vote.actor_id,
            "actor_name": vote.actor_name,
            "role": vote.role,
            "reason": vote.reason,
            "decided_at": vote.at,
        }
        result = self._connection.execute(
            insert(approval_decisions).returning(approval_decisions.c.id), values
        )
        return int(result.scalar_one())

    def for_case(
        self,
        case_id: int,
        target: str | None = None,
        open_only: bool = False,
        with_votes: bool = True,
    ) -> list[ApprovalRequest]:
        query = select(approval_requests).where(approval_requests.c.case_id == case_id)
        if target is not None:
            query = query.where(approval_requests.c.target == target)
        if open_only:
            query = query.where(approval_requests.c.status.in_(sorted(OPEN_STATUSES)))
        rows = [
            dict(r)
            for r in self._connection.execute(query.order_by(approval_requests.c.id)).mappings()
        ]
        # The gate only weighs statuses; a page showing the requests needs the decisions.
        return self._with_votes(rows) if with_votes else [_request(r, []) for r in rows]

    def open_with_cases(
        self, organisation: str, limit: int
    ) -> list[tuple[ApprovalRequest, dict[str, Any]]]:
        """Open requests with the case fields eligibility and record rules look at."""
        query = (
            select(
                approval_requests,
                cases.c.organisation.label("c__organisation"),
                cases.c.clinic.label("c__clinic"),
                cases.c.team.label("c__team"),
                cases.c.assignee.label("c__assignee"),
                cases.c.created_by.label("c__created_by"),
                cases.c.data.label("c__data"),
            )
            .join(cases, cases.c.id == approval_requests.c.case_id)
            .where(
                approval_requests.c.status.in_(sorted(OPEN_STATUSES)),
                cases.c.organisation == organisation,
            )
            .order_by(approval_requests.c.created_at, approval_requests.c.id)
            .limit(limit)
        )
        rows = [dict(r) for r in self._connection.execute(query).mappings()]
        case_keys = [k for k in rows[0] if k.startswith("c__")] if rows else []
        requests = self._with_votes(
            [{k: v for k, v in r.items() if k not in case_keys} for r in rows]
        )
        return [
            (req, {k.removeprefix("c__"): row[k] for k in case_keys})
            for req, row in zip(requests, rows, strict=True)
        ]

    def _with_votes(self, rows: list[dict[str, Any]]) -> list[ApprovalRequest]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        query = (
            select(approval_decisions)
            .where(approval_decisions.c.request_id.in_(ids))
            .order_by(approval_decisions.c.id)
        )
        votes: dict[int, list[Vote]] = {}
        for v in self._connection.execute(query).mappings():
            votes.setdefault(v["request_id"], []).append(_vote(dict(v)))
        return [_request(r, votes.get(r["id"], [])) for r in rows]

    # -- people and delegation -----------------------------------------------------
    def people(self, organisation: str) -> list[Person]:
        query = select(users).where(users.c.active.is_(True), users.c.organisation == organisation)
        return [_person(dict(r)) for r in self._connection.execute(query).mappings()]

    def manager_of(self, user_id: int) -> str | None:
        row = self._connection.execute(select(users.c.manager).where(users.c.id == user_id)).first()
        return str(row.manager) if row is not None and row.manager else None

    def person(self, username: str) -> Person | None:
        row = (
            self._connection.execute(
                select(users).where(users.c.username == username, users.c.active.is_(True))
            )
            .mappings()
            .first()
        )
        return _person(dict(row)) if row is not None else None

    def add_delegation(self, values: dict[str, Any]) -> int:
        result = self._connection.execute(
            insert(approval_delegations).returning(approval_delegations.c.id), values
        )
        return int(result.scalar_one())

    def delegation(self, delegation_id: int) -> dict[str, Any]:
        row = (
            self._connection.execute(
                select(approval_delegations).where(approval_delegations.c.id == delegation_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"delegation {delegation_id} does not exist")
        return dict(row)

    def delegations(self, user_id: int | None) -> list[dict[str, Any]]:
        """Delegations given by or to ``user_id`` (None: all), newest first."""
        query = select(approval_delegations)
        if user_id is not None:
            query = query.where(
                (approval_delegations.c.delegator_id == user_id)
                | (approval_delegations.c.delegate_id == user_id)
            )
        rows = self._connection.execute(query.order_by(approval_delegations.c.id.desc()))
        return [dict(r) for r in rows.mappings()]

    def active_delegations(
        self, now: datetime, delegate_id: int | None = None
    ) -> list[dict[str, Any]]:
        query = select(approval_delegations).where(
            approval_delegations.c.starts_at <= now,
            approval_delegations.c.ends_at > now,
            approval_delegations.c.revoked_at.is_(None),
        )
        if delegate_id is not None:
            query = query.where(approval_delegations.c.delegate_id == delegate_id)
        return [dict(r) for r in self._connection.execute(query).mappings()]

    def revoke_delegation(self, delegation_id: int, at: datetime) -> None:
        self._connection.execute(
            update(approval_delegations)
            .where(approval_delegations.c.id == delegation_id)
            .values(revoked_at=at)
        )


def _person(row: Mapping[str, Any]) -> Person:
    return Person(
        user_id=int(row["id"]),
        username=str(row["username"]),
        roles=frozenset(row["roles"] or ()),
        teams=frozenset(row["teams"] or ()),
        locations=frozenset(row["locations"] or ()),
        organisation=str(row["organisation"] or ""),
    )


def _vote(row: Mapping[str, Any]) -> Vote:
    return Vote(
        step=int(row["step"]),
        group=str(row["group_name"]),
        decision=str(row["decision"]),
        person_id=int(row["person_id"]),
        person_name=str(row["person_name"]),
        actor_id=int(row["actor_id"]),
        actor_name=str(row["actor_name"]),
        role=str(row["role"]),
        reason=str(row["reason"]),
        at=row["decided_at"],
    )


def _request(row: Mapping[str, Any], votes: list[Vote]) -> ApprovalRequest:
    return ApprovalRequest(
        id=int(row["id"]),
        case_id=int(row["case_id"]),
        policy_set=str(row["policy_set"]),
        policy_version=int(row["policy_version"]),
        policy=str(row["policy"]),
        target_kind=str(row["target_kind"]),
        target=str(row["target"]),
        status=str(row["status"]),
        step=int(row["step"]),
        level=int(row["level"]),
        requester_id=int(row["requester_id"]),
        requester_name=str(row["requester_name"]),
        requester_roles=frozenset(row["requester_roles"] or ()),
        requester_manager=row["requester_manager"],
        reason=str(row["reason"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        step_started_at=row["step_started_at"],
        decided_at=row["decided_at"],
        consumed_at=row["consumed_at"],
        payload=dict(row["payload"] or {}),
        votes=votes,
        case_type=str(row["case_type"]),
    )
