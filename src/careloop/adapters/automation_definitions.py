"""Load automation definitions (calendars, routing tables, rule sets) from YAML text."""

from __future__ import annotations

from collections.abc import Mapping

from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.definitions import CASE_TYPES
from careloop.adapters.yaml_source import parse_with_lines
from careloop.domain.calendar import BusinessCalendar, build_calendars
from careloop.domain.errors import DefinitionInvalid, DefinitionProblem
from careloop.domain.referral import DATE_FIELDS, SETTABLE_FIELDS
from careloop.domain.routing import RoutingTable, build_routing_table
from careloop.domain.rules import RuleSet
from careloop.domain.rules_builder import RuleContext, build_ruleset
from careloop.domain.workflow import Workflow

KINDS = ("calendars", "routing", "rules")


def definition_kind(text: str, source: str) -> str:
    """'workflow' or one of KINDS, from the document's top-level ``kind`` key."""
    data, _ = parse_with_lines(text, source)
    kind = data.get("kind", "workflow") if isinstance(data, Mapping) else "workflow"
    return str(kind)


def load_calendars_text(text: str, source: str) -> dict[str, BusinessCalendar]:
    data, lines = parse_with_lines(text, source)
    if isinstance(data, Mapping):
        data = {k: v for k, v in data.items() if k not in ("kind", "key", "version")}
    return build_calendars(data, source, lines)


def load_routing_text(text: str, source: str) -> RoutingTable:
    data, lines = parse_with_lines(text, source)
    return build_routing_table(data, source=source, lines=lines)


def load_rules_text(
    text: str,
    source: str,
    workflow: Workflow,
    routing_tables: frozenset[str],
    integration_ports: frozenset[str],
) -> RuleSet:
    data, lines = parse_with_lines(text, source)
    body = {k: v for k, v in data.items() if k != "kind"} if isinstance(data, Mapping) else data
    case_type = str(data.get("case_type", "referral")) if isinstance(data, Mapping) else ""
    schema = CASE_TYPES.get(case_type)
    if schema is None:
        raise DefinitionInvalid(
            [DefinitionProblem(source, None, f"unknown case_type {case_type!r}")]
        )
    context = RuleContext(
        schema=schema,
        workflow=workflow,
        settable_fields=SETTABLE_FIELDS,
        date_fields=DATE_FIELDS,
        routing_tables=routing_tables,
        integration_ports=integration_ports,
    )
    return build_ruleset(
        body, source=source, lines=lines, context=context, compile_condition=compile_condition
    )


def header(text: str, source: str) -> tuple[str, int, str]:
    """(key, version, case_type) of a definition, for storing it; calendars have one
    key per file, 'calendars'."""
    data, lines = parse_with_lines(text, source)
    if not isinstance(data, Mapping):
        raise DefinitionInvalid([DefinitionProblem(source, None, "a definition must be a mapping")])
    key = str(data.get("key", "calendars" if data.get("kind") == "calendars" else ""))
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DefinitionInvalid(
            [
                DefinitionProblem(
                    source, lines.get(("version",)), "version must be a positive integer"
                )
            ]
        )
    return key, version, str(data.get("case_type", "referral"))
