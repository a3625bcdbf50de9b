"""The rules for deciding an approval request (the policies themselves are in
``careloop.domain.approval_policy``, re-exported here).

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
from typing import Any

from careloop.domain.approval_policy import (
    OPEN_STATUSES,
    ApprovalPolicy,
    Decision,
    Person,
    Reviewer,
    Status,
)
from careloop.domain.errors import (
    ApprovalClosed,
    ApprovalConflict,
    FieldProblem,
    InvalidInput,
    PermissionDenied,
)


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
