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
