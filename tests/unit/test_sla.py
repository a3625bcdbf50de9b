"""SLA clocks run in business time and escalate step by step up a ladder."""

from datetime import UTC, date, datetime

import pytest

from careloop.adapters.yaml_source import parse_with_lines
from careloop.domain.access import ROLE_NAMES
from careloop.domain.calendar import WEEKDAYS, BusinessCalendar
from careloop.domain.errors import DefinitionInvalid
from careloop.domain.sla import (
    DEFAULT_LADDER,
    EscalationLadder,
    EscalationStep,
    PlannedTimer,
    SlaStatus,
    build_ladder,
    plan_sla,
    sla_status,
)

HOUR = 3600
NEW_YORK = BusinessCalendar.from_text(
    "new-york",
    "America/New_York",
    {day: ["08:00-17:00"] for day in WEEKDAYS[:5]},
    [date(2026, 12, 25)],
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_default_ladder_warns_at_75_breaches_at_100_and_escalates_at_150_percent() -> None:
    assert DEFAULT_LADDER.steps == (
        EscalationStep("warn", 0.75, "notify", None),
        EscalationStep("breach", 1.0, "reassign", "referral_coordinator"),
        EscalationStep("escalate", 1.5, "escalate", "clinic_manager"),
    )
    assert {s.notify_role for s in DEFAULT_LADDER.steps} - {None} <= ROLE_NAMES


def test_ladder_due_times_fall_in_business_hours_and_run_into_the_next_day() -> None:
    monday_9am = utc(2026, 3, 16, 13)
    timers = plan_sla(NEW_YORK, DEFAULT_LADDER, monday_9am, 8 * HOUR)
    assert timers == [
        PlannedTimer("warn", utc(2026, 3, 16, 19), 0.75, "notify", None),  # Mon 15:00
        PlannedTimer("breach", utc(2026, 3, 16, 21), 1.0, "reassign", "referral_coordinator"),
        PlannedTimer("escalate", utc(2026, 3, 17, 16), 1.5, "escalate", "clinic_manager"),
    ]


def test_ladder_due_times_skip_a_holiday_and_the_weekend() -> None:
    christmas_eve_3pm = utc(2026, 12, 24, 20)  # Thursday 15:00 EST, two hours before close
    due = [t.due_at for t in plan_sla(NEW_YORK, DEFAULT_LADDER, christmas_eve_3pm, 4 * HOUR)]
    # Monday the 28th at 09:00, 10:00 and 12:00 EST.
    assert due == [utc(2026, 12, 28, 14), utc(2026, 12, 28, 15), utc(2026, 12, 28, 17)]


def test_sla_status_reports_the_share_of_the_target_used_so_far() -> None:
    monday_9am = utc(2026, 3, 16, 13)
    status = sla_status(NEW_YORK, monday_9am, 8 * HOUR, now=utc(2026, 3, 16, 17))  # 13:00
    assert status == SlaStatus(
        elapsed_business_seconds=4 * HOUR,
        fraction=0.5,
        due_at=utc(2026, 3, 16, 21),
        breached=False,
    )


def test_sla_is_breached_from_the_due_time_and_the_clock_stops_overnight() -> None:
    monday_9am = utc(2026, 3, 16, 13)
    at_close = sla_status(NEW_YORK, monday_9am, 8 * HOUR, now=utc(2026, 3, 16, 21))
    next_morning = sla_status(NEW_YORK, monday_9am, 8 * HOUR, now=utc(2026, 3, 17, 11))
    assert at_close.breached and at_close.fraction == 1.0
    assert next_morning.elapsed_business_seconds == 8 * HOUR  # 07:00 Tuesday, still closed


def test_sla_status_reads_a_clock_behind_the_entry_as_nothing_used() -> None:
    entered = utc(2026, 3, 16, 13)
    status = sla_status(NEW_YORK, entered, HOUR, now=utc(2026, 3, 16, 12))
    assert (status.elapsed_business_seconds, status.breached) == (0.0, False)


def test_sla_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        plan_sla(NEW_YORK, DEFAULT_LADDER, utc(2026, 3, 16, 13), 0)


def test_ladder_built_in_code_must_rise_step_by_step() -> None:
    with pytest.raises(ValueError, match=r"fraction 0\.5 must exceed 0\.75"):
        EscalationLadder(
            (EscalationStep("warn", 0.75, "notify"), EscalationStep("late", 0.5, "notify"))
        )


def test_ladder_built_in_code_must_not_repeat_a_step_name() -> None:
    with pytest.raises(ValueError, match="'warn': the name is used by an earlier step"):
        EscalationLadder(
            (EscalationStep("warn", 0.75, "notify"), EscalationStep("warn", 1.0, "reassign"))
        )


def _build(text: str, at: tuple[str | int, ...] = ()) -> EscalationLadder:
    data, lines = parse_with_lines(text, "ladder.yaml")
    for key in at:
        data = data[key]
    return build_ladder(data, "ladder.yaml", lines, at=at)


def test_ladder_builds_from_a_definition_with_fractions_or_percentages() -> None:
    ladder = _build(
        """\
escalation:
  - {name: warn, fraction: "75%", action: notify}
  - {name: breach, fraction: 1.0, action: reassign, notify_role: referral_coordinator}
  - {name: escalate, fraction: 1.5, action: escalate, notify_role: clinic_manager}
""",
        at=("escalation",),
    )
    assert ladder == DEFAULT_LADDER


def test_every_ladder_problem_is_reported_with_its_line() -> None:
    text = """\
- name: warn
  fraction: 0.75
  action: notify
- name: breach
  fraction: 0.5
  action: page
- name: late
  fraction: 0
  action: escalate
  notify_role: ceo
  when: later
- name: warn
  fraction: 2
  action: raise_priority
- fraction: lots
"""
    with pytest.raises(DefinitionInvalid) as caught:
        _build(text)
    assert [str(p) for p in caught.value.problems] == [
        "ladder.yaml:5: fraction 0.5 must be greater than the previous step's 0.75",
        "ladder.yaml:6: unknown action 'page'; use one of "
        "['escalate', 'notify', 'raise_priority', 'reassign']",
        "ladder.yaml:11: unknown key 'when'",
        "ladder.yaml:8: fraction 0 must be greater than 0",
        "ladder.yaml:10: unknown role 'ceo'",
        "ladder.yaml:12: duplicate step name 'warn'",
        "ladder.yaml:15: missing required key 'action'",
        "ladder.yaml:15: missing required key 'name'",
        "ladder.yaml:15: fraction 'lots' is not a number such as 0.75 or '75%'",
    ]


def test_ladder_must_be_a_non_empty_list() -> None:
    with pytest.raises(DefinitionInvalid) as caught:
        _build("escalation: {warn: 0.75}\n", at=("escalation",))
    assert [str(p) for p in caught.value.problems] == [
        "ladder.yaml:1: an escalation ladder must be a non-empty list of steps"
    ]
