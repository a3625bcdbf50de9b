"""Validate a parsed workflow document and build a ``Workflow``.

Every problem found is collected (not only the first) and reported with the file and
line it comes from, so an author can fix a definition in one pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from careloop.domain.conditions import Condition, ConditionCompiler, ConditionError
from careloop.domain.definition_checks import (
    Collector,
    Path,
    as_names,
    check_keys,
    check_version,
)
from careloop.domain.errors import DefinitionInvalid
from careloop.domain.workflow import (
    FHIR_SERVICE_REQUEST_STATUSES,
    FHIR_TASK_STATUSES,
    PERFORMERS,
    URGENCIES,
    FhirMapping,
    State,
    Transition,
    Workflow,
)

_DURATION = re.compile(r"^(\d+)\s*([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_STATE_KINDS = frozenset({"active", "hold", "exception", "closed"})
_TOP_KEYS = frozenset({"key", "version", "case_type", "title", "initial", "states", "transitions"})
_STATE_KEYS = frozenset({"label", "fhir", "terminal", "kind", "sla"})
_TRANSITION_KEYS = frozenset(
    {
        "name",
        "from",
        "to",
        "roles",
        "guard",
        "requires_fields",
        "requires_documents",
        "reason_required",
        "label",
        "performed_by",
    }
)


@dataclass(frozen=True)
class CaseTypeSchema:
    """What a definition may reference for one case type."""

    name: str
    fields: Mapping[str, str]  # dotted path -> CEL type name
    document_types: frozenset[str]
    roles: frozenset[str]


def parse_duration(text: object) -> int | None:
    """'30m', '4h', '2d' -> seconds; None when the text is not a duration."""
    match = _DURATION.match(str(text).strip())
    if not match:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def build_workflow(
    raw: object,
    *,
    source: str,
    lines: Mapping[Path, int],
    schema: CaseTypeSchema,
    compile_condition: ConditionCompiler,
) -> Workflow:
    out = Collector(source, lines)
    if not isinstance(raw, Mapping):
        out.add((), "a workflow definition must be a mapping")
        raise DefinitionInvalid(out.problems)
    check_keys(out, (), raw, _TOP_KEYS, required=_TOP_KEYS - {"title"})
    key = str(raw.get("key", ""))
    version = check_version(out, raw)
    if raw.get("case_type") not in (None, schema.name):
        out.add(("case_type",), f"case_type {raw.get('case_type')!r} is not {schema.name!r}")
    states = _build_states(out, raw.get("states"))
    transitions = _build_transitions(out, raw.get("transitions"), states, schema, compile_condition)
    initial = str(raw.get("initial", ""))
    if initial not in states:
        out.add(("initial",), f"initial state {initial!r} is not a defined state")
    elif not out.problems:
        _check_graph(out, initial, states, transitions)
    if out.problems:
        raise DefinitionInvalid(out.problems)
    return Workflow(
        key=key,
        version=version,
        case_type=schema.name,
        title=str(raw.get("title", key)),
        initial=initial,
        states=states,
        transitions=transitions,
        source=source,
    )


def _build_states(out: Collector, raw: object) -> dict[str, State]:
    if not isinstance(raw, Mapping) or not raw:
        out.add(("states",), "states must be a non-empty mapping")
        return {}
    states: dict[str, State] = {}
    for name, spec in raw.items():
        path: Path = ("states", name)
        if not _NAME.match(str(name)):
            out.add(path, f"state name {name!r} must be lower_snake_case")
        if not isinstance(spec, Mapping):
            out.add(path, f"state {name!r} must be a mapping")
            continue
        check_keys(out, path, spec, _STATE_KEYS, required=frozenset({"fhir"}))
        kind = str(spec.get("kind", "active"))
        if kind not in _STATE_KINDS:
            out.add((*path, "kind"), f"kind {kind!r} is not one of {sorted(_STATE_KINDS)}")
        states[str(name)] = State(
            name=str(name),
            label=str(spec.get("label", name)),
            fhir=_build_fhir(out, (*path, "fhir"), spec.get("fhir")),
            terminal=bool(spec.get("terminal", False)),
            kind=kind,
            sla_seconds=_build_sla(out, (*path, "sla"), spec.get("sla")),
        )
    return states


def _build_fhir(out: Collector, path: Path, raw: object) -> FhirMapping:
    if not isinstance(raw, Mapping):
        out.add(path, "fhir must map task_status, business_status and service_request_status")
        return FhirMapping("", "", "")
    task_status = str(raw.get("task_status", ""))
    request_status = str(raw.get("service_request_status", ""))
    if task_status not in FHIR_TASK_STATUSES:
        out.add((*path, "task_status"), f"{task_status!r} is not a FHIR Task.status code")
    if request_status not in FHIR_SERVICE_REQUEST_STATUSES:
        out.add(
            (*path, "service_request_status"),
            f"{request_status!r} is not a FHIR ServiceRequest.status code",
        )
    business = str(raw.get("business_status", ""))
    if not business:
        out.add((*path, "business_status"), "business_status is required")
    return FhirMapping(task_status, business, request_status)


def _build_sla(out: Collector, path: Path, raw: object) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        out.add(path, "sla must map urgencies to durations such as '4h'")
        return {}
    sla: dict[str, int] = {}
    for urgency, text in raw.items():
        if urgency not in URGENCIES:
            out.add((*path, urgency), f"unknown urgency {urgency!r}; use one of {URGENCIES}")
            continue
        seconds = parse_duration(text)
        if seconds is None or seconds <= 0:
            out.add((*path, urgency), f"{text!r} is not a duration like '30m', '4h' or '2d'")
            continue
        sla[str(urgency)] = seconds
    return sla


def _build_transitions(
    out: Collector,
    raw: object,
    states: Mapping[str, State],
    schema: CaseTypeSchema,
    compile_condition: ConditionCompiler,
) -> dict[str, Transition]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        out.add(("transitions",), "transitions must be a list")
        return {}
    transitions: dict[str, Transition] = {}
    for index, spec in enumerate(raw):
        path: Path = ("transitions", index)
        if not isinstance(spec, Mapping):
            out.add(path, "a transition must be a mapping")
            continue
        check_keys(out, path, spec, _TRANSITION_KEYS, frozenset({"name", "from", "to", "roles"}))
        name = str(spec.get("name", ""))
        if name in transitions:
            out.add((*path, "name"), f"duplicate transition name {name!r}")
        sources = as_names(spec.get("from"))
        for source_state in sources:
            if source_state not in states:
                out.add((*path, "from"), f"unknown state {source_state!r} in 'from'")
        target = str(spec.get("to", ""))
        if target not in states:
            out.add((*path, "to"), f"unknown state {target!r} in 'to'")
        roles = frozenset(as_names(spec.get("roles")))
        for role in sorted(roles - schema.roles):
            out.add((*path, "roles"), f"unknown role {role!r}")
        fields = tuple(as_names(spec.get("requires_fields")))
        for field_path in fields:
            if field_path not in schema.fields:
                out.add((*path, "requires_fields"), f"unknown field {field_path!r}")
        documents = tuple(as_names(spec.get("requires_documents")))
        for doc_type in documents:
            if doc_type not in schema.document_types:
                out.add((*path, "requires_documents"), f"unknown document type {doc_type!r}")
        transitions[name] = Transition(
            name=name,
            sources=tuple(sources),
            target=target,
            roles=roles,
            guard=_compile_guard(
                out, (*path, "guard"), spec.get("guard"), schema, compile_condition
            ),
            required_fields=fields,
            required_documents=documents,
            reason_required=bool(spec.get("reason_required", False)),
            label=str(spec.get("label", name)),
            performed_by=_performer(out, (*path, "performed_by"), spec.get("performed_by")),
        )
    return transitions


def _performer(out: Collector, path: Path, raw: object) -> str:
    if raw is None:
        return "human"
    if raw not in PERFORMERS:
        out.add(path, f"performed_by {raw!r} is not one of {list(PERFORMERS)}")
        return "human"
    return str(raw)


def _compile_guard(
    out: Collector,
    path: Path,
    expression: object,
    schema: CaseTypeSchema,
    compile_condition: ConditionCompiler,
) -> Condition | None:
    if expression is None:
        return None
    try:
        return compile_condition(str(expression), schema.fields)
    except ConditionError as error:
        out.add(path, f"invalid guard: {error}")
        return None


def _check_graph(
    out: Collector,
    initial: str,
    states: Mapping[str, State],
    transitions: Mapping[str, Transition],
) -> None:
    reachable = {initial}
    frontier = [initial]
    while frontier:
        current = frontier.pop()
        for transition in transitions.values():
            if current in transition.sources and transition.target not in reachable:
                reachable.add(transition.target)
                frontier.append(transition.target)
    for name, state in states.items():
        if name not in reachable:
            out.add(("states", name), f"state {name!r} is unreachable from {initial!r}")
        has_exit = any(name in t.sources for t in transitions.values())
        if not state.terminal and not has_exit:
            out.add(
                ("states", name), f"state {name!r} is a dead end: not terminal, no transitions out"
            )
