"""Tables of change governance: change requests and the active workflow version per key."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from careloop.adapters.db.tables import TZ, Id, metadata

# A proposal to activate (or roll back to) one stored version of a definition. It
# takes effect only when a second administrator approves it.
definition_changes = Table(
    "definition_changes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(30), nullable=False),  # workflow | rules | routing | calendars | ...
    Column("key", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("from_version", Integer, nullable=True),  # active when proposed; None: nothing
    Column("purpose", String(20), nullable=False),  # activate | rollback
    Column("status", String(20), nullable=False),  # proposed | approved | rejected | withdrawn
    Column("diff", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("proposed_by", String(150), nullable=False),
    Column("proposed_by_id", Integer, nullable=False),
    Column("proposed_at", TZ, nullable=False),
    Column("decided_by", String(150), nullable=True),
    Column("decided_by_id", Integer, nullable=True),
    Column("decided_at", TZ, nullable=True),
    Column("decision_reason", Text, nullable=True),
    Index("ix_definition_changes_target", "kind", "key", "status"),
)

# The workflow version new cases start on, one per key. Cases already open keep the
# version they pinned.
active_workflows = Table(
    "active_workflows",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("case_type", String(50), nullable=False),
    Column("activated_at", TZ, nullable=False),
    Column("activated_by", String(150), nullable=False),
    Column("change_id", BigInteger, nullable=True),  # None: the installation's baseline
)
