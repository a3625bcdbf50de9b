"""The governance report: every step of every active definition, labelled automated,
AI-assisted, human or human approval, with who proposed and who approved the version.

Steps come from a list of step sources, each a function from the active definitions to
rows; a new kind of definition (approval policies) adds its own source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from careloop.domain.access import Action, Actor
from careloop.domain.governance import (
    WORKFLOW_KIND,
    StepRow,
    calendar_steps,
    routing_steps,
    ruleset_steps,
    workflow_steps,
)
from careloop.domain.workflow import Workflow
from careloop.services.automation_registry import AutomationConfig, AutomationRegistry
from careloop.services.deps import Deps
from careloop.services.ports import UnitOfWork

REPORT_COLUMNS = (
    "kind",
    "key",
    "version",
    "step",
    "label",
    "detail",
    "proposed_by",
    "proposed_at",
    "approved_by",
    "approved_at",
    "change_id",
)
BASELINE = "system"  # who installed the shipped versions


@dataclass(frozen=True)
class ActiveDefinitions:
    """Everything active right now, compiled."""

    workflows: tuple[Workflow, ...]
    automation: AutomationConfig

    def keys(self, kind: str) -> list[tuple[str, int]]:
        """(key, version) of the active definitions of an automation kind."""
        return sorted((k, v) for found, k, v in self.automation.fingerprint if found == kind)


StepSource = Callable[[ActiveDefinitions], Iterable[StepRow]]


def workflow_step_rows(active: ActiveDefinitions) -> Iterator[StepRow]:
    for workflow in active.workflows:
        yield from workflow_steps(workflow)


def rule_step_rows(active: ActiveDefinitions) -> Iterator[StepRow]:
    for rulesets in active.automation.rulesets.values():
        for ruleset in rulesets:
            yield from ruleset_steps(ruleset)


def routing_step_rows(active: ActiveDefinitions) -> Iterator[StepRow]:
    for key in sorted(active.automation.routing):
        yield from routing_steps(active.automation.routing[key])


def calendar_step_rows(active: ActiveDefinitions) -> Iterator[StepRow]:
    # Calendars of every active calendar set are merged by location; one set is usual.
    for key, version in active.keys("calendars")[:1]:
        for row in calendar_steps(active.automation.calendars, version):
            yield StepRow(row.kind, key, row.version, row.step, row.label, row.detail)


DEFAULT_STEP_SOURCES: tuple[StepSource, ...] = (
    workflow_step_rows,
    rule_step_rows,
    routing_step_rows,
    calendar_step_rows,
)


def governance_report(
    deps: Deps, registry: AutomationRegistry, actor: Actor, sources: Sequence[StepSource]
) -> list[dict[str, Any]]:
    actor.require(Action.GOVERNANCE_READ)
    with deps.read_uow() as uow:
        active_rows = uow.governance.active_workflows()
    workflows = tuple(deps.workflows.get(r["key"], r["version"]) for r in active_rows)
    active = ActiveDefinitions(workflows, registry.current())
    steps = [row for source in sources for row in source(active)]
    with deps.read_uow() as uow:
        provenance = {
            target: _provenance(uow, *target)
            for target in sorted({(s.kind, s.key, s.version) for s in steps})
        }
    return [
        {
            "kind": s.kind,
            "key": s.key,
            "version": s.version,
            "step": s.step,
            "label": s.label.value,
            "detail": s.detail,
            **provenance[(s.kind, s.key, s.version)],
        }
        for s in steps
    ]


def _provenance(uow: UnitOfWork, kind: str, key: str, version: int) -> dict[str, Any]:
    change = uow.governance.approved_change(kind, key, version)
    if change is not None:
        return {
            "proposed_by": change["proposed_by"],
            "proposed_at": change["proposed_at"],
            "approved_by": change["decided_by"],
            "approved_at": change["decided_at"],
            "change_id": change["id"],
        }
    activated = _activation(uow, kind, key, version)
    by = activated.get("activated_by") or BASELINE
    return {
        "proposed_by": by,
        "proposed_at": activated.get("activated_at"),
        "approved_by": by,
        "approved_at": activated.get("activated_at"),
        "change_id": None,
    }


def _activation(uow: UnitOfWork, kind: str, key: str, version: int) -> Mapping[str, Any]:
    if kind == WORKFLOW_KIND:
        row = uow.governance.active_workflow(key)
        return row if row is not None and row["version"] == version else {}
    found = [
        r
        for r in uow.automation.active_definitions(kind)
        if r["key"] == key and r["version"] == version
    ]
    return found[0] if found else {}
