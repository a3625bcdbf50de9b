"""Interfaces the adapters implement. Services depend on these, never on adapters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from careloop.domain.audit import AuditEntry, AuditRecord
from careloop.domain.case import Case


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class CaseStore(Protocol):
    def add(self, case: Case, created_by: int, created_by_name: str) -> int:
        """Insert a new case with its first status-history row."""
        ...

    def get(self, case_id: int) -> Case: ...
    def save(self, case: Case, expected_version: int) -> None: ...
    def add_history(
        self,
        case_id: int,
        from_state: str | None,
        to_state: str,
        transition: str | None,
        actor_id: int,
        actor_name: str,
        reason: str,
        at: datetime,
    ) -> None: ...
    def history(self, case_id: int) -> list[dict[str, Any]]: ...
    def search(
        self, flt: Any, now: datetime, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...
    def add_note(
        self, case_id: int, author_id: int, author_name: str, body: str, at: datetime
    ) -> int: ...
    def notes(self, case_id: int) -> list[dict[str, Any]]: ...
    def add_document(self, case_id: int, values: dict[str, Any]) -> int: ...
    def documents(self, case_id: int) -> list[dict[str, Any]]: ...
    def document(self, case_id: int, document_id: int) -> dict[str, Any]: ...
    def add_task(self, case_id: int, values: dict[str, Any]) -> int: ...
    def tasks(self, case_id: int) -> list[dict[str, Any]]: ...


class AuditLog(Protocol):
    def append(self, record: AuditRecord) -> AuditEntry: ...
    def for_case(self, case_id: int) -> list[dict[str, Any]]: ...


class Outbox(Protocol):
    def add(
        self,
        case_id: int | None,
        event_type: str,
        payload: dict[str, Any],
        idempotency_key: str,
        at: datetime,
    ) -> None: ...
    def claim_pending(self, now: datetime, limit: int) -> list[dict[str, Any]]: ...
    def mark_published(self, outbox_ids: list[int], at: datetime) -> None: ...
    def mark_failed(self, outbox_id: int, error: str, retry_at: datetime) -> None: ...


class Accounts(Protocol):
    def add_user(
        self,
        username: str,
        display_name: str,
        password_hash: str | None,
        roles: list[str],
        at: datetime,
    ) -> int: ...
    def find_user(self, username: str) -> dict[str, Any] | None: ...
    def add_token(
        self,
        user_id: int,
        name: str,
        prefix: str,
        token_hash: str,
        at: datetime,
        expires_at: datetime | None,
    ) -> int: ...
    def token_with_user(self, token_hash: str) -> dict[str, Any] | None: ...


class Idempotency(Protocol):
    def find(self, actor_id: int, key: str) -> dict[str, Any] | None: ...
    def add(
        self, actor_id: int, key: str, request_hash: str, case_id: int, at: datetime
    ) -> None: ...


class Definitions(Protocol):
    def all(self) -> list[dict[str, Any]]: ...
    def find(self, key: str, version: int) -> dict[str, Any] | None: ...
    def add(self, values: dict[str, Any]) -> None: ...


class UnitOfWork(Protocol):
    # Read-only in the protocol so adapters may expose their concrete repositories.
    @property
    def cases(self) -> CaseStore: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def accounts(self) -> Accounts: ...
    @property
    def idempotency(self) -> Idempotency: ...
    @property
    def definitions(self) -> Definitions: ...

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


class ManualClock:
    """A clock that only moves when told: tests and the demo generator move time."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment

    def advance(self, **delta: float) -> datetime:
        from datetime import timedelta

        self._now += timedelta(**delta)
        return self._now
