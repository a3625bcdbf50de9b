"""UTC columns store aware datetimes as UTC and refuse naive ones."""

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from careloop.adapters.db.tables import TZ

MOMENT = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


DIALECTS: list[Dialect] = [postgresql.dialect(), sqlite.dialect()]  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_utc_values_bind_as_utc_whatever_zone_they_come_in(dialect: Dialect) -> None:
    assert TZ.process_bind_param(MOMENT, dialect) is MOMENT
    for zone in (ZoneInfo("America/New_York"), timezone(timedelta(hours=5)), ZoneInfo("UTC")):
        bound = TZ.process_bind_param(MOMENT.astimezone(zone), dialect)
        assert bound == MOMENT and bound is not None and bound.tzinfo is UTC
    assert TZ.process_bind_param(None, dialect) is None
    with pytest.raises(ValueError, match="naive"):
        TZ.process_bind_param(MOMENT.replace(tzinfo=None), dialect)
