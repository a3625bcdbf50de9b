"""Tables of approvals: requests, the decisions on them, and delegation windows.

Policies themselves are definitions (automation_definitions, kind 'approvals'); a
request pins the definition version it was opened under.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, String, Table, Text

from careloop.adapters.db.tables import TZ, Id, metadata

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False),
    Column("case_type", String(50), nullable=False),
    Column("policy_set", String(100), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("policy", String(100), nullable=False),
    Column("target_kind", String(20), nullable=False),  # transition | action | rule
    Column("target", String(100), nullable=False),
    Column("status", String(20), nullable=False),  # pending | on_hold | approved | rejected
    Column("step", Integer, nullable=False),
    Column("level", Integer, nullable=False),  # escalation level of the current step
    Column("requester_id", Integer, nullable=False),
    Column("requester_name", String(150), nullable=False),
    Column("requester_roles", JSON, nullable=False),
    Column("requester_manager", String(150), nullable=True),
    Column("reason", Text, nullable=False),
    # What to do once approved when the target is an action (a held notification).
    Column("payload", JSON, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("step_started_at", TZ, nullable=False),
    Column("decided_at", TZ, nullable=True),
    # Set when the approved transition or action has been carried out.
    Column("consumed_at", TZ, nullable=True),
    Index("ix_approval_requests_case", "case_id", "status"),
    Index("ix_approval_requests_status", "status", "created_at", "id"),
)

approval_decisions = Table(
    "approval_decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("request_id", ForeignKey("approval_requests.id"), nullable=False),
    Column("step", Integer, nullable=False),
    Column("group_name", String(100), nullable=False),
    Column("decision", String(30), nullable=False),
    # On whose authority (the delegator when a delegate decided) and who decided.
    Column("person_id", Integer, nullable=False),
    Column("person_name", String(150), nullable=False),
    Column("actor_id", Integer, nullable=False),
    Column("actor_name", String(150), nullable=False),
    Column("role", String(50), nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", TZ, nullable=False),
    Index("ix_approval_decisions_request", "request_id", "id"),
)

# Out of office from..until; decisions by the delegate count on the delegator's behalf.
# No delegate: simply away (which can bring in the fallback approver).
approval_delegations = Table(
    "approval_delegations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delegator_id", Integer, nullable=False),
    Column("delegator_name", String(150), nullable=False),
    Column("delegate_id", Integer, nullable=True),
    Column("delegate_name", String(150), nullable=True),
    Column("starts_at", TZ, nullable=False),
    Column("ends_at", TZ, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("created_by", String(150), nullable=False),
    Column("revoked_at", TZ, nullable=True),
    Index("ix_approval_delegations_delegator", "delegator_id", "ends_at"),
    Index("ix_approval_delegations_delegate", "delegate_id", "ends_at"),
)
