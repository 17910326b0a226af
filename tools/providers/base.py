"""The market-data provider interface and the as-of snapshot it returns.

A decision run asks its provider once, in `load_context`, for a `MarketSnapshot` as of the run's
time. Everything the analysts see comes from that snapshot, so a run can be replayed from the
recorded snapshot alone and nothing after `as_of` can leak in (the snapshot checks it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Protocol, Sequence

import numpy as np

from tools.chain import NEW_YORK, OptionChain

MARKET_CLOSE = time(16, 0)


class LookAheadError(ValueError):
    """Data dated after the snapshot's as-of time was offered to a run."""


def last_complete_session(as_of: datetime) -> np.datetime64:
    """The last session date whose daily bar is complete at `as_of` (New York time)."""
    local = as_of.astimezone(NEW_YORK)
    day = np.datetime64(local.date(), "D")
    return day if local.time() >= MARKET_CLOSE else day - np.timedelta64(1, "D")


@dataclass(frozen=True)
class Bars:
    """Daily OHLCV bars, oldest first. `dates` are session dates (datetime64[D])."""

    dates: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.dates)

    def until(self, last_date: np.datetime64) -> "Bars":
        keep = self.dates <= last_date
        return Bars(*(getattr(self, f)[keep] for f in ("dates", "open", "high", "low", "close", "volume")))


@dataclass(frozen=True)
class SocialPost:
    created_at: datetime
    source: str  # "reddit", "news", "stocktwits", ...
    text: str
    story_id: str | None = None  # posts about one story share an id: one signal per story
    url: str | None = None  # where a reader can see the post (a permalink)
    sentiment: float | None = None  # -1..1 from the feed's sentiment model; None: score with the lexicon


@dataclass(frozen=True)
class SocialFeed:
    dates: np.ndarray  # datetime64[D], oldest first
    mentions: np.ndarray  # daily mention counts
    search_interest: np.ndarray | None  # Google-Trends-like 0..100 per day, when known
    posts: tuple[SocialPost, ...] = ()
    sentiment_model: str | None = None  # what scored `SocialPost.sentiment` (e.g. a FinBERT path)
    notes: tuple[str, ...] = ()  # sources that failed or were degraded while building the feed


@dataclass(frozen=True)
class TickerData:
    ticker: str
    sector: str
    beta: float
    spot: float
    bars: Bars
    chain: OptionChain | None
    atm_iv_history: np.ndarray | None = None  # daily 30-day ATM implied vol, aligned with bars.dates
    social: SocialFeed | None = None
    data_quality: tuple[str, ...] = ()


@dataclass(frozen=True)
class MarketSnapshot:
    as_of: datetime
    provider: str
    tickers: dict[str, TickerData]
    vix: Bars
    vix3m: Bars
    benchmark: Bars  # SPY, for beta weighting and the regime's realized vol
    rate: float = 0.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("MarketSnapshot.as_of must be timezone-aware")
        self.assert_no_look_ahead()

    def assert_no_look_ahead(self) -> None:
        """Refuse any bar, mention, post or chain dated after the as-of time."""
        last = last_complete_session(self.as_of)
        series = [("VIX", self.vix), ("VIX3M", self.vix3m), ("benchmark", self.benchmark)]
        series += [(t, d.bars) for t, d in self.tickers.items()]
        for name, bars in series:
            if len(bars) and bars.dates.max() > last:
                raise LookAheadError(f"{name} has a bar dated {bars.dates.max()} after {last} (as of {self.as_of})")
        for t, d in self.tickers.items():
            if d.chain is not None and d.chain.as_of > self.as_of:
                raise LookAheadError(f"{t} chain is as of {d.chain.as_of}, after {self.as_of}")
            if d.social is not None:
                if len(d.social.dates) and d.social.dates.max() > np.datetime64(self.as_of.astimezone(NEW_YORK).date(), "D"):
                    raise LookAheadError(f"{t} social mentions run past {self.as_of}")
                late = [p for p in d.social.posts if p.created_at > self.as_of]
                if late:
                    raise LookAheadError(f"{t} has {len(late)} social posts after {self.as_of}")


class MarketDataProvider(Protocol):
    """Anything that can say what the market looked like at a moment, without looking ahead."""

    name: str

    def snapshot(self, tickers: Sequence[str], as_of: datetime) -> MarketSnapshot: ...
