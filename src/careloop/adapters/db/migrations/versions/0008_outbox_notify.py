"""outbox: on PostgreSQL, new pending events are announced (NOTIFY careloop_events)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Once per INSERT statement (a COPY too). PostgreSQL delivers the notice at commit, once
# per transaction, to every `careloop worker` listening (adapters/db/event_signal.py), so
# a worker wakes on new work instead of polling for it. The trigger does not look at the
# rows it announces: with a transition table to skip the relay's own already-published
# inserts, intake on PostgreSQL lost about a tenth of its throughput (bench/
# intake_service.py); unconditional, it costs nothing measurable, and a worker woken for
# nothing finds an empty claim and waits again.
_FUNCTION = """
CREATE FUNCTION careloop_announce_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('careloop_events', '');
    RETURN NULL;
END
$$
"""
_TRIGGER = """
CREATE TRIGGER outbox_announce AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION careloop_announce_events()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one process, whose worker threads poll
    op.execute(_FUNCTION)
    op.execute(_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS outbox_announce ON outbox")
    op.execute("DROP FUNCTION IF EXISTS careloop_announce_events()")
