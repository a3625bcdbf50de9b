"""outbox: partial index on the ids of pending rows, the claim's scan order

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_PENDING = "published_at IS NULL AND dead_at IS NULL"


def upgrade() -> None:
    # The claim reads pending rows oldest first and stops at the batch size: with this
    # index it never sorts (or groups) the whole pending set.
    op.create_index(
        "ix_outbox_ready",
        "outbox",
        ["id"],
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_ready", table_name="outbox")
