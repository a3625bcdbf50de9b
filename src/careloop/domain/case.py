"""The case aggregate: state, version and the rules for changing them.

A case knows its workflow and refuses any change the definition forbids. It records
the events it causes; the service layer turns them into history, audit and outbox rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from careloop.domain.access import Actor
from careloop.domain.conditions import ConditionError
from careloop.domain.errors import FieldProblem, GuardFailed, TransitionNotAllowed
from careloop.domain.events import Event
from careloop.domain.referral import is_present, lookup
from careloop.domain.workflow import Transition, Workflow

# Fields of an activation worked out from the time it is built for: no two events see
# the same value, so nothing decided on them is worth remembering past one event.
TIME_DERIVED = frozenset({"age_hours"})


@dataclass
class Case:
    id: int
    case_type: str
    workflow_key: str
    workflow_version: int
    state: str
    version: int
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    state_entered_at: datetime
    assignee: str | None = None
    # Who owns and who submitted the case: what record rules test.
    organisation: str = ""
    created_by: int = 0
    document_types: list[str] = field(default_factory=list)
    open_tasks: int = 0
    events: list[Event] = field(default_factory=list)

    @property
    def urgency(self) -> str:
        return str(self.data.get("urgency", "routine"))

    @property
    def clinic(self) -> str:
        return str(self.data.get("clinic", ""))

    @property
    def team(self) -> str | None:
        team = self.data.get("team")
        return str(team) if team else None

    def activation(self, now: datetime) -> dict[str, object]:
        """What a CEL guard sees as ``case``: the payload plus derived facts (those in
        TIME_DERIVED differ at every moment it is built)."""
        view = dict(self.data)
        view.update(
            state=self.state,
            assignee=self.assignee or "",
            document_types=sorted(set(self.document_types)),
            open_tasks=self.open_tasks,
            age_hours=(now - self.created_at).total_seconds() / 3600.0,
        )
        return {"case": view}

    def transition(
        self, workflow: Workflow, name: str, actor: Actor, reason: str | None, now: datetime
    ) -> Transition:
        transition = workflow.find_transition(name)
        if transition is None or self.state not in transition.sources:
            allowed = sorted(t.name for t in workflow.transitions_from(self.state))
            raise TransitionNotAllowed(
                f"transition {name!r} is not allowed from state {self.state!r}; allowed: {allowed}"
            )
        if not (transition.roles & actor.roles):
            raise TransitionNotAllowed(
                f"transition {name!r} needs one of the roles {sorted(transition.roles)}"
            )
        self._check_requirements(transition, reason, now)
        previous = self.state
        self.state = transition.target
        self.state_entered_at = now
        self.updated_at = now
        self.events.append(
            Event(
                "case.transitioned",
                {
                    "from": previous,
                    "to": transition.target,
                    "transition": name,
                    "reason": reason or "",
                },
            )
        )
        return transition

    def _check_requirements(
        self, transition: Transition, reason: str | None, now: datetime
    ) -> None:
        problems = [
            FieldProblem(path, "required for this transition")
            for path in transition.required_fields
            if not is_present(lookup(self.data, path))
        ]
        problems += [
            FieldProblem("documents", f"a {doc_type!r} document is required")
            for doc_type in transition.required_documents
            if doc_type not in self.document_types
        ]
        if transition.reason_required and not (reason and reason.strip()):
            problems.append(FieldProblem("reason", "a reason is required for this transition"))
        if problems:
            raise GuardFailed(f"transition {transition.name!r} requirements not met", problems)
        if transition.guard is None:
            return
        try:
            passed = transition.guard.evaluate(self.activation(now))
        except ConditionError as error:
            raise GuardFailed(
                f"guard of {transition.name!r} could not be evaluated: {error}"
            ) from error
        if not passed:
            raise GuardFailed(
                f"guard of {transition.name!r} is not satisfied: {transition.guard.source}"
            )

    def assign(self, assignee: str | None, now: datetime) -> None:
        previous = self.assignee
        self.assignee = assignee
        self.updated_at = now
        self.events.append(Event("case.assigned", {"from": previous, "to": assignee}))
