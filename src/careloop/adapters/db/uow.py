"""The unit of work: one transaction per use case, rolled back unless committed."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, RootTransaction

from careloop.adapters.db.access_store import AccessStore
from careloop.adapters.db.accounts import AccountRepository
from careloop.adapters.db.approval_store import ApprovalStore
from careloop.adapters.db.audit_store import AuditStore
from careloop.adapters.db.automation_store import AutomationStore
from careloop.adapters.db.cases import CaseRepository
from careloop.adapters.db.governance_store import GovernanceStore
from careloop.adapters.db.outbox_store import OutboxStore
from careloop.adapters.db.records import DefinitionRepository, IdempotencyRepository
from careloop.adapters.db.timer_store import TimerStore
from careloop.adapters.db.webhook_store import WebhookStore
from careloop.adapters.db.write_buffer import WriteBuffer
from careloop.adapters.field_crypto import FieldCipher
from careloop.services.ports import OptimisticAbort


class _AbortOnError:
    """An optimistic unit's stand-in for a savepoint: any error aborts the whole batch.
    One shared object, as the relay enters one per event and per rule."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, OptimisticAbort):
            raise OptimisticAbort(repr(exc)) from exc


_ABORT_ON_ERROR = _AbortOnError()


class SqlUnitOfWork:
    cases: CaseRepository
    audit: AuditStore
    outbox: OutboxStore
    accounts: AccountRepository
    idempotency: IdempotencyRepository
    definitions: DefinitionRepository

    def __init__(
        self,
        engine: Engine,
        audit_chains: int = 16,
        read_only: bool = False,
        cipher: FieldCipher | None = None,
    ) -> None:
        self._engine = engine
        self._cipher = cipher
        self._audit_chains = audit_chains
        self._read_only = read_only
        self._optimistic = False
        self._buffer: WriteBuffer | None = None
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None
        self._automation: AutomationStore | None = None
        self._timers: TimerStore | None = None
        self._webhooks: WebhookStore | None = None
        self._approvals: ApprovalStore | None = None
        # SQLite allows one writer; queueing writers on a lock in the process is fair and
        # fast, where SQLite's busy handler sleeps up to 100 ms between retries.
        self._write_lock = None if read_only else _SQLITE_WRITE_LOCKS.get(engine)

    def __enter__(self) -> SqlUnitOfWork:
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            connection = self._engine.connect()
            if self._read_only:
                connection = connection.execution_options(careloop_read_only=True)
            self._connection = connection
            self._transaction = connection.begin()
        except BaseException:
            self._release()
            raise
        self._optimistic = False
        self._buffer = buffer = WriteBuffer(connection)
        self.cases = CaseRepository(connection, self._cipher, buffer)
        self.audit = AuditStore(connection, self._audit_chains, buffer)
        buffer.audit_sink = self.audit.append_many
        self.outbox = OutboxStore(connection, buffer)
        self.accounts = AccountRepository(connection)
        self.idempotency = IdempotencyRepository(connection)
        self.definitions = DefinitionRepository(connection)
        return self

    @property
    def automation(self) -> AutomationStore:
        # Built on first use: the intake path never needs it and pays nothing for it.
        if self._automation is None:
            connection = self._require_connection()
            self._automation = (
                AutomationStore(connection, self._buffer)
                if self._cipher is None
                else _OpenedAutomationStore(connection, self._cipher, self._buffer)
            )
        return self._automation

    @property
    def access(self) -> AccessStore:
        return AccessStore(self._require_connection())

    @property
    def governance(self) -> GovernanceStore:
        return GovernanceStore(self._require_connection())

    @property
    def approvals(self) -> ApprovalStore:
        if self._approvals is None:
            self._approvals = ApprovalStore(self._require_connection(), self._buffer)
        return self._approvals

    @property
    def timers(self) -> TimerStore:
        if self._timers is None:
            self._timers = TimerStore(self._require_connection(), self._buffer)
            if self._buffer is not None:
                self._buffer.replan_sink = self._timers.cancel_replanned
        return self._timers

    @property
    def webhooks(self) -> WebhookStore:
        if self._webhooks is None:
            self._webhooks = WebhookStore(self._require_connection())
        return self._webhooks

    @property
    def optimistic(self) -> bool:
        return self._optimistic

    @optimistic.setter
    def optimistic(self, value: bool) -> None:
        """Optimistic work also defers its writes (see write_buffer): with no savepoint
        to roll back to, nothing needs to be in the database before the commit."""
        buffer = self._buffer
        assert buffer is not None, "used outside the unit of work"
        if value and not self._read_only:
            buffer.start()
        elif buffer.active:
            buffer.flush()
            buffer.active = False
        self._optimistic = value

    def savepoint(self) -> AbstractContextManager[Any]:
        """A nested transaction: rolled back alone when its block raises."""
        if self.optimistic:
            return _ABORT_ON_ERROR
        return self._require_connection().begin_nested()

    def _require_connection(self) -> Connection:
        assert self._connection is not None, "used outside the unit of work"
        return self._connection

    def commit(self) -> None:
        assert self._transaction is not None, "commit outside the unit of work"
        if self._buffer is not None:
            self._buffer.flush()
        self.outbox.announce()
        self._transaction.commit()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._connection is not None and self._transaction is not None
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            # The transaction is over: the next writer need not wait for the pool check-in.
            self._release()
            self._connection.close()
            self._connection = None
            self._transaction = None
            self._automation = self._timers = self._webhooks = self._approvals = None
            self._buffer = None

    def _release(self) -> None:
        if self._write_lock is not None:
            self._write_lock.release()


class _OpenedAutomationStore(AutomationStore):
    """Duplicate candidates with their encrypted identifiers opened for the matcher,
    which compares member IDs by value. Used only with field encryption on."""

    def __init__(
        self, connection: Connection, cipher: FieldCipher, buffer: WriteBuffer | None = None
    ) -> None:
        super().__init__(connection, buffer)
        self._cipher = cipher

    def duplicate_candidates(
        self, case_id: int, keys: set[str], specialty: str, since: datetime, limit: int = 50
    ) -> list[dict[str, Any]]:
        rows = super().duplicate_candidates(case_id, keys, specialty, since, limit)
        return [{**row, "data": self._cipher.open_data(row["data"])} for row in rows]


_SQLITE_WRITE_LOCKS: WeakKeyDictionary[Engine, threading.Lock] = WeakKeyDictionary()


def register_sqlite_write_lock(engine: Engine) -> None:
    _SQLITE_WRITE_LOCKS.setdefault(engine, threading.Lock())
