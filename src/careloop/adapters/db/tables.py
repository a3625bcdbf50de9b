"""Table definitions (SQLAlchemy Core). ORM rows never leave this package."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
# BigInteger ids that are still SQLite's rowid alias (INTEGER PRIMARY KEY) there.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would otherwise drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        zone = value.tzinfo
        if zone is UTC:
            return value  # what astimezone(UTC) returns too, minus its cost on every row
        if zone is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


TZ = UtcDateTime()

workflow_definitions = Table(
    "workflow_definitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("case_type", String(50), nullable=False),
    Column("source_name", String(300), nullable=False),
    Column("source_text", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("created_at", TZ, nullable=False),
    UniqueConstraint("key", "version"),
)

cases = Table(
    "cases",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_type", String(50), nullable=False),
    Column("workflow_key", String(100), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("state", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    # Denormalised from the payload so work queues filter and sort on indexes.
    Column("clinic", String(100), nullable=False),
    Column("specialty", String(100), nullable=False),
    Column("urgency", String(20), nullable=False),
    Column("payer", String(200), nullable=True),
    Column("assignee", String(150), nullable=True),
    # Record rules: which organisation owns the case and which team works it.
    Column("organisation", String(100), nullable=False, server_default=""),
    Column("team", String(100), nullable=True),
    Column("patient_ref", String(100), nullable=True),
    Column("search_text", Text, nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_by", Integer, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("state_entered_at", TZ, nullable=False),
    Index("ix_cases_queue", "state", "clinic", "specialty", "created_at", "id"),
    Index("ix_cases_state_created", "state", "created_at", "id"),
    Index("ix_cases_assignee_state", "assignee", "state"),
    Index("ix_cases_created", "created_at", "id"),
    Index("ix_cases_team_state", "team", "state"),
    Index("ix_cases_created_by", "created_by", "id"),
)

case_history = Table(
    "case_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("from_state", String(64), nullable=True),
    Column("to_state", String(64), nullable=False),
    Column("transition", String(100), nullable=True),
    Column("actor_id", Integer, nullable=False),
    Column("actor_name", String(150), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("occurred_at", TZ, nullable=False),
)

notes = Table(
    "notes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("author_id", Integer, nullable=False),
    Column("author_name", String(150), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", TZ, nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("doc_type", String(50), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("uploaded_by", Integer, nullable=False),
    Column("created_at", TZ, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("title", String(300), nullable=False),
    Column("status", String(20), nullable=False),
    Column("assignee", String(150), nullable=True),
    Column("due_at", TZ, nullable=True),
    Column("created_by", Integer, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("completed_at", TZ, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("chain", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("occurred_at", TZ, nullable=False),
    Column("actor_id", Integer, nullable=False),
    Column("actor_name", String(150), nullable=False),
    Column("action", String(100), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("case_id", BigInteger, nullable=True, index=True),
    Column("patient_ref", String(100), nullable=True, index=True),
    Column("data_category", String(50), nullable=False),
    Column("source_address", String(100), nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_occurred", "occurred_at"),
)

audit_heads = Table(
    "audit_heads",
    metadata,
    Column("chain", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, nullable=True),
    Column("event_type", String(100), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("created_at", TZ, nullable=False),
    Column("available_at", TZ, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("published_at", TZ, nullable=True),
    Column("last_error", Text, nullable=True),
    # Set when the retry schedule is exhausted; the row leaves the pending set until
    # someone replays it.
    Column("dead_at", TZ, nullable=True),
    Index("ix_outbox_case", "case_id", "id"),
    # The claim's "is an earlier event of this case still pending?" probe: a partial
    # index keeps it cheap whatever the planner's statistics say about pending rows.
    Index(
        "ix_outbox_case_pending",
        "case_id",
        "id",
        postgresql_where=text("published_at IS NULL AND dead_at IS NULL"),
        sqlite_where=text("published_at IS NULL AND dead_at IS NULL"),
    ),
    # The claim's scan: pending rows oldest first, without sorting them all.
    Index(
        "ix_outbox_ready",
        "id",
        postgresql_where=text("published_at IS NULL AND dead_at IS NULL"),
        sqlite_where=text("published_at IS NULL AND dead_at IS NULL"),
    ),
    # The dead-letter list; it holds dead rows only, so live ones cost it nothing.
    Index(
        "ix_outbox_dead",
        "id",
        postgresql_where=text("dead_at IS NOT NULL"),
        sqlite_where=text("dead_at IS NOT NULL"),
    ),
)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(150), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", String(200), nullable=True),
    Column("roles", JSON, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", TZ, nullable=False),
    # Record rules: where the user works. "*" in locations means every clinic of the
    # organisation.
    Column("organisation", String(100), nullable=False, server_default=""),
    Column("locations", JSON, nullable=False, server_default="[]"),
    Column("teams", JSON, nullable=False, server_default="[]"),
    Column("manager", String(150), nullable=True),
    # Authentication: TOTP second factor, lockout, single sign-on identity.
    Column("totp_secret", String(200), nullable=True),
    Column("totp_enabled_at", TZ, nullable=True),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", TZ, nullable=True),
    Column("oidc_issuer", String(300), nullable=True),
    Column("oidc_subject", String(300), nullable=True),
    UniqueConstraint("oidc_issuer", "oidc_subject"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", TZ, nullable=False),
    Column("expires_at", TZ, nullable=True),
    Column("revoked_at", TZ, nullable=True),
    # None: everything the user's roles grant; otherwise a list such as
    # ["referrals:read", "referrals:write"] that narrows them.
    Column("scopes", JSON, nullable=True),
    Column("kind", String(20), nullable=False, server_default="api"),  # api | session
    Column("last_used_at", TZ, nullable=True),
    Column("idle_timeout_seconds", Integer, nullable=True),
    Column("replaced_by", BigInteger, nullable=True),
)

access_grants = Table(
    "access_grants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("username", String(150), nullable=False),
    Column("case_id", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("granted_at", TZ, nullable=False),
    Column("expires_at", TZ, nullable=False),
    Column("revoked_at", TZ, nullable=True),
    Index("ix_access_grants_user_case", "user_id", "case_id", "expires_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("actor_id", Integer, primary_key=True, autoincrement=False),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("case_id", BigInteger, nullable=False),
    Column("created_at", TZ, nullable=False),
)
