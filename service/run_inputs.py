"""What a decision run is asked for, checked before anything is written.

Every check raises `RunInputError` with one line naming the input and what is wrong with it, so the
command line (and the API) can refuse a run without leaving a failed run row behind.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tools.chain import NEW_YORK

# `runs.seed` is a Postgres integer, and the simulated market keys its generators on it.
SEED_MAX = 2**31 - 1
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RunInputError(ValueError):
    """A run input that cannot be used; the message is one line meant for the person who typed it."""


def parse_tickers(text: str | None, default: list[str]) -> list[str]:
    """`--tickers`: comma-separated symbols, upper-cased; None → `default`. Empty, malformed or
    repeated symbols are refused (a typo should not silently become the default watchlist)."""
    if text is None:
        return list(default)
    from tools.providers.simulated import normalize_ticker

    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise RunInputError(f"--tickers names no ticker (got {text!r}); leave it out for the default watchlist")
    tickers: list[str] = []
    for part in parts:
        if not part:
            raise RunInputError(f"--tickers has an empty item in {text!r}")
        try:
            symbol = normalize_ticker(part)
        except ValueError:
            raise RunInputError(f"--tickers: {part!r} is not a ticker symbol (letters, digits, '.', '-')") from None
        if symbol in tickers:
            raise RunInputError(f"--tickers lists {symbol} twice (symbols are case-insensitive)")
        tickers.append(symbol)
    return tickers


def check_seed(seed: int) -> int:
    if not 0 <= seed <= SEED_MAX:
        raise RunInputError(f"--seed must be between 0 and {SEED_MAX}, got {seed}")
    return seed


@dataclass(frozen=True)
class AsOf:
    """A decision time and, for a date-only `--as-of`, the scheduled slot it was taken to mean."""

    when: datetime
    slot_note: str | None = None  # "2025-03-14 → the last scheduled slot, 15:30 (core)"
    watchlist: str | None = None


def parse_as_of(text: str, now: datetime) -> AsOf:
    """`--as-of`: ISO 8601 (New York time without an offset), not in the future. A date alone means
    that day's last scheduled slot: midnight is outside every session and would stage nothing."""
    text = text.strip()
    if _DATE_ONLY.match(text):
        return _last_slot_of(text, now)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise RunInputError(
            f"--as-of must be ISO 8601 like 2026-11-20T15:30 (New York time if no offset), got {text!r}") from None
    when = value.replace(tzinfo=NEW_YORK) if value.tzinfo is None else value
    if when > now:
        raise RunInputError(f"--as-of {text} is in the future (now {now.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}): "
                            "a run decides on the data known at its as-of")
    return AsOf(when)


def _last_slot_of(text: str, now: datetime) -> AsOf:
    from datetime import date

    from service.scheduler import load_schedule, slots_for_session, xnys_calendar

    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise RunInputError(f"--as-of {text!r} is not a calendar date") from None
    calendar = xnys_calendar()
    first, last = calendar.first_session.date(), calendar.last_session.date()
    if not first <= day <= last:
        raise RunInputError(f"--as-of {text} is outside the XNYS calendar ({first} to {last})")
    slots = slots_for_session(load_schedule(), day)
    if not slots:
        raise RunInputError(f"--as-of {text} is not an XNYS trading day (no scheduled slot); give a date-time "
                            "or another day")
    slot = max(slots, key=lambda s: s.scheduled_at)
    if slot.scheduled_at > now:
        raise RunInputError(f"--as-of {text}: its last scheduled slot ({slot.scheduled_at:%H:%M %Z}) is in the future")
    note = f"--as-of {text} means that day's last scheduled slot, {slot.scheduled_at:%H:%M %Z} ({slot.slot_name})"
    return AsOf(slot.scheduled_at, slot_note=note, watchlist=slot.watchlist)


def parse_chain_options(values: list[str]) -> dict[str, Path]:
    """`--chain SYMBOL=PATH` items; the files themselves are read (and refused) by the provider."""
    from tools.providers.simulated import normalize_ticker

    chains: dict[str, Path] = {}
    for item in values:
        symbol, sep, path = item.partition("=")
        if not sep or not symbol.strip() or not path:
            raise RunInputError(f"--chain takes SYMBOL=PATH, got {item!r}")
        try:
            symbol = normalize_ticker(symbol)
        except ValueError:
            raise RunInputError(f"--chain: {symbol!r} is not a ticker symbol") from None
        if symbol in chains:
            raise RunInputError(f"--chain gives {symbol} twice")
        chains[symbol] = Path(path)
    return chains


class PrefetchedProvider:
    """A provider that serves one snapshot taken up front (to refuse bad inputs before a run row is
    written) to the run that asks for exactly those tickers at exactly that time, so the market is
    read once; anything else goes to the wrapped provider."""

    def __init__(self, inner, tickers: list[str], as_of: datetime):
        self.inner = inner
        self.name = inner.name
        # Asked in UTC, as the run will ask (its as-of comes back from Postgres in UTC): the snapshot
        # carries the as-of it was asked for, and a replay of the recording must see the same one.
        as_of = as_of.astimezone(timezone.utc)
        self._key = (list(tickers), as_of)
        self._snapshot = inner.snapshot(list(tickers), as_of)

    def snapshot(self, tickers, as_of):
        if (list(tickers), as_of) == self._key:
            return self._snapshot
        return self.inner.snapshot(tickers, as_of)

    def __getattr__(self, name):  # quotes, history, ...: whatever else the wrapped provider offers
        return getattr(self.inner, name)
