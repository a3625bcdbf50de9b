"""Workflow definitions: states, transitions, guards and SLA targets, generic over case types.

A definition is data. ``build_workflow`` turns a parsed document into a validated
``Workflow`` or raises ``DefinitionInvalid`` listing every problem with its line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from careloop.domain.conditions import Condition

# FHIR R4 value sets the definition maps each state onto.
FHIR_TASK_STATUSES = frozenset(
    {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    }
)
FHIR_SERVICE_REQUEST_STATUSES = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
URGENCIES = ("routine", "urgent", "emergent")
# Who performs a transition: the change-governance report labels each step with it.
PERFORMERS = ("human", "automated", "ai_assisted")


@dataclass(frozen=True)
class FhirMapping:
    task_status: str
    business_status: str
    service_request_status: str


@dataclass(frozen=True)
class State:
    name: str
    label: str
    fhir: FhirMapping
    terminal: bool = False
    kind: str = "active"  # active | hold | exception | closed
    sla_seconds: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[str, ...]
    target: str
    roles: frozenset[str]
    guard: Condition | None = None
    required_fields: tuple[str, ...] = ()
    required_documents: tuple[str, ...] = ()
    reason_required: bool = False
    label: str = ""
    performed_by: str = "human"  # one of PERFORMERS


@dataclass(frozen=True)
class Workflow:
    key: str
    version: int
    case_type: str
    title: str
    initial: str
    states: Mapping[str, State]
    transitions: Mapping[str, Transition]
    source: str = ""

    def transitions_from(self, state: str) -> list[Transition]:
        return [t for t in self.transitions.values() if state in t.sources]

    def find_transition(self, name: str) -> Transition | None:
        return self.transitions.get(name)

    def sla_seconds(self, state: str, urgency: str) -> int | None:
        return self.states[state].sla_seconds.get(urgency)
