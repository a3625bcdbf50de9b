"""outbox: drop ix_outbox_pending, which no query uses; index the dead letters instead

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_DEAD = "dead_at IS NOT NULL"


def upgrade() -> None:
    # Every outbox row went into ix_outbox_pending (published_at, available_at, id), and
    # every publish moved it there, for no reader: the claim scans ix_outbox_ready and
    # probes ix_outbox_case_pending. It was a tenth of the relay's COPY into the outbox.
    op.drop_index("ix_outbox_pending", table_name="outbox")
    # The dead-letter list (dead_at set, oldest first) read the whole table; this index
    # holds only dead rows, so writing live ones costs nothing.
    op.create_index(
        "ix_outbox_dead",
        "outbox",
        ["id"],
        postgresql_where=sa.text(_DEAD),
        sqlite_where=sa.text(_DEAD),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_dead", table_name="outbox")
    op.create_index("ix_outbox_pending", "outbox", ["published_at", "available_at", "id"])
