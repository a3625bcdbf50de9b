"""Approval policies as data, and the rules for deciding an approval request.

A policy guards transitions (by name) and/or rule actions (``notify:patient``) of one
case type when its CEL condition holds. Its steps run in sequence; a step is one group
of reviewers or several groups in parallel, each with a quorum. Reviewers are named by
role (optionally at the location held in a case field), team, user, a case field that
holds a username, or the requester's manager. Escalation levels and the fallback are an
*authority*: one approval by them completes the step, because they stand in for a
reviewer group that is not answering or not there at all.

This module is pure: who is out of office, who delegated to whom and which users exist
are facts the service layer hands in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from careloop.domain.access import GRANTS, ROLE_NAMES, Action, Role
from careloop.domain.conditions import Condition, ConditionError
from careloop.domain.errors import (
    ApprovalClosed,
    ApprovalConflict,
    FieldProblem,
    InvalidInput,
    PermissionDenied,
)
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


@dataclass(frozen=True)
class Vote:
    step: int
    group: str  # "" when cast with escalation or fallback authority
    decision: str
    person_id: int  # on whose authority: the delegator when a delegate decides
    person_name: str
    actor_id: int  # who decided
    actor_name: str
    role: str
    reason: str
    at: datetime

    @property
    def on_behalf(self) -> bool:
        return self.person_id != self.actor_id


@dataclass
class ApprovalRequest:
    id: int
    case_id: int
    policy_set: str
    policy_version: int
    policy: str
    target_kind: str  # transition | action | rule
    target: str
    status: str
    step: int
    level: int
    requester_id: int
    requester_name: str
    requester_roles: frozenset[str]
    requester_manager: str | None
    reason: str
    created_at: datetime
    updated_at: datetime
    step_started_at: datetime
    decided_at: datetime | None = None
    consumed_at: datetime | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    votes: list[Vote] = field(default_factory=list)
    case_type: str = "referral"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def approvers_of(self, step: int) -> set[int]:
        return {
            identity
            for v in self.votes
            if v.step == step and v.decision == Decision.APPROVE
            for identity in (v.person_id, v.actor_id)
        }


@dataclass(frozen=True)
class Standing:
    """In what capacity a person may decide the current step of a request."""

    person: Person
    groups: tuple[str, ...]  # groups they count for
    authority: bool  # escalation level or fallback: one approval completes the step
    role: str

    @property
    def eligible(self) -> bool:
        return bool(self.groups) or self.authority


def standing_of(
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    person: Person,
    data: Mapping[str, Any],
    fallback_active: bool,
) -> Standing:
    step, manager = policy.steps[request.step], request.requester_manager
    matches = [(g.name, first_match(g.reviewers, person, data, manager)) for g in step.groups]
    groups = [(name, match) for name, match in matches if match is not None]
    authority = policy.authority(step, request.level, fallback_active)
    above = first_match(authority, person, data, manager)
    chosen = groups[0][1] if groups else above
    role = chosen.acting_role(person) if chosen is not None else ""
    return Standing(person, tuple(name for name, _ in groups), above is not None, role)


def first_match(
    reviewers: Iterable[Reviewer], person: Person, data: Mapping[str, Any], manager: str | None
) -> Reviewer | None:
    return next((r for r in reviewers if r.matches(person, data, manager)), None)


@dataclass(frozen=True)
class Outcome:
    vote: Vote
    step_completed: bool
    closed: bool
    event_decision: str  # approved | rejected | information_requested | approval_recorded


def check_reason(decision: str, reason: str | None) -> tuple[Decision, str]:
    """Parse a decision and its reason; a rejection or information request needs one."""
    try:
        parsed = Decision(decision)
    except ValueError:
        raise InvalidInput(
            [FieldProblem("decision", f"{decision!r} is not one of {[d.value for d in Decision]}")]
        ) from None
    text = (reason or "").strip()
    if parsed is not Decision.APPROVE and not text:
        raise InvalidInput([FieldProblem("reason", f"a reason is required to {parsed.value}")])
    return parsed, text


def decide(
    request: ApprovalRequest,
    policy: ApprovalPolicy,
    standing: Standing,
    actor: Person,
    decision: Decision,
    reason: str,
    now: datetime,
) -> Outcome:
    """Record one decision on ``request`` (mutated) and move it on."""
    _check_open(request)
    _check_separation(request, policy, standing, actor, decision)
    group = _group_for(request, policy, standing)
    vote = Vote(
        step=request.step,
        group=group,
        decision=decision.value,
        person_id=standing.person.user_id,
        person_name=standing.person.username,
        actor_id=actor.user_id,
        actor_name=actor.username,
        role=standing.role,
        reason=reason,
        at=now,
    )
    request.votes.append(vote)
    request.updated_at = now
    if decision is Decision.REJECT:
        request.status, request.decided_at = Status.REJECTED.value, now
        return Outcome(vote, False, True, "rejected")
    if decision is Decision.REQUEST_INFORMATION:
        request.status = Status.ON_HOLD.value
        return Outcome(vote, False, False, "information_requested")
    if not _step_complete(request, policy):
        return Outcome(vote, False, False, "approval_recorded")
    if request.step + 1 < len(policy.steps):
        request.step, request.level, request.step_started_at = request.step + 1, 0, now
        return Outcome(vote, True, False, "approval_recorded")
    request.status, request.decided_at = Status.APPROVED.value, now
    return Outcome(vote, True, True, "approved")


def resubmit(request: ApprovalRequest, person_id: int, now: datetime) -> None:
    """The requester answers an information request: the same step resumes."""
    _check_open(request)
    if request.status != Status.ON_HOLD:
        raise ApprovalConflict(f"approval {request.id} is not waiting for information")
    if person_id != request.requester_id:
        raise PermissionDenied(f"only the requester may resubmit approval {request.id}")
    request.status, request.updated_at, request.step_started_at = Status.PENDING.value, now, now


def _check_open(request: ApprovalRequest) -> None:
    if not request.is_open:
        raise ApprovalClosed(f"approval {request.id} is already {request.status}")


def _check_separation(
    request: ApprovalRequest,
    policy: ApprovalPolicy,
    standing: Standing,
    actor: Person,
    decision: Decision,
) -> None:
    if request.status == Status.ON_HOLD:
        raise ApprovalConflict(
            f"approval {request.id} is on hold until the requester provides information"
        )
    if not standing.eligible:
        raise PermissionDenied(
            f"{actor.username} is not an eligible reviewer of step "
            f"{policy.steps[request.step].name!r} of approval {request.id}"
        )
    identities = {standing.person.user_id, actor.user_id}
    if not policy.separation.requester_may_approve and request.requester_id in identities:
        raise PermissionDenied(
            f"segregation of duties: the requester may not decide their own approval {request.id}"
        )
    if decision is not Decision.APPROVE:
        return
    if identities & request.approvers_of(request.step):
        raise ApprovalConflict(
            f"{standing.person.username} has already approved this step of approval {request.id}"
        )
    earlier = set().union(*(request.approvers_of(s) for s in range(request.step)))
    if policy.separation.one_step_per_person and identities & earlier:
        raise PermissionDenied(
            f"segregation of duties: one person may not approve two steps of approval {request.id}"
        )


def _group_for(request: ApprovalRequest, policy: ApprovalPolicy, standing: Standing) -> str:
    """The first group the vote still helps; authority votes belong to none."""
    if standing.authority:
        return ""
    counts = _approvals_by_group(request)
    step = policy.steps[request.step]
    quorum = {g.name: g.quorum for g in step.groups}
    open_groups = [g for g in standing.groups if counts.get(g, 0) < quorum[g]]
    return (open_groups or list(standing.groups))[0]


def _approvals_by_group(request: ApprovalRequest) -> dict[str, int]:
    counts: dict[str, int] = {}
    for vote in request.votes:
        if vote.step == request.step and vote.decision == Decision.APPROVE:
            counts[vote.group] = counts.get(vote.group, 0) + 1
    return counts


def _step_complete(request: ApprovalRequest, policy: ApprovalPolicy) -> bool:
    counts = _approvals_by_group(request)
    if counts.get("", 0):
        return True
    return all(counts.get(g.name, 0) >= g.quorum for g in policy.steps[request.step].groups)


def needs_fallback(
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    people: Iterable[Person],
    unavailable: frozenset[int],
    data: Mapping[str, Any],
) -> bool:
    """True when no group of the current step has anyone who could decide: no active
    eligible user, or all of them out of office without a delegate. People barred by
    segregation of duties do not count as available."""
    step = policy.steps[request.step]
    barred: set[int] = set()
    if policy.separation.one_step_per_person:
        barred = set().union(*(request.approvers_of(s) for s in range(request.step)))
    if not policy.separation.requester_may_approve:
        barred.add(request.requester_id)
    candidates = [p for p in people if p.user_id not in barred and p.user_id not in unavailable]
    manager = request.requester_manager
    return any(
        not any(first_match(group.reviewers, p, data, manager) for p in candidates)
        for group in step.groups
    )
