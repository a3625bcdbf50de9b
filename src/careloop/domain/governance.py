"""Change governance: who may decide a definition change, what each step of a definition
is performed by, and how two versions differ.

Four-eyes: a new version of a workflow, rule set, routing table, calendar or approval
policy takes effect only when a second administrator approves the change request its
author opened.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from careloop.domain.calendar import BusinessCalendar
from careloop.domain.errors import ChangeClosed, FieldProblem, FourEyesRequired, InvalidInput
from careloop.domain.routing import RoutingTable
from careloop.domain.rules import RuleAction, RuleSet
from careloop.domain.workflow import Workflow

WORKFLOW_KIND = "workflow"
MAX_REASON = 4000


class ChangeStatus(StrEnum):
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class ChangePurpose(StrEnum):
    ACTIVATE = "activate"
    ROLLBACK = "rollback"


class StepLabel(StrEnum):
    """Who performs a step: a machine, a machine a person checks, or a person."""

    AUTOMATED = "automated"
    AI_ASSISTED = "ai_assisted"
    HUMAN = "human"
    HUMAN_APPROVAL = "human_approval"


@dataclass(frozen=True)
class StepRow:
    """One step of an active definition, as the governance report lists it."""

    kind: str
    key: str
    version: int
    step: str
    label: StepLabel
    detail: str = ""


# -- deciding a change ---------------------------------------------------------------
def purpose_of(version: int, active: int | None) -> ChangePurpose:
    """Activating an earlier version than the active one is a rollback."""
    if active is not None and version < active:
        return ChangePurpose.ROLLBACK
    return ChangePurpose.ACTIVATE


def check_proposable(kind: str, key: str, version: int, active: int | None) -> None:
    if active == version:
        raise InvalidInput(
            [FieldProblem("version", f"{kind} {key} version {version} is already active")]
        )


def check_open(change: Mapping[str, Any]) -> None:
    if change["status"] != ChangeStatus.PROPOSED:
        raise ChangeClosed(
            f"change {change['id']} is already {change['status']}; "
            "only a proposed change can be decided"
        )


def check_second_administrator(change: Mapping[str, Any], approver: str, approver_id: int) -> None:
    """The author of a change never approves it, and nor does the unnamed system actor:
    approval is a named person's decision."""
    if approver == change["proposed_by"]:
        raise FourEyesRequired(
            f"{approver} proposed change {change['id']} and cannot approve it; "
            "a second administrator must approve it"
        )
    if approver_id == 0:
        raise FourEyesRequired(
            f"change {change['id']} must be approved by a named administrator, not the system"
        )


def check_reason(reason: str | None, required: bool) -> str:
    text = (reason or "").strip()
    if required and not text:
        raise InvalidInput([FieldProblem("reason", "a reason is required")])
    if len(text) > MAX_REASON:
        raise InvalidInput([FieldProblem("reason", f"at most {MAX_REASON} characters")])
    return text


# -- diffs ---------------------------------------------------------------------------
def unified_diff(old_text: str, new_text: str, old_name: str, new_name: str) -> str:
    """A unified diff of two definition texts ('' when they are the same)."""
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True),
        new_text.splitlines(keepends=True),
        fromfile=old_name,
        tofile=new_name,
    )
    # A last line without a newline would run into the next header.
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def version_name(kind: str, key: str, version: int | None) -> str:
    return f"{kind}/{key}/v{version}" if version is not None else "/dev/null"


# -- labelling steps -----------------------------------------------------------------
def workflow_steps(workflow: Workflow) -> Iterator[StepRow]:
    """Each transition is a step, performed as its definition says."""
    for transition in workflow.transitions.values():
        yield StepRow(
            WORKFLOW_KIND,
            workflow.key,
            workflow.version,
            transition.name,
            StepLabel(transition.performed_by),
            f"{', '.join(transition.sources)} -> {transition.target}: {transition.label}",
        )


def ruleset_steps(ruleset: RuleSet) -> Iterator[StepRow]:
    """Rules run by themselves; a rule that requests an approval hands that step to people."""
    for rule in ruleset.rules:
        yield StepRow(
            "rules", ruleset.key, ruleset.version, rule.key, StepLabel.AUTOMATED, rule.title
        )
        for action in _flatten(rule.actions):
            if action.kind == "request_approval":
                yield StepRow(
                    "rules",
                    ruleset.key,
                    ruleset.version,
                    f"{rule.key}/request_approval",
                    StepLabel.HUMAN_APPROVAL,
                    f"approval policy {action.params.get('policy')}",
                )


def _flatten(actions: Iterable[RuleAction]) -> Iterator[RuleAction]:
    for action in actions:
        yield action
        yield from _flatten(action.children)


def routing_steps(table: RoutingTable) -> Iterator[StepRow]:
    """Each routing row decides a queue by itself."""
    for index, row in enumerate(table.rows, start=1):
        criteria = ", ".join(f"{k}={'|'.join(sorted(v))}" for k, v in sorted(row.when.items()))
        yield StepRow(
            "routing",
            table.key,
            table.version,
            f"row {index}",
            StepLabel.AUTOMATED,
            f"{criteria or 'anything'} -> {row.queue}",
        )


def calendar_steps(calendars: Mapping[str, BusinessCalendar], version: int) -> Iterator[StepRow]:
    """Calendars time SLA clocks and business-time timers without anyone's hand."""
    for name, calendar in sorted(calendars.items()):
        yield StepRow(
            "calendars",
            "calendars",
            version,
            name,
            StepLabel.AUTOMATED,
            f"business hours in {calendar.timezone} for SLA clocks and timers",
        )
