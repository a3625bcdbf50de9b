"""Validate a parsed approvals document and build an ``ApprovalPolicySet``.

Every reference is checked at load: transitions against the case type's workflow,
roles, case fields and durations against what exists. A definition with any problem
never loads, and each problem names the file and the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from careloop.domain.approval_policy import (
    REVIEWER_KINDS,
    ApprovalPolicy,
    ApprovalPolicySet,
    Group,
    Reviewer,
    Separation,
    Step,
)
from careloop.domain.conditions import Condition, ConditionCompiler, ConditionError
from careloop.domain.definition_checks import (
    Collector,
    Path,
    as_names,
    check_header,
    check_keys,
    check_name,
)
from careloop.domain.errors import DefinitionInvalid
from careloop.domain.workflow import Workflow
from careloop.domain.workflow_builder import CaseTypeSchema, parse_duration

_TOP_KEYS = frozenset({"key", "version", "case_type", "title", "policies"})
_POLICY_KEYS = frozenset({"key", "title", "applies_to", "when", "steps", "fallback", "segregation"})
_STEP_KEYS = frozenset(
    {
        "name",
        "reviewers",
        "parallel",
        "quorum",
        "remind_after",
        "escalate_after",
        "escalate_to",
        "fallback",
    }
)
_GROUP_KEYS = frozenset({"name", "reviewers", "quorum"})
_SEGREGATION_KEYS = frozenset({"requester_may_approve", "one_step_per_person"})
# Rule actions a policy may hold back until approved, with the recipients they name.
GUARDABLE_ACTIONS = {"notify": ("patient", "assignee", "supervisor")}
MAX_QUORUM = 20


@dataclass(frozen=True)
class ApprovalContext:
    """What an approvals definition for one case type may reference. Without a
    workflow, transition names are not checked (a stored version being reloaded)."""

    schema: CaseTypeSchema
    workflow: Workflow | None = None


def build_approvals(
    raw: object,
    *,
    source: str,
    lines: Mapping[Path, int],
    context: ApprovalContext,
    compile_condition: ConditionCompiler,
) -> ApprovalPolicySet:
    out = Collector(source, lines)
    if not isinstance(raw, Mapping):
        out.add((), "an approvals definition must be a mapping")
        raise DefinitionInvalid(out.problems)
    required = frozenset({"key", "version", "policies"})
    key, version = check_header(out, raw, _TOP_KEYS, required, context.schema.name)
    policies = _Builder(out, context, compile_condition).policies(raw.get("policies"))
    if out.problems:
        raise DefinitionInvalid(out.problems)
    return ApprovalPolicySet(
        key=key,
        version=version,
        case_type=context.schema.name,
        title=str(raw.get("title", key)),
        policies=tuple(policies),
        source=source,
    )


class _Builder:
    def __init__(
        self, out: Collector, context: ApprovalContext, compile_condition: ConditionCompiler
    ) -> None:
        self.out = out
        self.context = context
        self.compile_condition = compile_condition

    def policies(self, raw: object) -> list[ApprovalPolicy]:
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            self.out.add(("policies",), "policies must be a non-empty list")
            return []
        built: list[ApprovalPolicy] = []
        for position, spec in enumerate(raw):
            path: Path = ("policies", position)
            if not isinstance(spec, Mapping):
                self.out.add(path, "a policy must be a mapping")
                continue
            policy = self.policy(path, spec)
            if any(p.key == policy.key for p in built):
                self.out.add((*path, "key"), f"duplicate policy key {policy.key!r}")
            built.append(policy)
        return built

    def policy(self, path: Path, spec: Mapping[str, Any]) -> ApprovalPolicy:
        check_keys(self.out, path, spec, _POLICY_KEYS, frozenset({"key", "applies_to", "steps"}))
        key = str(spec.get("key", ""))
        check_name(self.out, (*path, "key"), key, "policy key")
        transitions, actions = self.applies_to((*path, "applies_to"), spec.get("applies_to"))
        return ApprovalPolicy(
            key=key,
            title=str(spec.get("title", key)),
            steps=self.steps((*path, "steps"), spec.get("steps")),
            transitions=transitions,
            actions=actions,
            condition=self.condition((*path, "when"), spec.get("when")),
            separation=self.segregation((*path, "segregation"), spec.get("segregation")),
            fallback=self.reviewers((*path, "fallback"), spec.get("fallback"), required=False),
        )

    def applies_to(self, path: Path, raw: object) -> tuple[frozenset[str], frozenset[str]]:
        if not isinstance(raw, Mapping):
            self.out.add(path, "applies_to must be a mapping with transitions and/or actions")
            return frozenset(), frozenset()
        check_keys(self.out, path, raw, frozenset({"transitions", "actions"}))
        transitions = frozenset(as_names(raw.get("transitions")))
        actions = frozenset(as_names(raw.get("actions")))
        if not transitions and not actions:
            self.out.add(path, "applies_to names no transition and no action")
        workflow = self.context.workflow
        if workflow is not None:
            for name in sorted(transitions - set(workflow.transitions)):
                self.out.add((*path, "transitions"), f"unknown transition {name!r}")
        for action in sorted(actions):
            kind, _, to = action.partition(":")
            recipients = GUARDABLE_ACTIONS.get(kind)
            if recipients is None:
                self.out.add(
                    (*path, "actions"),
                    f"action {action!r} cannot be guarded; use one of "
                    f"{sorted(GUARDABLE_ACTIONS)} (optionally ':<recipient>')",
                )
            elif to and to not in recipients:
                self.out.add((*path, "actions"), f"{kind} has no recipient {to!r}")
        return transitions, actions

    def condition(self, path: Path, raw: object) -> Condition | None:
        if raw is None:
            return None
        try:
            return self.compile_condition(str(raw), self.context.schema.fields)
        except ConditionError as error:
            self.out.add(path, f"invalid condition: {error}")
            return None

    def segregation(self, path: Path, raw: object) -> Separation:
        if raw is None:
            return Separation()
        if not isinstance(raw, Mapping):
            self.out.add(path, "segregation must be a mapping")
            return Separation()
        check_keys(self.out, path, raw, _SEGREGATION_KEYS)
        for name, value in raw.items():
            if not isinstance(value, bool):
                self.out.add((*path, name), f"{name} must be true or false")
        return Separation(
            requester_may_approve=raw.get("requester_may_approve") is True,
            one_step_per_person=raw.get("one_step_per_person", True) is not False,
        )

    def steps(self, path: Path, raw: object) -> tuple[Step, ...]:
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            self.out.add(path, "steps must be a non-empty list")
            return ()
        steps: list[Step] = []
        for index, spec in enumerate(raw):
            if not isinstance(spec, Mapping):
                self.out.add((*path, index), "a step must be a mapping")
                continue
            step = self.step((*path, index), spec, index)
            if any(s.name == step.name for s in steps):
                self.out.add((*path, index, "name"), f"duplicate step name {step.name!r}")
            steps.append(step)
        return tuple(steps)

    def step(self, path: Path, spec: Mapping[str, Any], index: int) -> Step:
        check_keys(self.out, path, spec, _STEP_KEYS)
        name = str(spec.get("name", f"step-{index + 1}"))
        if ("reviewers" in spec) == ("parallel" in spec):
            self.out.add(path, "a step needs exactly one of 'reviewers' or 'parallel'")
        if "parallel" in spec:
            if "quorum" in spec:
                self.out.add((*path, "quorum"), "a parallel step sets a quorum per group")
            groups = self.groups((*path, "parallel"), spec.get("parallel"))
        else:
            quorum = self.quorum((*path, "quorum"), spec.get("quorum", 1))
            reviewers = self.reviewers((*path, "reviewers"), spec.get("reviewers"))
            groups = (Group(name, reviewers, quorum),)
        remind = self.duration((*path, "remind_after"), spec.get("remind_after"))
        escalate = self.duration((*path, "escalate_after"), spec.get("escalate_after"))
        if remind is not None and escalate is not None and remind >= escalate:
            self.out.add((*path, "remind_after"), "remind_after must come before escalate_after")
        escalate_to = self.reviewers((*path, "escalate_to"), spec.get("escalate_to"), False)
        if escalate_to and escalate is None:
            self.out.add((*path, "escalate_to"), "escalate_to needs escalate_after")
        return Step(
            name=name,
            groups=groups,
            remind_after=remind,
            escalate_after=escalate,
            escalate_to=escalate_to,
            fallback=self.reviewers((*path, "fallback"), spec.get("fallback"), False),
        )

    def groups(self, path: Path, raw: object) -> tuple[Group, ...]:
        if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) < 2:
            self.out.add(path, "parallel must list at least two groups")
            return ()
        groups: list[Group] = []
        for index, spec in enumerate(raw):
            if not isinstance(spec, Mapping):
                self.out.add((*path, index), "a group must be a mapping with name and reviewers")
                continue
            check_keys(
                self.out, (*path, index), spec, _GROUP_KEYS, frozenset({"name", "reviewers"})
            )
            name = str(spec.get("name", ""))
            if any(g.name == name for g in groups):
                self.out.add((*path, index, "name"), f"duplicate group name {name!r}")
            groups.append(
                Group(
                    name,
                    self.reviewers((*path, index, "reviewers"), spec.get("reviewers")),
                    self.quorum((*path, index, "quorum"), spec.get("quorum", 1)),
                )
            )
        return tuple(groups)

    def quorum(self, path: Path, raw: object) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_QUORUM:
            self.out.add(path, f"quorum must be an integer from 1 to {MAX_QUORUM}")
            return 1
        return raw

    def duration(self, path: Path, raw: object) -> int | None:
        if raw is None:
            return None
        seconds = parse_duration(raw)
        if seconds is None or seconds <= 0:
            self.out.add(path, f"{raw!r} is not a duration like '30m', '2h' or '1d'")
        return seconds

    def reviewers(self, path: Path, raw: object, required: bool = True) -> tuple[Reviewer, ...]:
        if raw is None and not required:
            return ()
        items = [raw] if isinstance(raw, Mapping) else raw
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            self.out.add(path, "reviewers must be a non-empty list of {role|team|user|...: name}")
            return ()
        built = [self.reviewer((*path, i), spec) for i, spec in enumerate(items)]
        return tuple(r for r in built if r is not None)

    def reviewer(self, path: Path, spec: object) -> Reviewer | None:
        if not isinstance(spec, Mapping):
            self.out.add(path, f"a reviewer is a mapping with one of {list(REVIEWER_KINDS)}")
            return None
        check_keys(self.out, path, spec, frozenset({*REVIEWER_KINDS, "at"}))
        kinds = [k for k in REVIEWER_KINDS if k in spec]
        if len(kinds) != 1:
            self.out.add(path, f"a reviewer names exactly one of {list(REVIEWER_KINDS)}")
            return None
        kind, value, at = kinds[0], str(spec[kinds[0]]), str(spec.get("at", ""))
        schema = self.context.schema
        if kind == "role" and value not in schema.roles:
            self.out.add((*path, "role"), f"unknown role {value!r}")
        if kind == "user_field" and value not in schema.fields:
            self.out.add((*path, "user_field"), f"unknown field {value!r}")
        if kind == "manager_of" and value != "requester":
            self.out.add((*path, "manager_of"), "manager_of must be 'requester'")
        if at and kind != "role":
            self.out.add((*path, "at"), "'at' narrows a role reviewer to a location")
        elif at and at not in schema.fields:
            self.out.add((*path, "at"), f"unknown field {at!r}")
        return Reviewer(kind, value, at)
