"""A calendar keeps the open spans of the days it has walked; the answers stay those of
a calendar walking the days afresh, across weekends, holidays and DST changes."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from careloop.domain.calendar import (
    WEEKDAYS,
    BusinessCalendar,
    add_business_time,
    business_seconds_between,
    is_open,
)

CALENDAR = BusinessCalendar.from_text(
    "with-lunch",
    "America/New_York",
    {day: ["08:00-12:00", "13:00-17:00"] for day in WEEKDAYS[:5]}
    | {"sun": ["02:30-05:00"], "sat": ["00:00-24:00"]},
    [date(2026, 3, 9)],
)
# Around the spring-forward (2026-03-08) and fall-back (2026-11-01) days in New York.
STARTS = [datetime(2026, 3, 6, 12, 0, tzinfo=UTC) + timedelta(hours=7 * n) for n in range(20)] + [
    datetime(2026, 10, 30, 12, 0, tzinfo=UTC) + timedelta(hours=7 * n) for n in range(20)
]
AMOUNTS = [-40 * 3600.0, -3600.0, 1.0, 5400.0, 30 * 3600.0]


def test_answers_from_kept_spans_equal_those_walked_afresh() -> None:
    warm = CALENDAR
    for _ in range(2):  # the second round reads only kept spans
        for start in STARTS:
            for seconds in AMOUNTS:
                fresh = replace(CALENDAR)  # an equal calendar that has kept nothing
                assert add_business_time(warm, start, seconds) == add_business_time(
                    fresh, start, seconds
                )
            end = start + timedelta(days=3)
            assert business_seconds_between(warm, start, end) == business_seconds_between(
                replace(CALENDAR), start, end
            )
            assert is_open(warm, start) == is_open(replace(CALENDAR), start)


def test_kept_spans_do_not_change_what_the_calendar_equals() -> None:
    add_business_time(CALENDAR, STARTS[0], 10 * 3600.0)
    fresh = replace(CALENDAR)
    assert fresh == CALENDAR and hash(fresh) == hash(CALENDAR)
