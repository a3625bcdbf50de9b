"""SLA clocks and escalation ladders, counted in business time.

A ladder says what happens as a case uses up its target: warn at 75%, breach at
100%, escalate at 150%. ``plan_sla`` turns a ladder into timers with due times on the
location's calendar when the case enters a state; the engine stores the first as a row,
with the later ones in it, and plans each next step as the one before fires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from careloop.domain.access import ROLE_NAMES, Role
from careloop.domain.calendar import BusinessCalendar, add_business_time, business_seconds_between
from careloop.domain.definition_checks import Collector, Path, check_keys
from careloop.domain.errors import DefinitionInvalid

ACTIONS = frozenset({"notify", "escalate", "reassign", "raise_priority"})
_STEP_KEYS = frozenset({"name", "fraction", "action", "notify_role"})
_STEP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")


@dataclass(frozen=True)
class EscalationStep:
    """At ``fraction`` of the target, do ``action``; ``notify_role`` None means the assignee."""

    name: str
    fraction: float
    action: str
    notify_role: str | None = None


@dataclass(frozen=True)
class EscalationLadder:
    steps: tuple[EscalationStep, ...]

    def __post_init__(self) -> None:
        problems = _ladder_problems(self.steps)
        if problems:
            raise ValueError(f"escalation ladder: {'; '.join(problems)}")


@dataclass(frozen=True)
class PlannedTimer:
    step: str
    due_at: datetime
    fraction: float
    action: str
    notify_role: str | None


@dataclass(frozen=True)
class SlaStatus:
    elapsed_business_seconds: float
    fraction: float
    due_at: datetime
    breached: bool


def _ladder_problems(steps: tuple[EscalationStep, ...]) -> list[str]:
    problems = []
    if not steps:
        problems.append("it needs at least one step")
    previous = 0.0
    names: set[str] = set()
    for step in steps:
        # A step's name keys its timer: two alike would share one timer.
        if step.name in names:
            problems.append(f"step {step.name!r}: the name is used by an earlier step")
        names.add(step.name)
        if not math.isfinite(step.fraction) or step.fraction <= previous:
            problems.append(f"step {step.name!r}: fraction {step.fraction} must exceed {previous}")
        if step.action not in ACTIONS:
            problems.append(f"step {step.name!r}: unknown action {step.action!r}")
        previous = step.fraction
    return problems


DEFAULT_LADDER = EscalationLadder(
    (
        EscalationStep("warn", 0.75, "notify", None),
        EscalationStep("breach", 1.0, "reassign", Role.REFERRAL_COORDINATOR.value),
        EscalationStep("escalate", 1.5, "escalate", Role.CLINIC_MANAGER.value),
    )
)


def plan_sla(
    calendar: BusinessCalendar,
    ladder: EscalationLadder,
    entered_at: datetime,
    target_seconds: int,
) -> list[PlannedTimer]:
    """One timer per ladder step, due after that fraction of the target in business time."""
    _check_target(target_seconds)
    return [
        PlannedTimer(
            step=step.name,
            due_at=add_business_time(calendar, entered_at, target_seconds * step.fraction),
            fraction=step.fraction,
            action=step.action,
            notify_role=step.notify_role,
        )
        for step in ladder.steps
    ]


def sla_status(
    calendar: BusinessCalendar, entered_at: datetime, target_seconds: int, now: datetime
) -> SlaStatus:
    """How much of the target a case has used by ``now``, for dashboards."""
    _check_target(target_seconds)
    # A clock that reads earlier than the entry (skew between machines) has used nothing.
    elapsed = max(0.0, business_seconds_between(calendar, entered_at, now))
    return SlaStatus(
        elapsed_business_seconds=elapsed,
        fraction=elapsed / target_seconds,
        due_at=add_business_time(calendar, entered_at, target_seconds),
        breached=elapsed >= target_seconds,
    )


def build_ladder(
    data: object, source: str, lines: Mapping[Path, int], *, at: Path = ()
) -> EscalationLadder:
    """Validate a YAML list of steps; ``at`` is where the list sits in its document."""
    out = Collector(source, lines)
    if not isinstance(data, list) or not data:
        out.add(at, "an escalation ladder must be a non-empty list of steps")
        raise DefinitionInvalid(out.problems)
    steps: list[EscalationStep] = []
    names: set[str] = set()
    previous: float | None = None
    for index, spec in enumerate(data):
        step, fraction = _build_step(out, (*at, index), spec, previous)
        if fraction is not None:
            previous = fraction if previous is None else max(previous, fraction)
        if step is None:
            continue
        if step.name in names:
            out.add((*at, index, "name"), f"duplicate step name {step.name!r}")
        names.add(step.name)
        steps.append(step)
    if out.problems:
        raise DefinitionInvalid(out.problems)
    return EscalationLadder(tuple(steps))


def _build_step(
    out: Collector, path: Path, spec: object, previous: float | None
) -> tuple[EscalationStep | None, float | None]:
    """The step (None when invalid) and its fraction, which the next step must exceed."""
    if not isinstance(spec, Mapping):
        out.add(path, "a step must be a mapping with name, fraction and action")
        return None, None
    before = len(out.problems)
    check_keys(out, path, spec, _STEP_KEYS, required=frozenset({"name", "fraction", "action"}))
    name = spec.get("name")
    if "name" in spec and (not isinstance(name, str) or not _STEP_NAME.match(name)):
        out.add((*path, "name"), f"step name {name!r} must be lower_snake_case")
    fraction = _as_fraction(spec.get("fraction"))
    if "fraction" in spec:
        problem = _fraction_problem(spec.get("fraction"), fraction, previous)
        if problem:
            out.add((*path, "fraction"), problem)
    action = spec.get("action")
    if "action" in spec and action not in ACTIONS:
        out.add((*path, "action"), f"unknown action {action!r}; use one of {sorted(ACTIONS)}")
    role = spec.get("notify_role")
    if role is not None and role not in ROLE_NAMES:
        out.add((*path, "notify_role"), f"unknown role {role!r}")
    if len(out.problems) > before or fraction is None:
        return None, fraction
    step = EscalationStep(str(name), fraction, str(action), None if role is None else str(role))
    return step, fraction


def _as_fraction(raw: object) -> float | None:
    """0.75 or '75%' -> 0.75; None for anything else."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and _PERCENT.match(raw.strip()):
        value = float(raw.strip().rstrip("%")) / 100
    else:
        return None
    return value if math.isfinite(value) else None


def _fraction_problem(raw: object, fraction: float | None, previous: float | None) -> str | None:
    if fraction is None:
        return f"fraction {raw!r} is not a number such as 0.75 or '75%'"
    if fraction <= 0:
        return f"fraction {raw!r} must be greater than 0"
    if previous is not None and fraction <= previous:
        return f"fraction {raw!r} must be greater than the previous step's {previous:g}"
    return None


def _check_target(target_seconds: int) -> None:
    if target_seconds <= 0:
        raise ValueError(f"an SLA target must be positive, got {target_seconds} seconds")
