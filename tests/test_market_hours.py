from datetime import datetime

import pytest

from tools.chain import NEW_YORK
from tools.market_hours import add_market_minutes, market_minutes_between


def ny(*args):
    return datetime(*args, tzinfo=NEW_YORK)


def test_nights_weekends_and_holidays_do_not_count():
    assert market_minutes_between(ny(2026, 11, 20, 15, 50), ny(2026, 11, 23, 9, 50)) == 30  # Fri close to Mon
    assert market_minutes_between(ny(2026, 11, 25, 15, 45), ny(2026, 11, 27, 9, 45)) == 30  # Thanksgiving shut
    assert market_minutes_between(ny(2026, 11, 27, 12, 45), ny(2026, 11, 27, 15, 0)) == 15  # half day: 13:00 close
    assert market_minutes_between(ny(2026, 11, 22, 10), ny(2026, 11, 22, 12)) == 0  # Sunday
    assert market_minutes_between(ny(2026, 11, 20, 12), ny(2026, 11, 20, 11)) == 0


def test_adding_market_minutes_skips_the_closed_hours():
    assert add_market_minutes(ny(2026, 11, 20, 15, 50), 30) == ny(2026, 11, 23, 9, 50)
    assert add_market_minutes(ny(2026, 11, 27, 12, 50), 30) == ny(2026, 11, 30, 9, 50)
    assert add_market_minutes(ny(2026, 11, 21, 8, 0), 30) == ny(2026, 11, 23, 10, 0)  # Saturday
    with pytest.raises(ValueError):
        add_market_minutes(datetime(2026, 11, 20, 12), 30)


def test_open_and_next_open_respect_half_days_holidays_and_time_zones():
    from datetime import timezone

    from tools.market_hours import is_open, next_open

    assert is_open(ny(2026, 11, 27, 12, 59)) and not is_open(ny(2026, 11, 27, 13, 0))  # half day
    assert not is_open(ny(2026, 11, 26, 11, 0))  # Thanksgiving
    assert next_open(ny(2026, 11, 25, 16, 0)) == ny(2026, 11, 27, 9, 30)
    assert next_open(ny(2026, 11, 20, 10, 0)) == ny(2026, 11, 20, 10, 0)  # trading: now
    # 01:00 UTC on Saturday is still Friday evening in New York: closed, next open Monday.
    assert next_open(datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc)) == ny(2026, 11, 23, 9, 30)


def test_day_start_is_new_york_midnight_of_the_new_york_date():
    from datetime import date, timezone

    from tools.market_hours import day_start

    # 02:30 UTC on 9 March is still 8 March in New York (21:30 EST)
    assert day_start(datetime(2022, 3, 9, 2, 30, tzinfo=timezone.utc)) == datetime(2022, 3, 8, tzinfo=NEW_YORK)
    # the spring-forward Sunday starts at 00:00 EST, 05:00 UTC; the next day at 00:00 EDT, 04:00 UTC
    assert day_start(date(2022, 3, 13)).astimezone(timezone.utc) == datetime(2022, 3, 13, 5, tzinfo=timezone.utc)
    assert day_start(date(2022, 3, 14)).astimezone(timezone.utc) == datetime(2022, 3, 14, 4, tzinfo=timezone.utc)
    assert day_start(datetime(2022, 3, 14, 23, 59, tzinfo=NEW_YORK)) == day_start(date(2022, 3, 14))
    with pytest.raises(ValueError, match="timezone-aware"):
        day_start(datetime(2022, 3, 14, 12, 0))
