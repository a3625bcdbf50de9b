"""governance tables

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from careloop.adapters.db.tables import TZ, Id

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "definition_changes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("proposed_by", sa.String(150), nullable=False),
        sa.Column("proposed_by_id", sa.Integer(), nullable=False),
        sa.Column("proposed_at", TZ, nullable=False),
        sa.Column("decided_by", sa.String(150), nullable=True),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", TZ, nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_definition_changes"),
    )
    op.create_index("ix_definition_changes_target", "definition_changes", ["kind", "key", "status"])
    op.create_table(
        "active_workflows",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("case_type", sa.String(50), nullable=False),
        sa.Column("activated_at", TZ, nullable=False),
        sa.Column("activated_by", sa.String(150), nullable=False),
        sa.Column("change_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_active_workflows"),
    )
    _activate_newest_stored_workflows()


def _activate_newest_stored_workflows() -> None:
    # Before governance the newest stored version of each key was the one in use; it
    # stays in use as the installation's baseline.
    stored = sa.table(
        "workflow_definitions",
        sa.column("key", sa.String),
        sa.column("version", sa.Integer),
        sa.column("case_type", sa.String),
        sa.column("created_at", TZ),
    )
    active = sa.table(
        "active_workflows",
        sa.column("key", sa.String),
        sa.column("version", sa.Integer),
        sa.column("case_type", sa.String),
        sa.column("activated_at", TZ),
        sa.column("activated_by", sa.String),
    )
    newer = sa.alias(stored, "newer")
    newest = sa.select(
        stored.c.key,
        stored.c.version,
        stored.c.case_type,
        stored.c.created_at,
        sa.literal("system"),
    ).where(~sa.exists().where(newer.c.key == stored.c.key, newer.c.version > stored.c.version))
    op.execute(
        active.insert().from_select(
            ["key", "version", "case_type", "activated_at", "activated_by"], newest
        )
    )


def downgrade() -> None:
    op.drop_table("active_workflows")
    op.drop_index("ix_definition_changes_target", table_name="definition_changes")
    op.drop_table("definition_changes")
