"""The unit of work: one transaction per use case, rolled back unless committed."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy import Connection, Engine, RootTransaction

from careloop.adapters.db.accounts import AccountRepository
from careloop.adapters.db.audit_store import AuditStore
from careloop.adapters.db.cases import CaseRepository
from careloop.adapters.db.outbox_store import OutboxStore
from careloop.adapters.db.records import DefinitionRepository, IdempotencyRepository


class SqlUnitOfWork:
    cases: CaseRepository
    audit: AuditStore
    outbox: OutboxStore
    accounts: AccountRepository
    idempotency: IdempotencyRepository
    definitions: DefinitionRepository

    def __init__(self, engine: Engine, audit_chains: int = 16) -> None:
        self._engine = engine
        self._audit_chains = audit_chains
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None

    def __enter__(self) -> SqlUnitOfWork:
        connection = self._engine.connect()
        self._connection = connection
        self._transaction = connection.begin()
        self.cases = CaseRepository(connection)
        self.audit = AuditStore(connection, self._audit_chains)
        self.outbox = OutboxStore(connection)
        self.accounts = AccountRepository(connection)
        self.idempotency = IdempotencyRepository(connection)
        self.definitions = DefinitionRepository(connection)
        return self

    def commit(self) -> None:
        assert self._transaction is not None, "commit outside the unit of work"
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
            self._connection.close()
            self._connection = None
            self._transaction = None
