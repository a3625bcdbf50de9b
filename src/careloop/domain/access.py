"""Roles, the actions they grant, and the actor every use case receives.

Deny by default: an action not granted here to one of the actor's roles is refused.
A token's scopes narrow what its roles grant, never widen it. Record rules
(``record_rules``) narrow which cases an actor reaches; field rules (``masking``) narrow
what it sees of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from careloop.domain.errors import PermissionDenied


class Role(StrEnum):
    INTAKE_COORDINATOR = "intake_coordinator"
    REFERRAL_COORDINATOR = "referral_coordinator"
    CLINICAL_TRIAGE = "clinical_triage"
    UTILIZATION_REVIEW = "utilization_review"
    FINANCE = "finance"
    SCHEDULER = "scheduler"
    CLINIC_MANAGER = "clinic_manager"
    OPERATIONS_MANAGER = "operations_manager"
    AUDITOR = "auditor"
    INTEGRATION_CLIENT = "integration_client"
    ADMINISTRATOR = "administrator"


class Action(StrEnum):
    CASE_CREATE = "case.create"
    CASE_READ = "case.read"
    CASE_TRANSITION = "case.transition"
    CASE_UPDATE = "case.update"
    CASE_ASSIGN = "case.assign"
    CASE_NOTE = "case.note"
    CASE_DOCUMENT_ADD = "case.document.add"
    CASE_DOCUMENT_READ = "case.document.read"
    CASE_TASK = "case.task"
    AUDIT_READ = "audit.read"
    WORKFLOW_READ = "workflow.read"
    WORKFLOW_MANAGE = "workflow.manage"
    USER_MANAGE = "user.manage"
    AUTOMATION_READ = "automation.read"
    AUTOMATION_MANAGE = "automation.manage"
    WEBHOOK_MANAGE = "webhook.manage"
    APPROVAL_READ = "approval.read"
    APPROVAL_REQUEST = "approval.request"
    APPROVAL_DECIDE = "approval.decide"
    DELEGATION_MANAGE = "delegation.manage"
    BREAK_GLASS = "access.break_glass"
    GOVERNANCE_READ = "governance.read"
    GOVERNANCE_APPROVE = "governance.approve"


# What a scoped token must carry for each action. A token without scopes (a person's
# session) gets whatever its roles grant.
SCOPES: dict[Action, str] = {
    Action.CASE_READ: "referrals:read",
    Action.CASE_DOCUMENT_READ: "referrals:read",
    Action.WORKFLOW_READ: "referrals:read",
    Action.CASE_CREATE: "referrals:write",
    Action.CASE_TRANSITION: "referrals:write",
    Action.CASE_UPDATE: "referrals:write",
    Action.CASE_ASSIGN: "referrals:write",
    Action.CASE_NOTE: "referrals:write",
    Action.CASE_DOCUMENT_ADD: "referrals:write",
    Action.CASE_TASK: "referrals:write",
    Action.BREAK_GLASS: "referrals:break-glass",
    Action.APPROVAL_READ: "approvals:read",
    Action.APPROVAL_REQUEST: "approvals:write",
    Action.APPROVAL_DECIDE: "approvals:write",
    Action.DELEGATION_MANAGE: "approvals:write",
    Action.AUDIT_READ: "audit:read",
    Action.AUTOMATION_READ: "automation:read",
    Action.AUTOMATION_MANAGE: "automation:manage",
    Action.WEBHOOK_MANAGE: "webhooks:manage",
    Action.WORKFLOW_MANAGE: "admin",
    Action.USER_MANAGE: "admin",
    Action.GOVERNANCE_READ: "governance:read",
    Action.GOVERNANCE_APPROVE: "admin",
}
SCOPE_NAMES = frozenset(SCOPES.values())


# Whoever may move a case may also ask for the approval a move needs, and answer the
# approver's request for information.
_WORK = {
    Action.APPROVAL_REQUEST,
    Action.CASE_READ,
    Action.CASE_TRANSITION,
    Action.CASE_UPDATE,
    Action.CASE_NOTE,
    Action.CASE_DOCUMENT_ADD,
    Action.CASE_DOCUMENT_READ,
    Action.CASE_TASK,
    Action.WORKFLOW_READ,
}
_APPROVE = {Action.APPROVAL_READ, Action.APPROVAL_DECIDE, Action.DELEGATION_MANAGE}
_MANAGE = _WORK | _APPROVE | {Action.CASE_ASSIGN, Action.CASE_CREATE, Action.APPROVAL_REQUEST}

GRANTS: dict[Role, frozenset[Action]] = {
    Role.INTAKE_COORDINATOR: frozenset(
        _WORK | {Action.CASE_CREATE, Action.APPROVAL_READ, Action.APPROVAL_REQUEST}
    ),
    Role.REFERRAL_COORDINATOR: frozenset(_MANAGE),
    Role.CLINICAL_TRIAGE: frozenset(_WORK | _APPROVE | {Action.BREAK_GLASS}),
    Role.UTILIZATION_REVIEW: frozenset(_WORK | _APPROVE),
    # Finance works eligibility (payer unreachable, retry); the workflow limits which
    # transitions, the role only opens the door.
    Role.FINANCE: frozenset(
        {Action.CASE_READ, Action.CASE_TRANSITION, Action.WORKFLOW_READ, Action.APPROVAL_REQUEST}
        | _APPROVE
    ),
    Role.SCHEDULER: frozenset(_WORK),
    Role.CLINIC_MANAGER: frozenset(
        _MANAGE | {Action.AUTOMATION_READ, Action.BREAK_GLASS, Action.GOVERNANCE_READ}
    ),
    Role.OPERATIONS_MANAGER: frozenset(_MANAGE | {Action.AUTOMATION_READ, Action.GOVERNANCE_READ}),
    Role.AUDITOR: frozenset(
        {
            Action.CASE_READ,
            Action.AUDIT_READ,
            Action.WORKFLOW_READ,
            Action.AUTOMATION_READ,
            Action.APPROVAL_READ,
            Action.GOVERNANCE_READ,
        }
    ),
    Role.INTEGRATION_CLIENT: frozenset(
        {Action.CASE_CREATE, Action.CASE_READ, Action.CASE_DOCUMENT_ADD, Action.CASE_NOTE}
    ),
    Role.ADMINISTRATOR: frozenset(
        _MANAGE
        | {
            Action.AUDIT_READ,
            Action.WORKFLOW_MANAGE,
            Action.USER_MANAGE,
            Action.AUTOMATION_READ,
            Action.AUTOMATION_MANAGE,
            Action.WEBHOOK_MANAGE,
            Action.BREAK_GLASS,
            Action.GOVERNANCE_READ,
            Action.GOVERNANCE_APPROVE,
        }
    ),
}

ROLE_NAMES = frozenset(role.value for role in Role)


@dataclass(frozen=True)
class Actor:
    """Who is acting, with what roles, from where. Every use case takes one."""

    user_id: int
    username: str
    roles: frozenset[str]
    source_address: str = ""
    token_id: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    organisation: str = ""
    # Clinics the actor works at ("*": all of the organisation's) and teams it is on.
    locations: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    # None for a person's session: the roles decide. A scoped API token narrows them.
    scopes: frozenset[str] | None = None

    def can(self, action: Action) -> bool:
        if self.scopes is not None and SCOPES.get(action) not in self.scopes:
            return False
        return any(
            action in GRANTS.get(Role(role), frozenset())
            for role in self.roles
            if role in ROLE_NAMES
        )

    def require(self, action: Action) -> None:
        if self.can(action):
            return
        if self.scopes is not None and SCOPES.get(action) not in self.scopes:
            raise PermissionDenied(
                f"the token's scopes {sorted(self.scopes)} do not include "
                f"{SCOPES.get(action)!r}, needed to {action.value}"
            )
        raise PermissionDenied(f"none of the roles {sorted(self.roles)} may {action.value}")

    def with_address(self, source_address: str) -> Actor:
        return replace(self, source_address=source_address)


SYSTEM_ACTOR = Actor(
    user_id=0,
    username="system",
    roles=frozenset({Role.ADMINISTRATOR.value}),
    locations=frozenset({"*"}),
)
