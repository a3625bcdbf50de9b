"""Approval policies as data: which transitions and actions a policy guards, when, and
who reviews each step.

A policy guards transitions (by name) and/or rule actions (``notify:patient``) of one
case type when its CEL condition holds. Its steps run in sequence; a step is one group
of reviewers or several groups in parallel, each with a quorum. Reviewers are named by
role (optionally at the location held in a case field), team, user, a case field that
holds a username, or the requester's manager. The decision rules are in
``careloop.domain.approvals``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from careloop.domain.access import GRANTS, ROLE_NAMES, Action, Role
from careloop.domain.conditions import Condition, ConditionError
from careloop.domain.referral import lookup

STEP_LABEL = "human_approval"
ALL_LOCATIONS = "*"
REVIEWER_KINDS = ("role", "team", "user", "user_field", "manager_of")


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_INFORMATION = "request_information"


class Status(StrEnum):
    PENDING = "pending"
    ON_HOLD = "on_hold"  # information requested: waits for the requester to resubmit
    APPROVED = "approved"
    REJECTED = "rejected"


OPEN_STATUSES = frozenset({Status.PENDING.value, Status.ON_HOLD.value})


@dataclass(frozen=True)
class Person:
    """A user as reviewer selectors see one."""

    user_id: int
    username: str
    roles: frozenset[str]
    teams: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    organisation: str = ""


@dataclass(frozen=True)
class Reviewer:
    kind: str  # one of REVIEWER_KINDS
    value: str
    at: str = ""  # role reviewers: the case field naming the location they must cover

    def matches(self, person: Person, data: Mapping[str, Any], manager: str | None) -> bool:
        if self.kind == "role":
            if self.value not in person.roles:
                return False
            if not self.at:
                return True
            place = lookup(dict(data), self.at)
            return bool(place) and (
                str(place) in person.locations or ALL_LOCATIONS in person.locations
            )
        if self.kind == "team":
            return self.value in person.teams
        if self.kind == "user":
            return person.username == self.value
        if self.kind == "user_field":
            named = lookup(dict(data), self.value)
            return bool(named) and person.username == str(named)
        return bool(manager) and person.username == manager  # manager_of: requester

    def acting_role(self, person: Person) -> str:
        """The role a matching person decides in: the selector's own, else theirs."""
        if self.kind == "role":
            return self.value
        return deciding_role(person.roles)

    def describe(self) -> str:
        where = f" at {self.at}" if self.at else ""
        return f"{self.kind} {self.value}{where}"


def deciding_role(roles: Iterable[str]) -> str:
    granted = [
        r for r in sorted(roles) if r in ROLE_NAMES and Action.APPROVAL_DECIDE in GRANTS[Role(r)]
    ]
    return granted[0] if granted else ""


@dataclass(frozen=True)
class Group:
    name: str
    reviewers: tuple[Reviewer, ...]
    quorum: int = 1


@dataclass(frozen=True)
class Step:
    name: str
    groups: tuple[Group, ...]
    remind_after: int | None = None  # seconds after the step (or level) began
    escalate_after: int | None = None
    escalate_to: tuple[Reviewer, ...] = ()  # one reviewer selector per level
    fallback: tuple[Reviewer, ...] = ()
    label: str = STEP_LABEL


@dataclass(frozen=True)
class Separation:
    """Segregation of duties; both rules hold unless a policy relaxes them."""

    requester_may_approve: bool = False
    one_step_per_person: bool = True


@dataclass(frozen=True)
class ApprovalPolicy:
    key: str
    title: str
    steps: tuple[Step, ...]
    transitions: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()  # "notify" or "notify:patient"
    condition: Condition | None = None
    separation: Separation = Separation()
    fallback: tuple[Reviewer, ...] = ()

    def applies(self, activation: Mapping[str, object]) -> bool:
        """Whether the condition holds. A condition that cannot be evaluated counts as
        holding: a governance gate fails closed."""
        if self.condition is None:
            return True
        try:
            return self.condition.evaluate(activation)
        except ConditionError:
            return True

    def guards_action(self, kind: str, to: str) -> bool:
        return kind in self.actions or f"{kind}:{to}" in self.actions

    def fallback_for(self, step: Step) -> tuple[Reviewer, ...]:
        return step.fallback or self.fallback

    def authority(self, step: Step, level: int, fallback_active: bool) -> tuple[Reviewer, ...]:
        """Escalation levels reached so far, then the fallback once levels run out or
        nobody of the step is available."""
        reviewers = step.escalate_to[:level]
        if fallback_active or level > len(step.escalate_to):
            reviewers += self.fallback_for(step)
        return reviewers

    def max_level(self, step: Step) -> int:
        return len(step.escalate_to) + (1 if self.fallback_for(step) else 0)


@dataclass(frozen=True)
class ApprovalPolicySet:
    """One versioned approvals definition for a case type."""

    key: str
    version: int
    case_type: str
    title: str
    policies: tuple[ApprovalPolicy, ...]
    source: str = ""

    def find(self, key: str) -> ApprovalPolicy | None:
        return next((p for p in self.policies if p.key == key), None)

    def for_transition(self, name: str) -> list[ApprovalPolicy]:
        return [p for p in self.policies if name in p.transitions]

    def for_action(self, kind: str, to: str) -> list[ApprovalPolicy]:
        return [p for p in self.policies if p.guards_action(kind, to)]
