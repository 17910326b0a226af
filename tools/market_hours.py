"""Market time: minutes during which NYSE is open (half days and holidays respected).

A staged order's approval window is measured in market minutes, so an order staged at 15:50 is
not expired by the next morning's open: the night does not count.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

import exchange_calendars
import pandas as pd


@lru_cache(maxsize=1)
def _calendar() -> exchange_calendars.ExchangeCalendar:
    return exchange_calendars.get_calendar("XNYS")


def _sessions(start: datetime, end: datetime):
    cal = _calendar()
    first = pd.Timestamp(start.date()) - pd.Timedelta(days=1)
    last = pd.Timestamp(end.date()) + pd.Timedelta(days=1)
    first, last = max(first, cal.first_session), min(last, cal.last_session)
    for session in cal.sessions_in_range(first, last):
        yield cal.session_open(session).to_pydatetime(), cal.session_close(session).to_pydatetime()


def market_minutes_between(start: datetime, end: datetime) -> float:
    """Minutes of regular trading between two tz-aware instants (0 if end <= start)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("market time needs timezone-aware datetimes")
    if end <= start:
        return 0.0
    total = timedelta()
    for opens, closes in _sessions(start, end):
        overlap = min(end, closes) - max(start, opens)
        if overlap > timedelta():
            total += overlap
    return total.total_seconds() / 60.0


def add_market_minutes(start: datetime, minutes: float) -> datetime:
    """The instant `minutes` of trading after `start` (skipping nights, weekends, holidays)."""
    if start.tzinfo is None:
        raise ValueError("market time needs a timezone-aware datetime")
    remaining = timedelta(minutes=minutes)
    horizon = start + timedelta(days=10 + minutes / 390 * 2)
    for opens, closes in _sessions(start, horizon):
        begin = max(start, opens)
        if closes <= begin:
            continue
        if begin + remaining <= closes:
            return begin + remaining
        remaining -= closes - begin
    raise ValueError(f"cannot place {minutes} market minutes after {start} within the calendar")


def is_open(at: datetime) -> bool:
    """Whether NYSE's regular session is trading at the tz-aware instant `at`."""
    if at.tzinfo is None:
        raise ValueError("market time needs a timezone-aware datetime")
    return any(opens <= at < closes for opens, closes in _sessions(at, at))


def next_open(at: datetime) -> datetime:
    """The first regular-session open strictly after `at` (or `at` itself while trading)."""
    if is_open(at):
        return at
    for opens, _ in _sessions(at, at + timedelta(days=10)):
        if opens > at:
            return opens
    raise ValueError(f"no NYSE session within 10 days after {at}")
