"""Market time: minutes during which NYSE is open (half days and holidays respected).

A staged order's approval window is measured in market minutes, so an order staged at 15:50 is
not expired by the next morning's open: the night does not count.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import exchange_calendars
import numpy as np


@lru_cache(maxsize=1)
def _calendar() -> exchange_calendars.ExchangeCalendar:
    return exchange_calendars.get_calendar("XNYS")


NEW_YORK = ZoneInfo("America/New_York")


def day_start(day: date | datetime) -> datetime:
    """00:00 New York on `day` (for a datetime, on its New York calendar date): where a trading
    day's figures begin (today's realized P&L, a daily summary, a `--since` date)."""
    if isinstance(day, datetime):
        if day.tzinfo is None:
            raise ValueError("a datetime must be timezone-aware to have a New York date")
        day = day.astimezone(NEW_YORK).date()
    return datetime.combine(day, time(0), tzinfo=NEW_YORK)


@lru_cache(maxsize=1)
def _session_table() -> tuple[np.ndarray, list[datetime], list[datetime]]:
    """Every session's date with its open and close (UTC), read from the calendar once: asking
    the calendar session by session cost a pandas lookup per session on every approval-window,
    is-open and next-open question (tens of thousands a backtest)."""
    schedule = _calendar().schedule
    return (schedule.index.values.astype("datetime64[D]"), [t.to_pydatetime() for t in schedule["open"]],
            [t.to_pydatetime() for t in schedule["close"]])


def _sessions(start: datetime, end: datetime):
    """(open, close) of the sessions from the day before `start`'s date to the day after `end`'s."""
    days, opens, closes = _session_table()
    first = np.datetime64(start.date(), "D") - np.timedelta64(1, "D")
    last = np.datetime64(end.date(), "D") + np.timedelta64(1, "D")
    for k in range(int(np.searchsorted(days, first, "left")), int(np.searchsorted(days, last, "right"))):
        yield opens[k], closes[k]


def sessions_between(start: date, end: date) -> list[tuple[date, datetime, datetime]]:
    """NYSE sessions in [start, end] with their open and close (New York)."""
    days, opens, closes = _session_table()
    first = int(np.searchsorted(days, np.datetime64(start, "D"), "left"))
    last = int(np.searchsorted(days, np.datetime64(end, "D"), "right"))
    return [(days[k].astype(object), opens[k].astimezone(NEW_YORK), closes[k].astimezone(NEW_YORK))
            for k in range(first, last)]


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
