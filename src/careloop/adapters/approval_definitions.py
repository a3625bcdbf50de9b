"""Load approvals definitions (``kind: approvals``) from YAML text."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from careloop.adapters.cel_conditions import compile_condition
from careloop.adapters.definitions import CASE_TYPES
from careloop.adapters.yaml_source import parse_with_lines
from careloop.domain.approval_builder import ApprovalContext, build_approvals
from careloop.domain.approval_policy import (
    ApprovalPolicySet,
)
from careloop.domain.errors import DefinitionInvalid, DefinitionProblem
from careloop.domain.workflow import Workflow


def load_approvals_text(text: str, source: str, workflow: Workflow | None) -> ApprovalPolicySet:
    """Parse and validate; ``workflow`` None skips the transition-name check (used when
    reloading a version that was validated when it was stored)."""
    if workflow is None:
        return _load_stored(text, source)
    return _load(text, source, workflow)


@functools.lru_cache(maxsize=64)
def _load_stored(text: str, source: str) -> ApprovalPolicySet:
    """A stored version, compiled once per process: the automation registry and the
    approval store (a transition's gate) both load every active one, and each compile
    parses YAML and CEL. The result is frozen, so both may hold the same one."""
    return _load(text, source, None)


def _load(text: str, source: str, workflow: Workflow | None) -> ApprovalPolicySet:
    data, lines = parse_with_lines(text, source)
    body = {k: v for k, v in data.items() if k != "kind"} if isinstance(data, Mapping) else data
    case_type = str(data.get("case_type", "referral")) if isinstance(data, Mapping) else ""
    schema = CASE_TYPES.get(case_type)
    if schema is None:
        raise DefinitionInvalid(
            [
                DefinitionProblem(
                    source, lines.get(("case_type",)), f"unknown case_type {case_type!r}"
                )
            ]
        )
    return build_approvals(
        body,
        source=source,
        lines=lines,
        context=ApprovalContext(schema=schema, workflow=workflow),
        compile_condition=compile_condition,
    )
