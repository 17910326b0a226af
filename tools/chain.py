"""The option chain every instrument works on: one row per (expiry, strike, right), as NumPy arrays.

Both the simulated market and the Cboe importer produce this shape; the pricing, IV, SVI and
flow instruments consume it. Arrays, not objects, so that the numeric code vectorizes over a
whole chain at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import numpy as np

NEW_YORK = ZoneInfo("America/New_York")
SECONDS_PER_YEAR = 365.0 * 24 * 3600
# Options stop trading at the 16:00 New York close on their expiry date.
EXPIRY_CLOSE = time(16, 0)


def expiry_datetime(expiry: date) -> datetime:
    return datetime.combine(expiry, EXPIRY_CLOSE, tzinfo=NEW_YORK)


def seconds_to_expiry(expiry: date, as_of: datetime) -> float:
    """Elapsed seconds from a tz-aware `as_of` to the expiry's 16:00 New York close.

    `as_of` goes to UTC first: Python subtracts two datetimes that share one tzinfo object as
    wall clocks, so a New York `as_of` would be an hour off for an expiry across a DST change.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    return (expiry_datetime(expiry) - as_of.astimezone(timezone.utc)).total_seconds()


def years_to_expiry(expiries: np.ndarray, as_of: datetime) -> np.ndarray:
    """ACT/365 year fractions from a tz-aware `as_of` to each expiry's 16:00 New York close."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    unique, inverse = np.unique(expiries.astype("datetime64[D]"), return_inverse=True)
    seconds = np.array([seconds_to_expiry(d.astype(object), as_of) for d in unique], dtype=float)
    return (seconds / SECONDS_PER_YEAR)[inverse]


@dataclass(frozen=True)
class OptionChain:
    """A snapshot of one underlying's listed options.

    Prices are per share (multiply by `multiplier` for a contract). Missing values are NaN,
    never zero: a vendor's IV of 0 or Greek of 0 on a deep strike means "not given".
    """

    underlying: str
    as_of: datetime
    spot: float
    expiry: np.ndarray  # datetime64[D]
    strike: np.ndarray  # float64
    is_call: np.ndarray  # bool
    bid: np.ndarray  # float64
    ask: np.ndarray  # float64
    last: np.ndarray  # float64, NaN when no trade
    volume: np.ndarray  # float64 (contracts)
    open_interest: np.ndarray  # float64 (contracts)
    rate: float = 0.0  # continuously compounded risk-free rate
    dividend_yield: float = 0.0  # continuously compounded
    multiplier: float = 100.0
    vendor_iv: np.ndarray | None = None  # kept for comparison, NaN where absent
    vendor_delta: np.ndarray | None = None
    vendor_gamma: np.ndarray | None = None
    source: str = "unknown"
    meta: dict = field(default_factory=dict)
    # Per-row option root (e.g. "SPX" AM-settled monthlies vs "SPXW" weeklies, which can share an
    # expiry and strike); None when the source has a single root.
    root: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("OptionChain.as_of must be timezone-aware")
        n = len(self.strike)
        for name in ("expiry", "is_call", "bid", "ask", "last", "volume", "open_interest"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"OptionChain.{name} has {len(getattr(self, name))} rows, strike has {n}")

    def __len__(self) -> int:
        return len(self.strike)

    @property
    def mid(self) -> np.ndarray:
        return 0.5 * (self.bid + self.ask)

    @property
    def time_to_expiry(self) -> np.ndarray:
        """Years from `as_of` to each row's expiry close (a fresh copy each call; computed once,
        as one chain analysis asks for it at every stage)."""
        cached = self.__dict__.get("_time_to_expiry")
        if cached is None or cached[0] is not self.expiry or cached[1] != self.as_of:
            cached = (self.expiry, self.as_of, years_to_expiry(self.expiry, self.as_of))
            self.__dict__["_time_to_expiry"] = cached  # frozen dataclass: the cache is not a field
        return cached[2].copy()

    @property
    def expiries(self) -> np.ndarray:
        return np.unique(self.expiry)

    def select(self, mask: np.ndarray) -> "OptionChain":
        """A chain holding only the rows where `mask` is true (vendor columns follow)."""
        def pick(a):
            return None if a is None else a[mask]

        return OptionChain(
            underlying=self.underlying, as_of=self.as_of, spot=self.spot,
            expiry=self.expiry[mask], strike=self.strike[mask], is_call=self.is_call[mask],
            bid=self.bid[mask], ask=self.ask[mask], last=self.last[mask],
            volume=self.volume[mask], open_interest=self.open_interest[mask],
            rate=self.rate, dividend_yield=self.dividend_yield, multiplier=self.multiplier,
            vendor_iv=pick(self.vendor_iv), vendor_delta=pick(self.vendor_delta),
            vendor_gamma=pick(self.vendor_gamma), root=pick(self.root), source=self.source,
            meta=dict(self.meta),
        )
