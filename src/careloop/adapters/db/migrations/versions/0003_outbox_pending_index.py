"""outbox: partial index for the per-case pending probe of the claim query

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PENDING = "published_at IS NULL AND dead_at IS NULL"


def upgrade() -> None:
    # Without it PostgreSQL may pick a nested-loop anti-join over every pending row
    # for each pending row once its statistics say "few pending": quadratic in a burst.
    op.create_index(
        "ix_outbox_case_pending",
        "outbox",
        ["case_id", "id"],
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_case_pending", table_name="outbox")
