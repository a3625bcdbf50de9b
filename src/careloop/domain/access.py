"""Roles, the actions they grant, and the actor every use case receives.

Deny by default: an action not granted here to one of the actor's roles is refused.
Record rules and field masking (a later issue) will narrow this further per case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


_WORK = {
    Action.CASE_READ,
    Action.CASE_TRANSITION,
    Action.CASE_UPDATE,
    Action.CASE_NOTE,
    Action.CASE_DOCUMENT_ADD,
    Action.CASE_DOCUMENT_READ,
    Action.CASE_TASK,
    Action.WORKFLOW_READ,
}
_MANAGE = _WORK | {Action.CASE_ASSIGN, Action.CASE_CREATE}

GRANTS: dict[Role, frozenset[Action]] = {
    Role.INTAKE_COORDINATOR: frozenset(_WORK | {Action.CASE_CREATE}),
    Role.REFERRAL_COORDINATOR: frozenset(_MANAGE),
    Role.CLINICAL_TRIAGE: frozenset(_WORK),
    Role.UTILIZATION_REVIEW: frozenset(_WORK),
    # Finance works eligibility (payer unreachable, retry); the workflow limits which
    # transitions, the role only opens the door.
    Role.FINANCE: frozenset({Action.CASE_READ, Action.CASE_TRANSITION, Action.WORKFLOW_READ}),
    Role.SCHEDULER: frozenset(_WORK),
    Role.CLINIC_MANAGER: frozenset(_MANAGE | {Action.AUTOMATION_READ}),
    Role.OPERATIONS_MANAGER: frozenset(_MANAGE | {Action.AUTOMATION_READ}),
    Role.AUDITOR: frozenset(
        {Action.CASE_READ, Action.AUDIT_READ, Action.WORKFLOW_READ, Action.AUTOMATION_READ}
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

    def can(self, action: Action) -> bool:
        return any(
            action in GRANTS.get(Role(role), frozenset())
            for role in self.roles
            if role in ROLE_NAMES
        )

    def require(self, action: Action) -> None:
        if not self.can(action):
            raise PermissionDenied(f"none of the roles {sorted(self.roles)} may {action.value}")


SYSTEM_ACTOR = Actor(user_id=0, username="system", roles=frozenset({Role.ADMINISTRATOR.value}))
