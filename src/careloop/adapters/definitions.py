"""Load workflow definitions from YAML text or files into validated ``Workflow`` objects."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.yaml_source import parse_with_lines
from careloop.domain.referral import SCHEMA as REFERRAL_SCHEMA
from careloop.domain.workflow import Workflow
from careloop.domain.workflow_builder import CaseTypeSchema, build_workflow

CASE_TYPES: dict[str, CaseTypeSchema] = {REFERRAL_SCHEMA.name: REFERRAL_SCHEMA}


def load_workflow_text(text: str, source: str) -> Workflow:
    data, lines = parse_with_lines(text, source)
    case_type = data.get("case_type") if isinstance(data, dict) else None
    schema = CASE_TYPES.get(str(case_type), REFERRAL_SCHEMA)
    return build_workflow(
        data, source=source, lines=lines, schema=schema, compile_condition=compile_condition
    )


def load_workflow_file(path: Path) -> Workflow:
    return load_workflow_text(path.read_text(encoding="utf-8"), str(path))


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shipped_definitions(kind: str = "workflow") -> list[tuple[str, str]]:
    """(source name, text) of every shipped definition of ``kind``: 'workflow' (files
    without a top-level ``kind``) or an automation kind such as 'routing' or 'rules'."""
    folder = resources.files("careloop.definitions")
    found = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".yaml"):
            continue
        text = entry.read_text(encoding="utf-8")
        data, _ = parse_with_lines(text, entry.name)
        declared = data.get("kind", "workflow") if isinstance(data, dict) else "workflow"
        if declared == kind:
            found.append((f"careloop/definitions/{entry.name}", text))
    return sorted(found)
