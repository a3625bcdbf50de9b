"""Record rules applied to one case: the load every actor-facing use case goes through."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from careloop.domain.access import Actor
from careloop.domain.case import Case
from careloop.domain.errors import OutOfReach
from careloop.domain.record_rules import scope_of
from careloop.services.ports import UnitOfWork


def load_case(uow: UnitOfWork, actor: Actor, case_id: int, now: datetime) -> Case:
    """The case, if ``actor`` reaches it; otherwise the same answer as a missing case."""
    case = uow.cases.get(case_id)
    ensure_reach(uow, actor, case, now)
    return case


def ensure_reach(
    uow: UnitOfWork, actor: Actor, case: Case, now: datetime
) -> dict[str, Any] | None:
    """None when the record rules let ``actor`` reach ``case``; the break-glass grant
    when only a grant does. Raises OutOfReach otherwise."""
    scope = scope_of(actor)
    if scope.reaches(case.organisation, case.clinic, case.team, case.assignee, case.created_by):
        return None
    # Only a refused rule costs a lookup: the everyday read pays nothing for break-glass.
    grant = uow.access.active_grant(actor.user_id, case.id, now)
    if grant is None:
        raise OutOfReach(case.id)
    return grant
