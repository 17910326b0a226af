"""The wall clock every command and service reads.

In paper mode `HEDGEGRAPH_NOW` (an ISO time; New York when it carries no offset) replaces the real
clock, so a paper account can be walked through days from the shell: approve at 10:00, mark at the
close, see tomorrow's exits. A live broker trades in real time, so there the variable is refused
rather than silently ignored.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
NOW_VARIABLE = "HEDGEGRAPH_NOW"


class ClockError(ValueError):
    """HEDGEGRAPH_NOW is malformed, or set where the real clock must rule."""


def parse_now(text: str) -> datetime:
    """An ISO date-time; without an offset it is New York time."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ClockError(f"{NOW_VARIABLE}={text!r} is not an ISO date-time (e.g. 2026-11-20T10:15)") from None
    return value.replace(tzinfo=NEW_YORK) if value.tzinfo is None else value


def wall_clock(broker: str = "paper") -> datetime:
    """Now: `HEDGEGRAPH_NOW` when set (paper only), else the real UTC time."""
    text = os.environ.get(NOW_VARIABLE, "").strip()
    if not text:
        return datetime.now(timezone.utc)
    if broker != "paper":
        raise ClockError(f"{NOW_VARIABLE} is set but the broker is {broker!r}: a live account runs on the real clock")
    return parse_now(text)
