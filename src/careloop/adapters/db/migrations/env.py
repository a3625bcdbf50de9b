"""Alembic environment: runs against the connection careloop hands it."""

from __future__ import annotations

from alembic import context

# Imported for their side effect: each registers its tables on the metadata.
import careloop.adapters.db.approval_tables
import careloop.adapters.db.automation_tables
import careloop.adapters.db.governance_tables  # noqa: F401
from careloop.adapters.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - careloop always passes a connection
    raise RuntimeError("run migrations through `careloop migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
