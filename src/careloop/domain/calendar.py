"""Business calendars: open hours per weekday, holidays and a time zone per location.

SLA clocks and time-based rules count only open time. The arithmetic walks the
calendar day by day over open intervals, never minute by minute, so a 500-hour target
costs a few dozen steps. Open hours are wall-clock times turned into instants one day
at a time, so a DST day is exactly as long as it really is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from careloop.domain.definition_checks import Collector, Path, check_keys
from careloop.domain.errors import DefinitionInvalid

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MINUTES_PER_DAY = 24 * 60
_ONE_DAY = timedelta(days=1)
_MICROSECOND = timedelta(microseconds=1)
_KEPT_DAYS = 4096  # spans kept per calendar: about eleven years of days
_INTERVAL = re.compile(r"^(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CALENDAR_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CALENDAR_KEYS = frozenset({"timezone", "hours", "holidays"})

Span = tuple[datetime, datetime]


@dataclass(frozen=True, order=True)
class OpenInterval:
    """Open from ``start`` to ``end``, in minutes after local midnight (``end`` may be 1440)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= _MINUTES_PER_DAY:
            raise ValueError(f"open interval {self.start}-{self.end} minutes is not within a day")

    @classmethod
    def parse(cls, text: str) -> OpenInterval:
        """'08:00-17:00' -> OpenInterval(480, 1020); '24:00' is allowed as an end."""
        match = _INTERVAL.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not an interval like '08:00-17:00'")
        start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
        start, end = start_h * 60 + start_m, end_h * 60 + end_m
        if start_h > 23 or start_m > 59 or end_m > 59 or end > _MINUTES_PER_DAY:
            raise ValueError(f"{text!r} has a time outside 00:00-24:00")
        if end <= start:
            raise ValueError(f"{text!r} ends before it starts")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{_hh_mm(self.start)}-{_hh_mm(self.end)}"


@dataclass(frozen=True)
class BusinessCalendar:
    """When a location is open: ``weekly_hours[0]`` is Monday, holidays are local dates."""

    name: str
    timezone: str
    weekly_hours: tuple[tuple[OpenInterval, ...], ...]
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        problems = _calendar_problems(self.timezone, self.weekly_hours)
        if problems:
            raise ValueError(f"calendar {self.name!r}: {'; '.join(problems)}")

    @classmethod
    def from_text(
        cls,
        name: str,
        timezone: str,
        hours: Mapping[str, Sequence[str]],
        holidays: Iterable[date] = (),
    ) -> BusinessCalendar:
        """Build from {'mon': ['08:00-12:00', '13:00-17:00'], ...}; missing days are closed."""
        unknown = sorted(set(hours) - set(WEEKDAYS))
        if unknown:
            raise ValueError(f"unknown weekdays {unknown}; use {', '.join(WEEKDAYS)}")
        weekly = tuple(
            tuple(sorted(OpenInterval.parse(text) for text in hours.get(day, ())))
            for day in WEEKDAYS
        )
        return cls(name, timezone, weekly, frozenset(holidays))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def _spans(self) -> dict[date, tuple[Span, ...]]:
        """Open spans by local date, kept as days are asked for: every SLA clock on the
        same days walks the same spans, and the wall-to-UTC conversions dominate."""
        return {}

    def is_business_day(self, day: date) -> bool:
        return bool(self.weekly_hours[day.weekday()]) and day not in self.holidays


def _zone_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return f"time zone {name!r} must be an IANA name such as 'America/New_York'"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {name!r}; use an IANA name such as 'America/New_York'"
    return None


def _calendar_problems(
    timezone: str, weekly_hours: tuple[tuple[OpenInterval, ...], ...]
) -> list[str]:
    problems = []
    zone_problem = _zone_problem(timezone)
    if zone_problem:
        problems.append(zone_problem)
    if len(weekly_hours) != len(WEEKDAYS):
        problems.append(f"weekly_hours needs {len(WEEKDAYS)} days, got {len(weekly_hours)}")
    for day, intervals in zip(WEEKDAYS, weekly_hours, strict=False):
        for earlier, later in pairwise(intervals):
            if later.start < earlier.end:
                problems.append(f"{day} {later} overlaps or precedes {earlier}")
    if not any(weekly_hours):
        problems.append("it has no open hours at all")
    return problems


ALWAYS_OPEN = BusinessCalendar.from_text(
    "always-open", "UTC", {day: ["00:00-24:00"] for day in WEEKDAYS}
)


def is_open(calendar: BusinessCalendar, moment: datetime) -> bool:
    """Open intervals include their start and exclude their end."""
    moment = _as_utc(moment, "moment")
    zone = calendar.zone
    day = _local_date(zone, moment)
    return any(
        opens <= moment < closes
        for each in (day - _ONE_DAY, day)
        for opens, closes in _open_spans(calendar, zone, each)
    )


def add_business_time(calendar: BusinessCalendar, start: datetime, seconds: float) -> datetime:
    """The instant ``seconds`` of open time after ``start`` (before it when negative), in UTC.

    Going forward, a duration that ends exactly at closing time returns the closing
    instant, not the next opening.
    """
    start = _as_utc(start, "start")
    if not math.isfinite(seconds):
        raise ValueError(f"seconds must be finite, got {seconds}")
    amount = timedelta(seconds=abs(seconds))
    if not amount:
        return start
    if seconds > 0:
        return _walk_forward(calendar, start, amount)
    return _walk_backward(calendar, start, amount)


def add_business_days(calendar: BusinessCalendar, start: datetime, days: int) -> datetime:
    """The same local time of day on the ``days``-th business day after (or before) ``start``."""
    start = _as_utc(start, "start")
    if days == 0:
        return start
    zone = calendar.zone
    local = start.astimezone(zone)
    day = local.date()
    step = _ONE_DAY if days > 0 else -_ONE_DAY
    counted = 0
    while counted < abs(days):
        day += step
        if calendar.is_business_day(day):
            counted += 1
    return _wall_to_utc(zone, datetime.combine(day, local.time()))


def business_seconds_between(calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    """Open seconds from ``start`` to ``end``; negative when ``end`` is before ``start``."""
    start, end = _as_utc(start, "start"), _as_utc(end, "end")
    if end < start:
        return -business_seconds_between(calendar, end, start)
    zone = calendar.zone
    total = timedelta()
    # One day of margin either side: an interval never leaves its own local day.
    day, last = _local_date(zone, start) - _ONE_DAY, _local_date(zone, end) + _ONE_DAY
    while day <= last:
        for opens, closes in _open_spans(calendar, zone, day):
            overlap = min(closes, end) - max(opens, start)
            if overlap > timedelta():
                total += overlap
        day += _ONE_DAY
    return total.total_seconds()


def _walk_forward(calendar: BusinessCalendar, start: datetime, amount: timedelta) -> datetime:
    zone = calendar.zone
    day = _local_date(zone, start) - _ONE_DAY
    while True:
        for opens, closes in _open_spans(calendar, zone, day):
            if closes <= start:
                continue
            begin = max(opens, start)
            available = closes - begin
            if amount <= available:
                return begin + amount
            amount -= available
        day += _ONE_DAY


def _walk_backward(calendar: BusinessCalendar, start: datetime, amount: timedelta) -> datetime:
    zone = calendar.zone
    day = _local_date(zone, start) + _ONE_DAY
    while True:
        for opens, closes in reversed(_open_spans(calendar, zone, day)):
            if opens >= start:
                continue
            finish = min(closes, start)
            available = finish - opens
            if amount <= available:
                return finish - amount
            amount -= available
        day -= _ONE_DAY


def _open_spans(calendar: BusinessCalendar, zone: ZoneInfo, day: date) -> tuple[Span, ...]:
    """The day's open intervals as UTC instants; empty on holidays and closed days.
    ``zone`` is the calendar's own (its callers have it at hand already)."""
    known = calendar._spans.get(day)
    if known is not None:
        return known
    spans = []
    if calendar.is_business_day(day):
        midnight = datetime.combine(day, time())
        for interval in calendar.weekly_hours[day.weekday()]:
            opens = _wall_to_utc(zone, midnight + timedelta(minutes=interval.start))
            closes = _wall_to_utc(zone, midnight + timedelta(minutes=interval.end))
            if closes > opens:  # an interval inside a spring-forward gap never happens
                spans.append((opens, closes))
    if len(calendar._spans) < _KEPT_DAYS:
        calendar._spans[day] = tuple(spans)
    return tuple(spans)


def _wall_to_utc(zone: ZoneInfo, wall: datetime) -> datetime:
    """A local wall time as a UTC instant.

    A repeated wall time (autumn) means its first occurrence. A skipped wall time
    (spring) means the instant the clocks jumped over it, so hours that start inside
    the gap open as soon as the day reaches them.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # fold=1 reads the skipped time with the offset after the jump, which lands before
    # the jump; fold=0 lands after it. Bisect to the jump itself.
    low, high = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    while high - low > _MICROSECOND:
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high


def _local_date(zone: ZoneInfo, moment: datetime) -> date:
    return moment.astimezone(zone).date()


def _as_utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC)


def _hh_mm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# --- building calendars from a definition document -------------------------------------


def build_calendars(
    data: object, source: str, lines: Mapping[Path, int]
) -> dict[str, BusinessCalendar]:
    """Validate ``{'calendars': {name: {timezone, hours, holidays}}}`` and build each one.

    Every problem is collected with its line; any problem raises ``DefinitionInvalid``.
    """
    out = Collector(source, lines)
    if not isinstance(data, Mapping):
        out.add((), "a calendars definition must be a mapping with a 'calendars' key")
        raise DefinitionInvalid(out.problems)
    check_keys(out, (), data, frozenset({"calendars"}), required=frozenset({"calendars"}))
    raw = data.get("calendars")
    calendars: dict[str, BusinessCalendar] = {}
    if "calendars" in data and (not isinstance(raw, Mapping) or not raw):
        out.add(("calendars",), "calendars must be a non-empty mapping of name to calendar")
    elif isinstance(raw, Mapping):
        for name, spec in raw.items():
            calendar = _build_calendar(out, ("calendars", name), name, spec)
            if calendar is not None:
                calendars[calendar.name] = calendar
    if out.problems:
        raise DefinitionInvalid(out.problems)
    return calendars


def _build_calendar(
    out: Collector, path: Path, name: object, spec: object
) -> BusinessCalendar | None:
    before = len(out.problems)
    if not isinstance(name, str) or not _CALENDAR_NAME.match(name):
        out.add(path, f"calendar name {name!r} must be lower-case letters, digits and dashes")
    if not isinstance(spec, Mapping):
        out.add(path, f"calendar {name!r} must be a mapping with timezone and hours")
        return None
    check_keys(out, path, spec, _CALENDAR_KEYS, required=frozenset({"timezone", "hours"}))
    if "timezone" in spec:
        zone_problem = _zone_problem(spec["timezone"])
        if zone_problem:
            out.add((*path, "timezone"), zone_problem)
    weekly = _build_hours(out, (*path, "hours"), spec["hours"]) if "hours" in spec else None
    if weekly is not None and not any(weekly):
        out.add((*path, "hours"), f"calendar {name!r} has no open hours")
    holidays = _build_holidays(out, (*path, "holidays"), spec.get("holidays"))
    if len(out.problems) > before or weekly is None:
        return None
    try:
        return BusinessCalendar(str(name), str(spec["timezone"]), weekly, holidays)
    except ValueError as error:  # a safety net: the checks above should catch everything
        out.add(path, str(error))
        return None


def _build_hours(
    out: Collector, path: Path, raw: object
) -> tuple[tuple[OpenInterval, ...], ...] | None:
    if not isinstance(raw, Mapping):
        out.add(path, "hours must map weekdays (mon..sun) to intervals like '08:00-17:00'")
        return None
    week: dict[str, tuple[OpenInterval, ...]] = {}
    for day, texts in raw.items():
        if day not in WEEKDAYS:
            out.add((*path, day), f"unknown weekday {day!r}; use one of {', '.join(WEEKDAYS)}")
            continue
        week[day] = _build_day(out, (*path, day), texts)
    return tuple(week.get(day, ()) for day in WEEKDAYS)


def _build_day(out: Collector, path: Path, raw: object) -> tuple[OpenInterval, ...]:
    items: list[Any]
    if isinstance(raw, str):
        items = [raw]
    elif raw is None:  # `sat:` with nothing after it: closed
        items = []
    elif isinstance(raw, list):
        items = raw
    else:
        out.add(path, "a day's hours must be a list of intervals like '08:00-17:00'")
        return ()
    parsed: list[tuple[OpenInterval, int]] = []
    for index, text in enumerate(items):
        item_path = path if isinstance(raw, str) else (*path, index)
        try:
            if not isinstance(text, str):
                raise ValueError(f"{text!r} is not an interval like '08:00-17:00'")
            parsed.append((OpenInterval.parse(text), index))
        except ValueError as error:
            out.add(item_path, str(error))
    parsed.sort()
    for (earlier, _), (later, index) in pairwise(parsed):
        if later.start < earlier.end:
            out.add((*path, index), f"interval {later} overlaps {earlier}")
    return tuple(interval for interval, _ in parsed)


def _build_holidays(out: Collector, path: Path, raw: object) -> frozenset[date]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        out.add(path, "holidays must be a list of dates like 2026-12-25")
        return frozenset()
    holidays = set()
    for index, item in enumerate(raw):
        day = _as_date(item)
        if day is None:
            out.add((*path, index), f"holiday {item!r} is not a date like 2026-12-25")
        else:
            holidays.add(day)
    return frozenset(holidays)


def _as_date(item: object) -> date | None:
    # YAML reads an unquoted 2026-12-25 as a date already; a datetime is not a holiday.
    if isinstance(item, date):
        return None if isinstance(item, datetime) else item
    if isinstance(item, str) and _ISO_DATE.match(item.strip()):
        with suppress(ValueError):  # 2026-02-30 matches the shape but is no date
            return date.fromisoformat(item.strip())
    return None
