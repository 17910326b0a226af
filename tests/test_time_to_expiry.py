"""Time to expiry is elapsed time, whatever zone the clock that asks is in."""
from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pytest

from tools.chain import NEW_YORK, SECONDS_PER_YEAR, seconds_to_expiry, years_to_expiry

# 2022-03-13 is the spring-forward Sunday: an expiry after it is an hour nearer in elapsed time
# than the two New York wall clocks say.
BEFORE_DST = datetime(2022, 3, 8, 15, 30, tzinfo=NEW_YORK)
EXPIRIES = np.array(["2022-03-11", "2022-03-18", "2022-11-18"], dtype="datetime64[D]")


def test_a_new_york_clock_and_a_utc_clock_for_one_instant_agree():
    in_utc = BEFORE_DST.astimezone(timezone.utc)
    assert years_to_expiry(EXPIRIES, BEFORE_DST).tolist() == years_to_expiry(EXPIRIES, in_utc).tolist()


def test_an_expiry_across_spring_forward_is_an_hour_less_than_the_wall_clocks_say():
    wall_clock_hours = [3 * 24 + 0.5, 10 * 24 + 0.5]  # 15:30 Tuesday to 16:00 Friday, 3 and 10 days on
    got = [seconds_to_expiry(date(2022, 3, d), BEFORE_DST) / 3600 for d in (11, 18)]
    assert got == [wall_clock_hours[0], wall_clock_hours[1] - 1]
    # across spring-forward and fall-back: the two shifts cancel
    assert seconds_to_expiry(date(2022, 11, 18), BEFORE_DST) / 3600 == (255 * 24 + 0.5)
    assert years_to_expiry(EXPIRIES[1:2], BEFORE_DST)[0] == pytest.approx((10 * 24 - 0.5) * 3600 / SECONDS_PER_YEAR,
                                                                            rel=1e-15)


def test_a_naive_clock_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        seconds_to_expiry(date(2022, 3, 18), BEFORE_DST.replace(tzinfo=None))
