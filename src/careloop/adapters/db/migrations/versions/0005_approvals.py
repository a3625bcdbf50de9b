"""approvals tables

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from careloop.adapters.db.tables import TZ, Id

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("case_type", sa.String(50), nullable=False),
        sa.Column("policy_set", sa.String(100), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(100), nullable=False),
        sa.Column("target_kind", sa.String(20), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("requester_id", sa.Integer(), nullable=False),
        sa.Column("requester_name", sa.String(150), nullable=False),
        sa.Column("requester_roles", sa.JSON(), nullable=False),
        sa.Column("requester_manager", sa.String(150), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("step_started_at", TZ, nullable=False),
        sa.Column("decided_at", TZ, nullable=True),
        sa.Column("consumed_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approval_requests"),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name="fk_approval_requests_case_id_cases"
        ),
    )
    op.create_index("ix_approval_requests_case", "approval_requests", ["case_id", "status"])
    op.create_index(
        "ix_approval_requests_status", "approval_requests", ["status", "created_at", "id"]
    )
    op.create_table(
        "approval_decisions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("group_name", sa.String(100), nullable=False),
        sa.Column("decision", sa.String(30), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("person_name", sa.String(150), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=False),
        sa.Column("actor_name", sa.String(150), nullable=False),
        sa.Column("role", sa.String(50), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_approval_decisions"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name="fk_approval_decisions_request_id_approval_requests",
        ),
    )
    op.create_index("ix_approval_decisions_request", "approval_decisions", ["request_id", "id"])
    op.create_table(
        "approval_delegations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("delegator_id", sa.Integer(), nullable=False),
        sa.Column("delegator_name", sa.String(150), nullable=False),
        sa.Column("delegate_id", sa.Integer(), nullable=True),
        sa.Column("delegate_name", sa.String(150), nullable=True),
        sa.Column("starts_at", TZ, nullable=False),
        sa.Column("ends_at", TZ, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(150), nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approval_delegations"),
    )
    op.create_index(
        "ix_approval_delegations_delegator",
        "approval_delegations",
        ["delegator_id", "ends_at"],
    )
    op.create_index(
        "ix_approval_delegations_delegate", "approval_delegations", ["delegate_id", "ends_at"]
    )


def downgrade() -> None:
    op.drop_table("approval_delegations")
    op.drop_table("approval_decisions")
    op.drop_table("approval_requests")
