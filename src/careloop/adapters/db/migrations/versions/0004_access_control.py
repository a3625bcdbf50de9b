"""access control: record-rule columns, authentication state, scoped tokens, break-glass

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from careloop.adapters.db.tables import TZ, Id

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(
            sa.Column("organisation", sa.String(100), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("team", sa.String(100), nullable=True))
    op.create_index("ix_cases_team_state", "cases", ["team", "state"])
    op.create_index("ix_cases_created_by", "cases", ["created_by", "id"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("organisation", sa.String(100), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("locations", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("teams", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("manager", sa.String(150), nullable=True))
        batch.add_column(sa.Column("totp_secret", sa.String(200), nullable=True))
        batch.add_column(sa.Column("totp_enabled_at", TZ, nullable=True))
        batch.add_column(
            sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("locked_until", TZ, nullable=True))
        batch.add_column(sa.Column("oidc_issuer", sa.String(300), nullable=True))
        batch.add_column(sa.Column("oidc_subject", sa.String(300), nullable=True))
        batch.create_unique_constraint(
            "uq_users_oidc_issuer_oidc_subject", ["oidc_issuer", "oidc_subject"]
        )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(20), nullable=False, server_default="api"))
        batch.add_column(sa.Column("last_used_at", TZ, nullable=True))
        batch.add_column(sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("replaced_by", sa.BigInteger(), nullable=True))
    op.create_table(
        "access_grants",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(150), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_grants"),
    )
    op.create_index(
        "ix_access_grants_user_case", "access_grants", ["user_id", "case_id", "expires_at"]
    )


def downgrade() -> None:
    op.drop_table("access_grants")
    with op.batch_alter_table("api_tokens") as batch:
        for column in ("replaced_by", "idle_timeout_seconds", "last_used_at", "kind", "scopes"):
            batch.drop_column(column)
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_oidc_issuer_oidc_subject", type_="unique")
        for column in (
            "oidc_subject",
            "oidc_issuer",
            "locked_until",
            "failed_logins",
            "totp_enabled_at",
            "totp_secret",
            "manager",
            "teams",
            "locations",
            "organisation",
        ):
            batch.drop_column(column)
    op.drop_index("ix_cases_created_by", table_name="cases")
    op.drop_index("ix_cases_team_state", table_name="cases")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("team")
        batch.drop_column("organisation")
