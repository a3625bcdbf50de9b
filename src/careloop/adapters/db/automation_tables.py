"""Tables of the automation engine: definitions, runs, timers, webhooks, notifications."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from careloop.adapters.db.tables import TZ, Id, metadata

# Rule sets, routing tables and calendars: immutable versions, one active per key.
automation_definitions = Table(
    "automation_definitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(30), nullable=False),
    Column("key", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("case_type", String(50), nullable=False),
    Column("source_name", String(300), nullable=False),
    Column("source_text", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("created_by", String(150), nullable=False),
    Column("active", Boolean, nullable=False, default=False),
    Column("activated_at", TZ, nullable=True),
    Column("activated_by", String(150), nullable=True),
    UniqueConstraint("kind", "key", "version"),
)

# Every rule evaluation for an event: the execution log a coordinator reads, and the
# unique (event, rule) key that makes a retried event a no-op.
automation_runs = Table(
    "automation_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, nullable=True),
    Column("event_key", String(200), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("rule_key", String(100), nullable=False),
    Column("ruleset_key", String(100), nullable=False),
    Column("ruleset_version", Integer, nullable=False),
    Column("depth", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),  # applied | skipped | failed | stopped
    Column("inputs", JSON, nullable=False),
    Column("results", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", TZ, nullable=False),
    UniqueConstraint("event_key", "rule_key"),
    Index("ix_automation_runs_case", "case_id", "id"),
)

timers = Table(
    "timers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, nullable=True),
    Column("kind", String(20), nullable=False),  # sla | rule
    Column("key", String(200), nullable=False, unique=True),
    Column("name", String(100), nullable=False),  # the SLA step or the rule key
    Column("due_at", TZ, nullable=False),
    Column("status", String(20), nullable=False),  # pending | fired | cancelled
    Column("payload", JSON, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("fired_at", TZ, nullable=True),
    Index("ix_timers_due", "status", "due_at", "id"),
    Index("ix_timers_case", "case_id", "status"),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("url", String(2000), nullable=False),
    Column("event_types", JSON, nullable=False),
    Column("filter", Text, nullable=True),
    Column("secrets", JSON, nullable=False),  # newest first; several during rotation
    Column("active", Boolean, nullable=False),
    Column("disabled_reason", Text, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("subscription_id", ForeignKey("webhook_subscriptions.id"), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("case_id", BigInteger, nullable=True),
    Column("body", Text, nullable=False),
    Column("status", String(20), nullable=False),  # pending | delivered | dead | disabled
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", TZ, nullable=False),
    Column("leased_until", TZ, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("finished_at", TZ, nullable=True),
    UniqueConstraint("subscription_id", "message_id"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at", "id"),
    Index("ix_webhook_deliveries_subscription", "subscription_id", "id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", ForeignKey("webhook_deliveries.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("at", TZ, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("latency_ms", Float, nullable=False),
)

inbound_sources = Table(
    "inbound_sources",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("secrets", JSON, nullable=False),
    Column("case_field", String(100), nullable=False),  # where the payload names the case
    Column("event_field", String(100), nullable=False),  # where it names the event
    Column("events", JSON, nullable=False),  # accepted event names
    Column("active", Boolean, nullable=False),
    Column("created_at", TZ, nullable=False),
)

inbound_webhooks = Table(
    "inbound_webhooks",
    metadata,
    Column("source", String(100), primary_key=True),
    Column("webhook_id", String(200), primary_key=True),
    Column("case_id", BigInteger, nullable=False),
    Column("event", String(100), nullable=False),
    Column("received_at", TZ, nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, nullable=True, index=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("channel", String(20), nullable=False),
    Column("recipient", String(300), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(20), nullable=False),  # pending | sent | unread | dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", TZ, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("sent_at", TZ, nullable=True),
    Index("ix_notifications_due", "status", "next_attempt_at"),
)

case_links = Table(
    "case_links",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, nullable=False, index=True),
    Column("other_case_id", BigInteger, nullable=False),
    Column("kind", String(30), nullable=False),  # possible_duplicate
    Column("score", Float, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("created_at", TZ, nullable=False),
    UniqueConstraint("case_id", "other_case_id", "kind"),
)

# Blocking keys of each referral's patient, so duplicate detection reads a handful of
# candidates instead of scanning every case.
patient_keys = Table(
    "patient_keys",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("case_id", BigInteger, primary_key=True),
    Column("specialty", String(100), nullable=False),
    Column("created_at", TZ, nullable=False),
)

specialists = Table(
    "specialists",
    metadata,
    Column("name", String(150), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("specialty", String(100), nullable=False, index=True),
    Column("clinics", JSON, nullable=False),
    Column("max_workload", Integer, nullable=False),
    Column("open_slots", Integer, nullable=False),  # in the next horizon, from scheduling
    Column("available", Boolean, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

scheduled_jobs = Table(
    "scheduled_jobs",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("next_run_at", TZ, nullable=False),
    Column("last_run_at", TZ, nullable=True),
    Column("last_result", Text, nullable=True),
)
