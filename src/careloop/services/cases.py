"""Case use cases: create, transition, assign, change fields. The one write path.

Each use case checks the actor's permission and the workflow, applies the change with
optimistic concurrency and writes the new state, the status history, the audit entry
and the outbox events in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from careloop.domain.access import Action, Actor
from careloop.domain.case import Case
from careloop.domain.errors import IdempotencyConflict, StaleVersion, TransitionNotAllowed
from careloop.domain.events import Event
from careloop.domain.referral import CASE_TYPE
from careloop.services.approval_gate import check_transition_gate
from careloop.services.deps import Deps
from careloop.services.ports import OptimisticAbort, UnitOfWork
from careloop.services.reach import load_case
from careloop.services.recording import audit, publish_events
from careloop.services.referral_input import ReferralChanges, ReferralIn, merge_changes

T = TypeVar("T")
R = TypeVar("R")


def create_referral(
    deps: Deps, actor: Actor, referral: ReferralIn, idempotency_key: str | None = None
) -> tuple[Case, bool]:
    """Create a referral; returns (case, created). A replayed key returns the first case."""
    actor.require(Action.CASE_CREATE)
    return _create_alone(deps, _Intake(actor, referral, idempotency_key))


def _create_alone(deps: Deps, intake: _Intake) -> tuple[Case, bool]:
    now = deps.clock.now()
    with deps.uow() as uow:
        result = _create(uow, deps, intake, now)
        uow.commit()
    return result


@dataclass(frozen=True)
class IntakeRequest:
    """One referral to create in a batch (create_referrals)."""

    actor: Actor
    referral: ReferralIn
    idempotency_key: str | None = None


IntakeResult = tuple[Case, bool] | Exception


def create_referrals(deps: Deps, requests: Sequence[IntakeRequest]) -> list[IntakeResult]:
    """Create several referrals in one transaction: one lock, one commit, one flush to
    disk for the lot (group commit). Each request stands alone: one that fails (refused,
    invalid, a reused idempotency key) gets its error in its place of the result and the
    others are created (_each_alone). If the commit of several fails, it raises and
    nothing is written. The API batches concurrent POSTs through here
    (api/intake_batcher.py); imports of many referrals may call it."""
    intakes = [_Intake(r.actor, r.referral, r.idempotency_key) for r in requests]
    if len(intakes) == 1:  # its own transaction: nothing to stand apart from
        try:
            intakes[0].actor.require(Action.CASE_CREATE)
            return [_create_alone(deps, intakes[0])]
        except Exception as error:  # the request's own failure, reported to it
            return [error]

    def create(uow: UnitOfWork, intake: _Intake, now: datetime) -> tuple[Case, bool]:
        intake.actor.require(Action.CASE_CREATE)
        return _create(uow, deps, intake, now)

    return _each_alone(deps, intakes, create)


class _Intake:
    """A create request with its JSON data and request hash, computed before the
    transaction so none of that work happens while the write lock is held."""

    def __init__(self, actor: Actor, referral: ReferralIn, idempotency_key: str | None) -> None:
        self.actor = actor
        self.idempotency_key = idempotency_key
        self.data = referral.model_dump(mode="json", exclude_none=True)
        self.request_hash = _hash_request(self.data) if idempotency_key else ""


def _create(uow: UnitOfWork, deps: Deps, intake: _Intake, now: datetime) -> tuple[Case, bool]:
    actor, data, key = intake.actor, intake.data, intake.idempotency_key
    if key:
        previous = uow.idempotency.find(actor.user_id, key)
        if previous is not None:
            if previous["request_hash"] != intake.request_hash:
                raise IdempotencyConflict(f"Idempotency-Key {key!r} was used with a different body")
            return uow.cases.get(previous["case_id"]), False
    workflow = deps.workflows.latest(CASE_TYPE)
    case = Case(
        id=0,
        case_type=CASE_TYPE,
        workflow_key=workflow.key,
        workflow_version=workflow.version,
        state=workflow.initial,
        version=1,
        data=data,
        created_at=now,
        updated_at=now,
        state_entered_at=now,
        organisation=actor.organisation,
    )
    uow.cases.add(case, actor.user_id, actor.username)
    case.events.append(
        Event("case.created", {"channel": data.get("channel", "api"), "urgency": case.urgency})
    )
    audit(uow, actor, "case.create", now, case=case, category="demographics")
    publish_events(uow, case, now)
    if key:
        uow.idempotency.add(actor.user_id, key, intake.request_hash, case.id, now)
    return case, True


def transition_case(
    deps: Deps,
    actor: Actor,
    case_id: int,
    transition: str,
    expected_version: int,
    reason: str | None = None,
    changes: ReferralChanges | None = None,
) -> Case:
    actor.require(Action.CASE_TRANSITION)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = _load_current(load_case(uow, actor, case_id, now), expected_version)
        if changes is not None:
            actor.require(Action.CASE_UPDATE)
            _apply_changes(case, changes, now)
        apply_transition(uow, deps, actor, case, transition, reason, now)
        publish_events(uow, case, now)
        uow.commit()
    return case


@dataclass(frozen=True)
class Move:
    """One case to move in a batch (transition_cases)."""

    case_id: int
    transition: str
    expected_version: int
    reason: str | None = None


MoveResult = Case | Exception


def transition_cases(deps: Deps, actor: Actor, moves: Sequence[Move]) -> list[MoveResult]:
    """Move several cases in one transaction (a coordinator's bulk action on a work
    queue). Each move stands alone: one refused, stale, blocked by its guard or failing
    otherwise gets its error in its place of the result and the others are moved. Like
    the single move, the use case does not audit refusals: the caller does, in a
    transaction of its own (``record_refusal``), so they stay on record whatever
    happens to this one. An approval a move would need is not requested here: that move
    is answered ``approval_required`` and can be made on its own. Writes are deferred
    to the commit unless a move fails (_each_alone).
    """
    actor.require(Action.CASE_TRANSITION)

    def move(uow: UnitOfWork, move: Move, now: datetime) -> Case:
        case = _load_current(load_case(uow, actor, move.case_id, now), move.expected_version)
        apply_transition(uow, deps, actor, case, move.transition, move.reason, now)
        publish_events(uow, case, now)
        return case

    def prefetch(uow: UnitOfWork) -> None:
        uow.cases.prefetch({move.case_id for move in moves})

    return _each_alone(deps, moves, move, prefetch)


def _each_alone(
    deps: Deps,
    items: Sequence[T],
    step: Callable[[UnitOfWork, T, datetime], R],
    prepare: Callable[[UnitOfWork], None] | None = None,
) -> list[R | Exception]:
    """``step`` for every item in one transaction, each item standing alone: one that
    fails gets its error in its place of the result and the others go through.

    First tried with every write deferred to the commit and no savepoints (the relay's
    optimistic batch, adapters/db/write_buffer.py); if any item fails, the batch is
    rolled back and run again with a savepoint per item."""
    try:
        return _run_each(deps, items, step, prepare, optimistic=True)
    except OptimisticAbort:
        return _run_each(deps, items, step, prepare, optimistic=False)


def _run_each(
    deps: Deps,
    items: Sequence[T],
    step: Callable[[UnitOfWork, T, datetime], R],
    prepare: Callable[[UnitOfWork], None] | None,
    optimistic: bool,
) -> list[R | Exception]:
    results: list[R | Exception] = []
    now = deps.clock.now()
    with deps.uow() as uow:
        uow.optimistic = optimistic
        if prepare is not None:
            prepare(uow)
        for item in items:
            try:
                with uow.savepoint():
                    result = step(uow, item, now)
            except OptimisticAbort:
                raise
            except Exception as error:  # this item's own failure: rolled back to its savepoint
                results.append(error)
                continue
            results.append(result)
        uow.commit()
    return results


def apply_transition(
    uow: UnitOfWork,
    deps: Deps,
    actor: Actor,
    case: Case,
    transition: str,
    reason: str | None,
    now: datetime,
) -> None:
    """Move ``case`` (as loaded in ``uow``) and write state, history and audit; the caller
    publishes the case's events and commits."""
    expected_version = case.version
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    previous = case.state
    check_transition_gate(uow, deps, actor, case, transition, now, reason)
    case.transition(workflow, transition, actor, reason, now)
    uow.cases.save(case, expected_version)
    uow.cases.add_history(
        case.id, previous, case.state, transition, actor.user_id, actor.username, reason or "", now
    )
    audit(
        uow,
        actor,
        "case.transition",
        now,
        case=case,
        reason=reason or "",
        detail={"transition": transition, "from": previous, "to": case.state},
    )


def update_case(
    deps: Deps, actor: Actor, case_id: int, expected_version: int, changes: ReferralChanges
) -> Case:
    actor.require(Action.CASE_UPDATE)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = _load_current(load_case(uow, actor, case_id, now), expected_version)
        apply_update(uow, deps, actor, case, changes, now)
        publish_events(uow, case, now)
        uow.commit()
    return case


def apply_update(
    uow: UnitOfWork,
    deps: Deps,
    actor: Actor,
    case: Case,
    changes: ReferralChanges,
    now: datetime,
    reason: str = "",
) -> list[str]:
    """Change fields of an open case in ``uow``; returns the changed field names."""
    expected_version = case.version
    workflow = deps.workflows.get(case.workflow_key, case.workflow_version)
    if workflow.states[case.state].terminal:
        raise TransitionNotAllowed(f"case {case.id} is {case.state!r} and cannot change")
    changed = _apply_changes(case, changes, now)
    uow.cases.save(case, expected_version)
    audit(
        uow,
        actor,
        "case.update",
        now,
        case=case,
        category="demographics",
        reason=reason,
        detail={"fields": changed},
    )
    return changed


def assign_case(
    deps: Deps, actor: Actor, case_id: int, expected_version: int, assignee: str | None
) -> Case:
    actor.require(Action.CASE_ASSIGN)
    now = deps.clock.now()
    with deps.uow() as uow:
        case = _load_current(load_case(uow, actor, case_id, now), expected_version)
        apply_assignment(uow, actor, case, assignee, now)
        publish_events(uow, case, now)
        uow.commit()
    return case


def apply_assignment(
    uow: UnitOfWork, actor: Actor, case: Case, assignee: str | None, now: datetime, reason: str = ""
) -> None:
    expected_version = case.version
    previous = case.assignee
    case.assign(assignee, now)
    uow.cases.save(case, expected_version)
    audit(
        uow,
        actor,
        "case.assign",
        now,
        case=case,
        reason=reason,
        detail={"from": previous, "to": assignee},
    )


def _load_current(case: Case, expected_version: int) -> Case:
    # Checked before any work so a stale request fails fast; save() re-checks atomically.
    if case.version != expected_version:
        raise StaleVersion(expected_version, case.version)
    return case


def _apply_changes(case: Case, changes: ReferralChanges, now: Any) -> list[str]:
    merged, old = merge_changes(case.data, changes), case.data
    # The merge keeps what it does not change as the same objects: identity settles
    # most fields without comparing nested values (a patient, a payer) member by member.
    changed = sorted(
        k
        for k in merged.keys() | old.keys()
        if (new_value := merged.get(k)) is not (old_value := old.get(k)) and new_value != old_value
    )
    before = {name: old.get(name) for name in changed}
    case.data = merged
    case.updated_at = now
    if changed:
        # The old values let field-change rules test what a field was, not only what it is.
        case.events.append(Event("case.updated", {"fields": changed, "before": before}))
    return changed


def _hash_request(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
