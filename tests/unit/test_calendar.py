"""Business calendars count only open time, per location, across weekends, holidays and DST."""

from datetime import UTC, date, datetime, timedelta
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careloop.adapters.yaml_source import parse_with_lines
from careloop.domain.calendar import (
    ALWAYS_OPEN,
    WEEKDAYS,
    BusinessCalendar,
    OpenInterval,
    add_business_days,
    add_business_time,
    build_calendars,
    business_seconds_between,
    is_open,
)
from careloop.domain.errors import DefinitionInvalid

HOUR = 3600
WEEKDAYS_9_TO_5 = {day: ["08:00-17:00"] for day in WEEKDAYS[:5]}
NEW_YORK = BusinessCalendar.from_text(
    "new-york", "America/New_York", WEEKDAYS_9_TO_5, [date(2026, 12, 25), date(2027, 1, 1)]
)
WITH_LUNCH = BusinessCalendar.from_text(
    "with-lunch",
    "America/New_York",
    {day: ["08:00-12:00", "13:00-17:00"] for day in WEEKDAYS[:5]} | {"sat": ["09:00-12:00"]},
)
CHICAGO = BusinessCalendar.from_text("chicago", "America/Chicago", WEEKDAYS_9_TO_5)
NEW_YORK_24X7 = BusinessCalendar.from_text(
    "ny-24x7", "America/New_York", {day: ["00:00-24:00"] for day in WEEKDAYS}
)
# 02:30 does not exist on 2026-03-08 in New York: clocks jump from 02:00 to 03:00.
HOURS_IN_THE_SKIPPED_HOUR = BusinessCalendar.from_text(
    "night-shift", "America/New_York", {"sun": ["02:30-05:00"]} | WEEKDAYS_9_TO_5
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- add_business_time ---------------------------------------------------------------


def test_time_left_at_friday_close_resumes_monday_morning() -> None:
    friday_4pm = utc(2026, 3, 13, 20)  # 16:00 EDT
    assert add_business_time(NEW_YORK, friday_4pm, 2 * HOUR) == utc(2026, 3, 16, 13)  # Mon 09:00


def test_holiday_is_skipped_like_a_weekend() -> None:
    christmas_eve_4pm = utc(2026, 12, 24, 21)  # Thursday 16:00 EST; Friday is Christmas
    assert add_business_time(NEW_YORK, christmas_eve_4pm, 2 * HOUR) == utc(2026, 12, 28, 14)


def test_lunch_break_is_not_counted() -> None:
    monday_11am = utc(2026, 6, 1, 15)  # 11:00 EDT
    assert add_business_time(WITH_LUNCH, monday_11am, 2 * HOUR) == utc(2026, 6, 1, 18)  # 14:00
    assert business_seconds_between(WITH_LUNCH, monday_11am, utc(2026, 6, 1, 18)) == 2 * HOUR


def test_saturday_morning_hours_count_on_a_calendar_that_has_them() -> None:
    friday_4pm = utc(2026, 6, 5, 20)
    # Friday 16:00-17:00, then Saturday 09:00-12:00: two hours lands at Saturday 10:00.
    assert add_business_time(WITH_LUNCH, friday_4pm, 2 * HOUR) == utc(2026, 6, 6, 14)


def test_start_before_opening_counts_from_opening() -> None:
    monday_6am = utc(2026, 6, 1, 10)  # 06:00 EDT
    assert add_business_time(NEW_YORK, monday_6am, HOUR) == utc(2026, 6, 1, 13)  # 09:00


def test_start_after_closing_counts_from_next_opening() -> None:
    monday_7pm = utc(2026, 6, 1, 23)  # 19:00 EDT
    assert add_business_time(NEW_YORK, monday_7pm, 30 * 60) == utc(2026, 6, 2, 12, 30)


def test_duration_that_ends_at_closing_time_returns_closing_time_not_next_opening() -> None:
    monday_8am = utc(2026, 6, 1, 12)
    assert add_business_time(NEW_YORK, monday_8am, 9 * HOUR) == utc(2026, 6, 1, 21)  # 17:00


def test_the_other_location_counts_in_its_own_time_zone() -> None:
    monday_8am_eastern = utc(2026, 6, 1, 12)  # 07:00 in Chicago: not open yet
    assert add_business_time(CHICAGO, monday_8am_eastern, HOUR) == utc(2026, 6, 1, 14)


def test_spring_forward_weekend_keeps_local_opening_time() -> None:
    friday_4pm_est = utc(2026, 3, 6, 21)
    # Monday opens at 08:00 EDT, which is 12:00 UTC after the change, not 13:00.
    assert add_business_time(NEW_YORK, friday_4pm_est, 2 * HOUR) == utc(2026, 3, 9, 13)


def test_fall_back_weekend_keeps_local_opening_time() -> None:
    friday_4pm_edt = utc(2026, 10, 30, 20)
    assert add_business_time(NEW_YORK, friday_4pm_edt, 2 * HOUR) == utc(2026, 11, 2, 14)


def test_dst_days_are_as_long_as_they_really_are() -> None:
    march_8 = business_seconds_between(NEW_YORK_24X7, utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    november_1 = business_seconds_between(NEW_YORK_24X7, utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert (march_8, november_1) == (23 * HOUR, 25 * HOUR)
    assert add_business_time(NEW_YORK_24X7, utc(2026, 3, 8, 5), 24 * HOUR) == utc(2026, 3, 9, 5)


def test_hours_inside_the_skipped_hour_open_when_the_clocks_jump() -> None:
    sunday = (utc(2026, 3, 8, 0), utc(2026, 3, 8, 12))
    assert business_seconds_between(HOURS_IN_THE_SKIPPED_HOUR, *sunday) == 2 * HOUR
    assert add_business_time(HOURS_IN_THE_SKIPPED_HOUR, sunday[0], 60) == utc(2026, 3, 8, 7, 1)
    assert not is_open(HOURS_IN_THE_SKIPPED_HOUR, utc(2026, 3, 8, 6, 59))
    assert is_open(HOURS_IN_THE_SKIPPED_HOUR, utc(2026, 3, 8, 7))  # 03:00 EDT


def test_negative_time_goes_back_over_the_weekend() -> None:
    monday_9am = utc(2026, 3, 16, 13)
    assert add_business_time(NEW_YORK, monday_9am, -2 * HOUR) == utc(2026, 3, 13, 20)  # Fri 16:00


def test_negative_time_goes_back_over_a_dst_change_and_a_lunch_break() -> None:
    monday_9am_edt = utc(2026, 3, 9, 13)
    assert add_business_time(NEW_YORK, monday_9am_edt, -2 * HOUR) == utc(2026, 3, 6, 21)
    monday_2pm = utc(2026, 6, 1, 18)
    assert add_business_time(WITH_LUNCH, monday_2pm, -2 * HOUR) == utc(2026, 6, 1, 15)  # 11:00


def test_zero_time_returns_the_start_in_utc() -> None:
    start = datetime(2026, 6, 6, 12, tzinfo=NEW_YORK.zone)  # Saturday: closed
    assert add_business_time(NEW_YORK, start, 0) == utc(2026, 6, 6, 16)


def test_five_hundred_hours_walks_weeks_at_a_time() -> None:
    monday_8am_est = utc(2026, 1, 5, 13)
    # 500 h = 55 nine-hour days (11 whole weeks) + 5 h; the change to EDT is on the way.
    due = add_business_time(NEW_YORK, monday_8am_est, 500 * HOUR)
    assert due == utc(2026, 3, 23, 17)  # Monday 13:00 EDT
    assert business_seconds_between(NEW_YORK, monday_8am_est, due) == 500 * HOUR


def test_a_year_of_always_open_time_is_a_year() -> None:
    start = utc(2026, 3, 8, 0)
    assert add_business_time(ALWAYS_OPEN, start, 365 * 24 * HOUR) == utc(2027, 3, 8, 0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_business_time(NEW_YORK, datetime(2026, 6, 1, 9), HOUR)


# --- business_seconds_between and is_open ----------------------------------------------


def test_business_seconds_between_is_negative_when_end_precedes_start() -> None:
    monday_9am, monday_noon = utc(2026, 6, 1, 13), utc(2026, 6, 1, 16)
    assert business_seconds_between(NEW_YORK, monday_noon, monday_9am) == -3 * HOUR


def test_open_hours_include_the_opening_minute_and_exclude_the_closing_one() -> None:
    assert is_open(NEW_YORK, utc(2026, 6, 1, 12))  # 08:00 EDT
    assert not is_open(NEW_YORK, utc(2026, 6, 1, 21))  # 17:00 EDT
    assert not is_open(WITH_LUNCH, utc(2026, 6, 1, 16, 30))  # lunch
    assert not is_open(NEW_YORK, utc(2026, 12, 25, 15))  # Christmas, 10:00 EST
    assert not is_open(NEW_YORK, utc(2026, 6, 6, 15))  # Saturday
    assert is_open(ALWAYS_OPEN, utc(2026, 12, 25, 0))


# --- add_business_days --------------------------------------------------------------


def test_next_business_day_after_friday_is_monday_at_the_same_local_time() -> None:
    friday_10am = utc(2026, 3, 13, 14)
    assert add_business_days(NEW_YORK, friday_10am, 1) == utc(2026, 3, 16, 14)


def test_business_days_keep_local_time_across_dst() -> None:
    friday_10am_est = utc(2026, 3, 6, 15)
    assert add_business_days(NEW_YORK, friday_10am_est, 1) == utc(2026, 3, 9, 14)  # 10:00 EDT


def test_two_business_days_before_a_date_skip_a_holiday() -> None:
    monday_10am = utc(2026, 12, 28, 15)  # Friday the 25th is Christmas
    assert add_business_days(NEW_YORK, monday_10am, -2) == utc(2026, 12, 23, 15)


def test_business_days_from_a_weekend_count_from_the_next_business_day() -> None:
    saturday_10am = utc(2026, 3, 14, 14)
    assert add_business_days(NEW_YORK, saturday_10am, 1) == utc(2026, 3, 16, 14)
    assert add_business_days(NEW_YORK, saturday_10am, -1) == utc(2026, 3, 13, 14)
    assert add_business_days(NEW_YORK, saturday_10am, 0) == saturday_10am


# --- construction ---------------------------------------------------------------------


def test_calendar_without_open_hours_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="no open hours"):
        BusinessCalendar.from_text("closed", "UTC", {"sat": []})


def test_calendar_with_unknown_time_zone_or_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        BusinessCalendar.from_text("mars", "Mars/Base", WEEKDAYS_9_TO_5)
    overlapping = (OpenInterval(480, 720), OpenInterval(700, 1020))
    with pytest.raises(ValueError, match="overlaps"):
        BusinessCalendar("x", "UTC", (overlapping, (), (), (), (), (), ()))


def test_interval_text_parses_to_minutes_and_24_00_is_a_valid_end() -> None:
    assert OpenInterval.parse("08:30-24:00") == OpenInterval(510, 1440)
    assert str(OpenInterval(510, 1440)) == "08:30-24:00"


# --- building from a definition ----------------------------------------------------------


def _build(text: str) -> dict[str, BusinessCalendar]:
    data, lines = parse_with_lines(text, "calendars.yaml")
    return build_calendars(data, "calendars.yaml", lines)


def _problems(text: str) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        _build(text)
    return [str(problem) for problem in caught.value.problems]


def test_calendars_build_from_a_definition_with_split_days_and_holidays() -> None:
    calendars = _build(
        """\
calendars:
  clinic:
    timezone: America/Chicago
    hours:
      mon: ["13:00-17:00", "08:00-12:00"]
      sat: "09:00-12:00"
      sun:
    holidays: [2026-12-25, "2027-01-01"]
"""
    )
    clinic = calendars["clinic"]
    assert clinic.timezone == "America/Chicago"
    assert clinic.weekly_hours[0] == (OpenInterval(480, 720), OpenInterval(780, 1020))
    assert clinic.weekly_hours[5] == (OpenInterval(540, 720),)
    assert clinic.weekly_hours[6] == ()
    assert clinic.holidays == frozenset({date(2026, 12, 25), date(2027, 1, 1)})


def test_every_calendar_problem_is_reported_with_its_line() -> None:
    problems = _problems(
        """\
calendars:
  broken:
    timezone: Mars/Olympus_Mons
    hours:
      mon: ["8am-5pm"]
      tue: ["17:00-08:00"]
      wed: ["08:00-12:00", "11:00-17:00"]
      funday: ["08:00-17:00"]
    holidays: ["2026-02-30", Christmas, 2026-12-25 10:00:00]
    colour: blue
  closed-forever:
    timezone: UTC
    hours: {}
"""
    )
    expected = [
        ("calendars.yaml:3:", "unknown time zone 'Mars/Olympus_Mons'"),
        ("calendars.yaml:5:", "'8am-5pm' is not an interval"),
        ("calendars.yaml:6:", "'17:00-08:00' ends before it starts"),
        ("calendars.yaml:7:", "interval 11:00-17:00 overlaps 08:00-12:00"),
        ("calendars.yaml:8:", "unknown weekday 'funday'"),
        ("calendars.yaml:9:", "holiday '2026-02-30' is not a date"),
        ("calendars.yaml:9:", "holiday 'Christmas' is not a date"),
        ("calendars.yaml:9:", "holiday datetime.datetime(2026, 12, 25, 10, 0) is not a date"),
        ("calendars.yaml:10:", "unknown key 'colour'"),
        ("calendars.yaml:13:", "calendar 'closed-forever' has no open hours"),
    ]
    for prefix, fragment in expected:
        assert any(p.startswith(prefix) and fragment in p for p in problems), (fragment, problems)
    assert len(problems) == len(expected)


def test_calendars_document_must_have_a_calendars_mapping() -> None:
    assert _problems("zones: {}\n") == [
        "calendars.yaml:1: unknown key 'zones'",
        "calendars.yaml:1: missing required key 'calendars'",
    ]
    assert _problems("calendars: []\n") == [
        "calendars.yaml:1: calendars must be a non-empty mapping of name to calendar"
    ]


_SHIPPED = resources.files("careloop.definitions") / "calendars.yaml"


def test_shipped_calendars_cover_every_demo_clinic() -> None:
    from careloop.adapters.automation_definitions import load_calendars_text
    from careloop.demo import CLINICS

    calendars = load_calendars_text(_SHIPPED.read_text(encoding="utf-8"), "calendars.yaml")
    assert set(calendars) == {"default", *CLINICS}
    default = calendars["default"]
    assert default.timezone == "America/New_York"
    assert date(2026, 11, 26) in default.holidays  # Thanksgiving
    assert date(2027, 7, 5) in default.holidays  # Independence Day, observed
    assert any(calendar.weekly_hours[5] for calendar in calendars.values())  # a Saturday
    assert len({calendar.timezone for calendar in calendars.values()}) > 1


# --- properties -----------------------------------------------------------------------

_CALENDARS = st.sampled_from([NEW_YORK, WITH_LUNCH, CHICAGO, HOURS_IN_THE_SKIPPED_HOUR])
_STARTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
_DURATIONS = st.floats(min_value=1e-3, max_value=600 * HOUR, allow_nan=False)
_ONE_MICROSECOND = timedelta(microseconds=1)


@settings(max_examples=300, deadline=None)
@given(calendar=_CALENDARS, start=_STARTS, seconds=_DURATIONS)
def test_adding_business_time_then_measuring_it_gives_it_back(
    calendar: BusinessCalendar, start: datetime, seconds: float
) -> None:
    due = add_business_time(calendar, start, seconds)
    assert abs(business_seconds_between(calendar, start, due) - seconds) <= 1e-6
    # The clock stops inside open time or exactly at a closing time.
    assert is_open(calendar, due) or is_open(calendar, due - _ONE_MICROSECOND)


@settings(max_examples=300, deadline=None)
@given(calendar=_CALENDARS, start=_STARTS, seconds=_DURATIONS)
def test_subtracting_business_time_then_measuring_it_gives_it_back(
    calendar: BusinessCalendar, start: datetime, seconds: float
) -> None:
    earlier = add_business_time(calendar, start, -seconds)
    assert abs(business_seconds_between(calendar, earlier, start) - seconds) <= 1e-6
    assert is_open(calendar, earlier)
