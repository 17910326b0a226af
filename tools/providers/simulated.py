"""The deterministic simulated market: the data provider a decision run uses when nothing real is configured.

Everything is generated, never read: underlyings (daily OHLCV on NYSE sessions), VIX and VIX3M,
option chains with open interest and volume, an ATM implied-vol history, and a social stream
(mention counts, a search-interest series, short posts).

How the history is built
------------------------
* One path per seed for the market factor and one per (seed, ticker) for each name, generated
  once over the fixed span ``SPAN_START..SPAN_END`` and cached. An ``as_of`` only *truncates*
  those paths, so the history before any date is identical whatever later ``as_of`` is asked
  (no look-ahead), and a ticker's path never depends on which other tickers were requested.
* Every random draw comes from ``numpy.random.default_rng`` seeded with a BLAKE2 hash of
  (seed, ticker, purpose, ...) -- never Python's ``hash()``, which is salted per process.
* The market factor switches between regimes (calm / choppy / stress) that last weeks to months.
  Log-VIX mean-reverts to a regime level (and jumps on entering stress); the market's daily vol
  is read off the previous VIX close, with a negative return/VIX-shock correlation. VIX3M sits
  above VIX (contango) in calm markets and below it (backwardation) in stress.
* Each name is ``beta`` x the market plus an idiosyncratic part with its own trend regimes
  (up / down / flat), scheduled earnings jumps (stocks) and unscheduled news jumps, both in the
  overnight gap so that the open already shows them.
* The price level is pinned to the profile's ``reference_price`` on ``ANCHOR_DATE``.

Units: prices in dollars per share, vols annualized decimals (0.2 = 20 %), rates continuously
compounded, time ACT/365 (see ``tools.chain``). Market times are America/New_York.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Sequence

import numpy as np

from scipy.special import ndtri

from tools.chain import NEW_YORK, OptionChain, years_to_expiry
from tools.pricing import bsm_price
from tools.providers.base import (
    Bars,
    MarketSnapshot,
    SocialFeed,
    SocialPost,
    TickerData,
    last_complete_session,
)

SPAN_START = date(2012, 1, 1)
SPAN_END = date(2030, 12, 31)  # last day a path (and so an as_of) may reach
CALENDAR_END = date(2031, 12, 31)  # one more year of sessions, for option expiries
ANCHOR_DATE = date(2024, 1, 2)  # each name trades at its reference_price on this session
RISK_FREE_RATE = 0.04
HISTORY_SESSIONS = 504  # two years: enough for 252-day IV rank and a 200-day moving average
SOCIAL_DAYS = 90
POST_DAYS = 3
TRADING_DAYS = 252.0
MODEL_VERSION = "regime-switching/2"  # 2: strikes stay listed (LISTING_SESSIONS)
LISTING_SESSIONS = 63  # a strike listed while the underlying traded near it in the last 3 months stays listed
# (symbol, as_of) pairs whose data a market keeps: a slot of 20 tickers at a few times, several slots.
TICKER_CACHE_SIZE = 160
# Assembled snapshots a market keeps, by (symbols, as_of): each quote source asks for its ticker's
# snapshot, and a slot has several quote sources (brokers, re-checks, previews, marks) per ticker.
SNAPSHOT_CACHE_SIZE = 64

REGIMES = ("calm", "choppy", "stress")
CALM, CHOPPY, STRESS = 0, 1, 2
TRENDS = ("up", "down", "flat")
UP, DOWN, FLAT = 0, 1, 2

# Market factor, per regime: expected daily log return on top of long-run growth, the log-VIX
# level it reverts to and the speed, and the premium of implied over expected vol (log points).
_MARKET_DRIFT = np.array([0.0003, -0.0003, -0.002])
_MARKET_GROWTH = 0.06 / TRADING_DAYS
_MARKET_PULL = 1.0 / 1000.0  # weak mean reversion of the market level around its growth line
_VIX_TARGET = np.log(np.array([13.5, 19.0, 31.0]))
_VIX_SPEED = np.array([0.06, 0.06, 0.12])
_VIX_VOL = 0.055  # daily vol of log VIX (about 90 % a year)
_VIX_RETURN_CORR = -0.7
_REALIZED_TO_VIX = 0.85  # the market's daily vol is 0.85 x VIX/100/sqrt(252): VIX prices a premium
_VRP_TARGET = np.array([0.12, 0.06, -0.04])
_TERM_SLOPE = np.array([0.06, 0.02, -0.06])  # log(VIX3M/VIX) at VIX = 19, per regime
_REGIME_DURATION = ((40, 160), (20, 80), (15, 60))  # sessions, uniform
_REGIME_NEXT = np.array([[0.0, 0.7, 0.3], [0.55, 0.0, 0.45], [0.4, 0.6, 0.0]])

_TREND_DURATION = (20, 90)
_TREND_NEXT = np.array([[0.0, 0.4, 0.6], [0.4, 0.0, 0.6], [0.5, 0.5, 0.0]])
_TREND_STRENGTH = 0.40  # |idiosyncratic drift| in a trend, per unit of the name's daily vol
_TREND_LABEL_Z = 0.08  # |net drift| / daily vol above which a regime counts as a trend
_IDIO_PULL = 1.0 / 500.0
_IDIO_VIX_POWER = 0.35  # idiosyncratic vol rises with VIX, less than one for one
_EARNINGS_JUMP = 2.2  # earnings-gap sd, in daily vols
_NEWS_JUMP = 1.2
_BASE_MARKET_VOL = 0.14  # the market factor's annual vol at a typical VIX of ~16

EVENT_KINDS = ("none", "earnings", "analyst", "guidance", "litigation", "product", "macro")
_EARNINGS, _ANALYST, _GUIDANCE, _LITIGATION, _PRODUCT, _MACRO = 1, 2, 3, 4, 5, 6

_SECTORS = (
    "Technology", "Health Care", "Financials", "Consumer Discretionary", "Communication Services",
    "Industrials", "Consumer Staples", "Energy", "Utilities", "Real Estate", "Materials",
)
_TICKER_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9.\-^/]{0,14}$")
VOLATILITY_INDICES = ("VIX", "VIX3M")


# ----------------------------------------------------------------------------- determinism


def _rng(*key) -> np.random.Generator:
    """A generator seeded by a stable hash of `key` (same in every process, unlike hash())."""
    text = "\x1f".join(str(k) for k in key)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _key64(*key) -> int:
    text = "\x1f".join(str(k) for k in key)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _contract_uniforms(key: int, expiry: np.ndarray, strike: np.ndarray, is_call: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), one per contract, that depend only on `key` and the contract itself.

    A contract keeps its noise when the strike grid around it changes (spot moved intraday), so
    open interest stays fixed through the day and volume only accumulates.
    """
    h = _splitmix64(np.full(len(strike), key, dtype=np.uint64))
    h = _splitmix64(h ^ expiry.astype("datetime64[D]").astype(np.int64).astype(np.uint64))
    h = _splitmix64(h ^ np.round(strike * 1000).astype(np.int64).astype(np.uint64))
    h = _splitmix64(h ^ is_call.astype(np.uint64))
    return ((h >> np.uint64(11)).astype(float) + 0.5) * 2.0**-53


def _poisson_quantile(u: float, lam: float) -> float:
    """The u-quantile of Poisson(lam): with u fixed, counts only grow as lam grows."""
    if lam <= 0:
        return 0.0
    if lam > 50:  # normal approximation, plenty for mention counts
        return float(max(round(lam + math.sqrt(lam) * float(ndtri(u))), 0))
    k, p = 0, math.exp(-lam)
    cdf = p
    while cdf < u and k < 1000:
        k += 1
        p *= lam / k
        cdf += p
    return float(k)


def _ar1(u: np.ndarray, a: float, gain: float = 1.0) -> np.ndarray:
    """y[t] = a * y[t-1] + gain * u[t] with y[-1] = 0 (what scipy.signal.lfilter([gain], [1, -a], u)
    gives; done here in NumPy because importing scipy.signal costs over a second).

    Within blocks of 32 the recursion is a scaled cumulative sum; the carry between blocks is a
    short loop. 0 < a < 1.
    """
    u = gain * np.asarray(u, dtype=float)
    n = len(u)
    block = 32
    padded = np.zeros(-(-n // block) * block)
    padded[:n] = u
    rows = padded.reshape(-1, block)
    powers = a ** np.arange(block)
    within = np.cumsum(rows / powers, axis=1) * powers  # a^j * sum_{i<=j} a^-i u_i
    # The value carried out of block r is itself an AR(1) over block ends, with coefficient a^32.
    ends = within[:, -1].tolist()
    decay = a**block
    carried = [0.0] * len(ends)
    for r in range(1, len(ends)):
        carried[r] = decay * carried[r - 1] + ends[r - 1]
    within += np.array(carried)[:, None] * (a ** np.arange(1, block + 1))[None, :]
    return within.reshape(-1)[:n]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached paths are shared; nobody may edit them in place
    return a


# ----------------------------------------------------------------------------- calendar


@dataclass(frozen=True)
class _Calendar:
    sessions: np.ndarray  # datetime64[D], SPAN_START..CALENDAR_END
    open_minute: np.ndarray  # minutes after New York midnight
    close_minute: np.ndarray  # 960, or 780 on early-close days
    n_path: int  # sessions up to SPAN_END: the length of every generated path
    anchor: int  # index of ANCHOR_DATE


@functools.cache
def _calendar() -> _Calendar:
    """NYSE sessions; built once per process (exchange_calendars takes ~1 s to import and build)."""
    import exchange_calendars

    cal = exchange_calendars.get_calendar("XNYS", start=SPAN_START.isoformat(), end=CALENDAR_END.isoformat())
    schedule = cal.schedule
    sessions = schedule.index.values.astype("datetime64[D]")
    opens = schedule["open"].dt.tz_convert(NEW_YORK)
    closes = schedule["close"].dt.tz_convert(NEW_YORK)
    n_path = int(np.searchsorted(sessions, np.datetime64(SPAN_END, "D"), side="right"))
    anchor = int(np.searchsorted(sessions, np.datetime64(ANCHOR_DATE, "D")))
    return _Calendar(
        sessions=_frozen(sessions),
        open_minute=_frozen((opens.dt.hour * 60 + opens.dt.minute).to_numpy(dtype=float)),
        close_minute=_frozen((closes.dt.hour * 60 + closes.dt.minute).to_numpy(dtype=float)),
        n_path=n_path,
        anchor=anchor,
    )


# ----------------------------------------------------------------------------- ticker profiles


@dataclass(frozen=True)
class TickerProfile:
    """The fixed parameters a name is simulated with.

    `vol` is the name's typical annualized total vol in a normal market (VIX about 16);
    `reference_price` its price on ANCHOR_DATE; `avg_volume` shares a day; `mention_baseline`
    social mentions a day; `option_oi_scale` contracts of open interest at an at-the-money
    monthly strike (it also sets how tight the option quotes are).
    """

    ticker: str
    sector: str
    beta: float
    reference_price: float
    vol: float
    dividend_yield: float
    avg_volume: float
    kind: str  # "index_etf", "sector_etf" or "stock"
    mention_baseline: float
    option_oi_scale: float
    synthetic: bool = False

    @property
    def idiosyncratic_vol(self) -> float:
        return math.sqrt(max(self.vol**2 - (self.beta * _BASE_MARKET_VOL) ** 2, 0.015**2))

    @property
    def has_earnings(self) -> bool:
        return self.kind == "stock"


def _profile(ticker, sector, beta, price, vol, div, volume, kind, mentions, oi) -> TickerProfile:
    return TickerProfile(ticker, sector, beta, price, vol, div, volume, kind, mentions, oi)


DEFAULT_UNIVERSE: dict[str, TickerProfile] = {
    p.ticker: p
    for p in (
        _profile("SPY", "Index", 1.00, 475.0, 0.14, 0.013, 80e6, "index_etf", 400, 60000),
        _profile("QQQ", "Index", 1.15, 405.0, 0.18, 0.006, 45e6, "index_etf", 250, 40000),
        _profile("IWM", "Index", 1.15, 200.0, 0.21, 0.012, 30e6, "index_etf", 120, 30000),
        _profile("AAPL", "Technology", 1.20, 185.0, 0.26, 0.005, 55e6, "stock", 600, 25000),
        _profile("MSFT", "Technology", 1.10, 375.0, 0.24, 0.008, 22e6, "stock", 350, 12000),
        _profile("NVDA", "Technology", 1.80, 48.0, 0.50, 0.0003, 300e6, "stock", 900, 40000),
        _profile("AMZN", "Consumer Discretionary", 1.25, 150.0, 0.32, 0.0, 45e6, "stock", 400, 15000),
        _profile("TSLA", "Consumer Discretionary", 1.90, 250.0, 0.58, 0.0, 110e6, "stock", 1200, 30000),
        _profile("JPM", "Financials", 1.05, 170.0, 0.23, 0.024, 9e6, "stock", 120, 6000),
        _profile("XLE", "Energy", 0.90, 84.0, 0.27, 0.033, 18e6, "sector_etf", 60, 8000),
    )
}
DEFAULT_WATCHLIST = tuple(DEFAULT_UNIVERSE)
BENCHMARK = "SPY"


def normalize_ticker(ticker: str) -> str:
    """Upper-cased, stripped symbol; ValueError for anything that cannot be a ticker."""
    if not isinstance(ticker, str):
        raise ValueError(f"ticker must be a string, got {type(ticker).__name__}")
    symbol = ticker.strip().upper()
    if not _TICKER_PATTERN.match(symbol):
        raise ValueError(f"not a ticker symbol: {ticker!r}")
    return symbol


@functools.lru_cache(maxsize=1024)
def ticker_profile(ticker: str) -> TickerProfile:
    """The profile of a known name, or deterministic synthetic parameters derived from the symbol."""
    symbol = normalize_ticker(ticker)
    if symbol in DEFAULT_UNIVERSE:
        return DEFAULT_UNIVERSE[symbol]
    rng = _rng("profile", symbol)
    beta = float(rng.uniform(0.6, 1.8))
    idio = float(rng.uniform(0.15, 0.55))
    return TickerProfile(
        ticker=symbol,
        sector=_SECTORS[int(rng.integers(len(_SECTORS)))],
        beta=round(beta, 3),
        reference_price=round(float(np.exp(rng.uniform(np.log(10.0), np.log(400.0)))), 2),
        vol=round(math.hypot(beta * _BASE_MARKET_VOL, idio), 4),
        dividend_yield=0.0 if rng.random() < 0.5 else round(float(rng.uniform(0.005, 0.03)), 4),
        avg_volume=float(np.exp(rng.uniform(np.log(1e6), np.log(3e7)))),
        kind="stock",
        mention_baseline=float(np.exp(rng.uniform(np.log(5.0), np.log(300.0)))),
        option_oi_scale=float(np.exp(rng.uniform(np.log(500.0), np.log(10000.0)))),
        synthetic=True,
    )


# ----------------------------------------------------------------------------- market factor


@dataclass(frozen=True)
class _MarketPath:
    regime: np.ndarray  # int8 per session
    log_return: np.ndarray  # market factor's daily log return
    level: np.ndarray  # cumulative log level, 0 on ANCHOR_DATE
    vix: Bars
    vix3m: Bars
    vrp: np.ndarray  # market part of log(implied / expected vol)


def _semi_markov(rng: np.random.Generator, n: int, durations, transition: np.ndarray) -> np.ndarray:
    """States held for uniformly drawn durations, then switched by `transition` (rows: from)."""
    states = np.empty(n, dtype=np.int8)
    shortest = min(lo for lo, _ in durations)
    draws = rng.random((n // shortest + 2, 2)).tolist()  # (duration, next state) per segment
    cumulative = np.cumsum(transition, axis=1).tolist()
    state = int(rng.integers(len(durations)))
    pos = 0
    for u_length, u_next in draws:
        if pos >= n:
            break
        lo, hi = durations[state]
        length = lo + int(u_length * (hi - lo + 1))
        states[pos:pos + length] = state
        pos += length
        state = next(j for j, c in enumerate(cumulative[state]) if u_next < c)
    return states


def _index_ohlc(close: np.ndarray, rng: np.random.Generator, daily_vol: float) -> Bars:
    """OHLC for an index quoted without trading volume (VIX, VIX3M)."""
    n = len(close)
    prev = np.concatenate(([close[0]], close[:-1]))
    open_ = prev * np.exp(0.35 * daily_vol * rng.standard_normal(n))
    high = np.maximum(open_, close) * np.exp(0.4 * daily_vol * np.abs(rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-0.4 * daily_vol * np.abs(rng.standard_normal(n)))
    sessions = _calendar().sessions[:n]
    return Bars(sessions, *(_frozen(np.round(a, 2)) for a in (open_, high, low, close)), _frozen(np.zeros(n)))


@functools.lru_cache(maxsize=8)
def _market_path(seed: int) -> _MarketPath:
    cal = _calendar()
    n = cal.n_path
    rng = _rng(seed, "market")
    regime = _semi_markov(rng, n, _REGIME_DURATION, _REGIME_NEXT)
    z_market = rng.standard_normal(n)
    z_vix = _VIX_RETURN_CORR * z_market + math.sqrt(1 - _VIX_RETURN_CORR**2) * rng.standard_normal(n)
    stress_jump = rng.uniform(0.25, 0.55, n)

    # A sequential loop: today's market vol is read off yesterday's VIX (cheap: once per seed).
    log_vix = np.empty(n)
    log_return = np.empty(n)
    x, deviation = math.log(16.0), 0.0
    reg, zm, zv, jump = regime.tolist(), z_market.tolist(), z_vix.tolist(), stress_jump.tolist()
    drift, target, speed = _MARKET_DRIFT.tolist(), _VIX_TARGET.tolist(), _VIX_SPEED.tolist()
    scale = _REALIZED_TO_VIX / 100.0 / math.sqrt(TRADING_DAYS)
    for t in range(n):
        r = reg[t]
        sigma = scale * math.exp(x)
        ret = drift[r] + _MARKET_GROWTH - _MARKET_PULL * deviation - 0.5 * sigma * sigma + sigma * zm[t]
        deviation += ret - _MARKET_GROWTH
        if t > 0 and r == STRESS and reg[t - 1] != STRESS:
            x += jump[t]
        x += speed[r] * (target[r] - x) + _VIX_VOL * zv[t]
        x = max(x, math.log(9.0))
        log_vix[t] = x
        log_return[t] = ret
    log_return[0] = 0.0
    level = np.cumsum(log_return)
    level -= level[cal.anchor]

    noise = _ar1(0.02 * rng.standard_normal(n), 0.7, 0.3)
    slope = _TERM_SLOPE[regime] + 0.3 * (math.log(19.0) - log_vix) + noise
    # In stress the curve is always inverted: near-dated fear above three-month fear.
    slope = np.where(regime == STRESS, np.minimum(slope, -0.02), slope)
    vix_close = np.round(np.exp(log_vix), 2)
    vix3m_close = np.round(np.exp(log_vix + slope), 2)
    # AR(1) around the regime's premium; 0.22 noise gives a stationary sd of about 0.05.
    vrp = _ar1(_VRP_TARGET[regime] + 0.22 * rng.standard_normal(n), 0.9, 0.1)
    return _MarketPath(
        regime=_frozen(regime),
        log_return=_frozen(log_return),
        level=_frozen(level),
        vix=_index_ohlc(vix_close, rng, _VIX_VOL),
        vix3m=_index_ohlc(vix3m_close, rng, 0.6 * _VIX_VOL),
        vrp=_frozen(vrp),
    )


# ----------------------------------------------------------------------------- one name's path


@dataclass(frozen=True)
class _TickerPath:
    profile: TickerProfile
    bars: Bars  # over the whole span
    log_return: np.ndarray
    daily_vol: np.ndarray  # the generating daily vol of each session's return (fraction)
    trend: np.ndarray  # int8 idiosyncratic trend state per session
    drift: np.ndarray  # expected daily log return from market regime and trend
    event_kind: np.ndarray  # int8 index into EVENT_KINDS, per session
    event_sign: np.ndarray  # int8 +1/-1 on event sessions
    earnings: np.ndarray  # session indices of earnings
    earnings_var: float  # variance of an earnings gap (log units)
    iv30_base: np.ndarray  # 30-day ATM IV at each close without scheduled-event premium
    iv30: np.ndarray  # the same including pending earnings (what atm_iv_history shows)
    vrp: np.ndarray  # log(implied / expected vol) per session
    # social, per calendar day from SPAN_START
    excitation: np.ndarray  # attention beyond baseline (smoothed), per day
    mentions: np.ndarray
    search: np.ndarray  # unnormalized search interest


def _trailing_vol(log_return: np.ndarray, window: int) -> np.ndarray:
    """Annualized close-to-close vol over the last `window` returns ending at each session."""
    c1 = np.concatenate(([0.0], np.cumsum(log_return)))
    c2 = np.concatenate(([0.0], np.cumsum(log_return**2)))
    idx = np.arange(1, len(log_return) + 1)
    lo = np.maximum(idx - window, 1)  # the first return is a placeholder 0
    count = np.maximum(idx - lo, 1)
    mean = (c1[idx] - c1[lo]) / count
    var = np.maximum((c2[idx] - c2[lo]) / count - mean**2, 0.0) * count / np.maximum(count - 1, 1)
    return np.sqrt(var * TRADING_DAYS)


@functools.lru_cache(maxsize=128)
def _ticker_path(seed: int, ticker: str) -> _TickerPath:
    cal = _calendar()
    market = _market_path(seed)
    profile = ticker_profile(ticker)
    n = cal.n_path
    rng = _rng(seed, ticker, "path")

    vix = market.vix.close
    vix_prev = np.concatenate(([vix[0]], vix[:-1]))
    market_daily = _REALIZED_TO_VIX * vix_prev / 100.0 / math.sqrt(TRADING_DAYS)
    idio_daily = profile.idiosyncratic_vol / math.sqrt(TRADING_DAYS) * (vix_prev / 16.0) ** _IDIO_VIX_POWER
    daily_vol = np.sqrt((profile.beta * market_daily) ** 2 + idio_daily**2)
    typical_daily = profile.vol / math.sqrt(TRADING_DAYS)

    trend = _semi_markov(rng, n, (_TREND_DURATION,) * 3, _TREND_NEXT)
    strength = _TREND_STRENGTH * profile.idiosyncratic_vol / profile.vol
    idio_drift = np.select([trend == UP, trend == DOWN], [1.0, -1.0], 0.0) * strength * typical_daily

    event_kind = np.zeros(n, dtype=np.int8)
    event_sign = np.zeros(n, dtype=np.int8)
    jump = np.zeros(n)
    earnings = np.zeros(0, dtype=int)
    if profile.has_earnings:
        steps = 63 + rng.integers(-3, 4, size=n // 60 + 2)
        earnings = int(rng.integers(0, 63)) + np.concatenate(([0], np.cumsum(steps)))
        earnings = earnings[earnings < n]
        event_kind[earnings] = _EARNINGS
        jump[earnings] = _EARNINGS_JUMP * typical_daily * rng.standard_normal(len(earnings))
    news = (rng.random(n) < (1 / 35 if profile.kind == "stock" else 1 / 80)) & (event_kind == 0)
    news_kinds = [_ANALYST, _GUIDANCE, _LITIGATION, _PRODUCT] if profile.kind == "stock" else [_MACRO]
    event_kind[news] = rng.choice(news_kinds, size=int(news.sum()))
    # News tends to follow the trend; litigation is always bad news.
    p_up = np.select([trend == UP, trend == DOWN], [0.7, 0.3], 0.5)
    news_sign = np.where(rng.random(n) < p_up, 1.0, -1.0)
    news_sign = np.where(event_kind == _LITIGATION, -1.0, news_sign)
    jump = np.where(news, news_sign * _NEWS_JUMP * typical_daily * np.abs(rng.standard_normal(n)), jump)
    event_sign[event_kind > 0] = np.where(jump[event_kind > 0] >= 0, 1, -1)

    noise = idio_daily * rng.standard_normal(n)
    idio_step = idio_drift + noise + jump - 0.5 * idio_daily**2
    idio_level = _ar1(idio_step, 1.0 - _IDIO_PULL)
    # A small per-name growth edge over beta x market; index funds have none.
    alpha = 0.0 if profile.kind == "index_etf" else float(rng.uniform(-0.01, 0.03)) / TRADING_DAYS
    t_idx = np.arange(n) - cal.anchor
    log_price = (
        math.log(profile.reference_price)
        + profile.beta * market.level
        + alpha * t_idx
        + (idio_level - idio_level[cal.anchor])
    )
    log_return = np.concatenate(([0.0], np.diff(log_price)))

    close = np.exp(log_price)
    prev_close = np.concatenate(([close[0]], close[:-1]))
    # Events gap at the open; otherwise about a quarter of the day's move happens overnight.
    gap = jump + 0.25 * (log_return - jump) + 0.2 * daily_vol * rng.standard_normal(n)
    open_ = prev_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(0.5 * daily_vol * np.abs(rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-0.5 * daily_vol * np.abs(rng.standard_normal(n)))
    move = np.minimum(np.abs(log_return) / daily_vol, 5.0)
    volume = profile.avg_volume * np.exp(0.25 * rng.standard_normal(n)) * (0.6 + 0.4 * move) * np.sqrt(vix_prev / 16.0)
    volume *= np.where(event_kind > 0, 2.5, 1.0)
    rounded = [np.round(a, 2) for a in (open_, high, low, close)]
    rounded[1] = np.maximum.reduce(rounded)  # keep low <= open, close <= high after rounding
    rounded[2] = np.minimum.reduce([rounded[0], rounded[2], rounded[3]])
    bars = Bars(cal.sessions[:n], *(_frozen(a) for a in rounded), _frozen(np.round(volume)))

    # Implied vol: a blend of trailing realized and the generator's forward-looking vol, times
    # a premium that drifts around a regime level (so IV is sometimes rich, sometimes cheap).
    vix_now = vix / 100.0
    expected = np.sqrt((profile.beta * _REALIZED_TO_VIX * vix_now) ** 2
                       + profile.idiosyncratic_vol**2 * (vix / 16.0) ** (2 * _IDIO_VIX_POWER))
    realized = _trailing_vol(log_return, 20)
    vrp = market.vrp + _ar1(0.0187 * rng.standard_normal(n), 0.95)  # stationary sd 0.06
    iv30_base = np.sqrt(0.35 * realized**2 + 0.65 * expected**2) * np.exp(vrp)
    earnings_var = (_EARNINGS_JUMP * typical_daily) ** 2
    iv30 = iv30_base.copy()
    if len(earnings):
        nxt = np.searchsorted(earnings, np.arange(n), side="right")
        has_next = nxt < len(earnings)
        days_to = np.full(n, np.inf)
        next_dates = cal.sessions[earnings[np.minimum(nxt, len(earnings) - 1)]]
        days_to[has_next] = (next_dates[has_next] - cal.sessions[:n][has_next]).astype(float)
        iv30 = np.sqrt(iv30_base**2 + np.where(days_to <= 30, earnings_var / (30.0 / 365.0), 0.0))

    excitation, mentions, search = _social_series(profile, log_return, daily_vol, event_kind, rng)
    drift = profile.beta * (_MARKET_DRIFT[market.regime] + _MARKET_GROWTH) + idio_drift
    return _TickerPath(
        profile=profile, bars=bars, log_return=_frozen(log_return), daily_vol=_frozen(daily_vol),
        trend=_frozen(trend), drift=_frozen(drift),
        event_kind=_frozen(event_kind), event_sign=_frozen(event_sign), earnings=_frozen(earnings),
        earnings_var=earnings_var, iv30_base=_frozen(iv30_base), iv30=_frozen(iv30), vrp=_frozen(vrp),
        excitation=_frozen(excitation), mentions=_frozen(mentions), search=_frozen(search),
    )


def _span_days() -> np.ndarray:
    return np.arange(np.datetime64(SPAN_START, "D"), np.datetime64(SPAN_END, "D") + 1)


def _weekday_factor(days: np.ndarray) -> np.ndarray:
    weekday = (days.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return np.where(weekday >= 5, 0.55, 1.0)


def _move_excitation(z: np.ndarray) -> np.ndarray:
    """Extra attention from a move of `z` daily vols: nothing for ordinary days, a lot for big ones."""
    return np.minimum(0.5 * np.maximum(np.abs(z) - 1.0, 0.0) ** 2, 8.0)


def _social_series(profile, log_return, daily_vol, event_kind, rng):
    """Attention (excitation over baseline), mention counts and unnormalized search interest, per
    calendar day over the span. Big moves and events excite attention, which fades over days."""
    cal = _calendar()
    days = _span_days()
    day_of_session = (cal.sessions[: cal.n_path] - days[0]).astype(int)
    excite = np.zeros(len(days))
    excite[day_of_session] = _move_excitation(log_return / daily_vol)
    excite[day_of_session] += np.select([event_kind == _EARNINGS, event_kind > 0], [3.0, 1.5], 0.0)
    hype = rng.random(len(days)) < 1 / 60
    excite += np.where(hype, rng.uniform(1.5, 4.0, len(days)), 0.0)
    excite = _ar1(excite, 0.5)  # attention fades over a few days
    noise = np.exp(0.15 * rng.standard_normal(len(days)))
    rate = profile.mention_baseline * _weekday_factor(days) * (1.0 + excite) * noise
    mentions = rng.poisson(rate).astype(float)
    search = _ar1(rate, 0.7, 0.3) * np.exp(0.08 * rng.standard_normal(len(days)))
    return excite, mentions, search


# ----------------------------------------------------------------------------- the as-of clock


@dataclass(frozen=True)
class _Clock:
    """Where `as_of` falls on the session calendar."""

    as_of: datetime
    today: date  # New York date of as_of
    complete: int  # number of complete sessions (bars end at index complete - 1)
    live: int | None  # index of today's session when it is open but not yet complete
    elapsed: float  # fraction of today's session elapsed (1.0 when no session is live)
    minute: float  # minutes after New York midnight


def _clock(as_of: datetime, history: int) -> _Clock:
    if not isinstance(as_of, datetime):
        raise TypeError(f"as_of must be a datetime, got {type(as_of).__name__}")
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must be timezone-aware (market times are America/New_York)")
    cal = _calendar()
    local = as_of.astimezone(NEW_YORK)
    today = local.date()
    if today > SPAN_END:
        raise ValueError(f"as_of {as_of} is after the simulated span, which ends {SPAN_END}")
    complete = int(np.searchsorted(cal.sessions, last_complete_session(as_of), side="right"))
    if complete < history:
        first = cal.sessions[history - 1] + np.timedelta64(1, "D")
        raise ValueError(
            f"as_of {as_of} leaves {complete} simulated sessions; {history} are needed (first valid date {first})"
        )
    minute = local.hour * 60 + local.minute + local.second / 60.0
    live, elapsed = None, 1.0
    if complete < cal.n_path and cal.sessions[complete] == np.datetime64(today, "D"):
        live = complete
        o, c = cal.open_minute[live], cal.close_minute[live]
        elapsed = float(np.clip((minute - o) / (c - o), 0.0, 1.0))
    return _Clock(as_of, today, complete, live, elapsed, minute)


def _intraday_price(bars: Bars, clock: _Clock, key) -> float:
    """Price at as_of: last close, or inside today's bar moving from its open toward its close."""
    if clock.live is None:
        return float(bars.close[clock.complete - 1])
    i = clock.live
    if clock.elapsed <= 0.0:
        return float(bars.close[i - 1])
    if clock.elapsed >= 1.0:
        return float(bars.close[i])
    f = clock.elapsed
    lo, hi = bars.open[i], bars.close[i]
    width = math.log(bars.high[i] / bars.low[i])
    wiggle = 0.5 * width * math.sqrt(f * (1.0 - f)) * float(_rng(*key, "intraday", str(clock.today)).standard_normal())
    price = math.exp(math.log(lo) + f * math.log(hi / lo) + wiggle)
    return round(float(np.clip(price, bars.low[i], bars.high[i])), 2)


# ----------------------------------------------------------------------------- regimes (for tests)


@dataclass(frozen=True)
class GeneratingRegime:
    """The state the generator was in for one name on one session (tests and diagnostics only).

    `trend` is the sign of `drift` (the expected daily log return from the market regime and the
    name's own trend regime) when it exceeds 0.08 daily vols, else "flat". `daily_vol` is the
    generating vol of that session's return (fraction), `vix` and `vix3m` the closes.
    """

    ticker: str
    session: date
    market: str
    trend: str
    idiosyncratic_trend: str
    drift: float
    daily_vol: float
    implied_premium: float
    vix: float
    vix3m: float


# ----------------------------------------------------------------------------- option chains


def _strike_step(spot: float) -> float:
    for limit, step in ((15.0, 0.5), (60.0, 1.0), (150.0, 2.5), (600.0, 5.0)):
        if spot < limit:
            return step
    return 10.0


def _third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def option_expiries(as_of: datetime) -> np.ndarray:
    """Weekly Fridays for 8 weeks and monthly third Fridays out to one year, moved to the
    previous session when the Friday is a holiday; only those not yet expired at `as_of`."""
    cal = _calendar()
    today = as_of.astimezone(NEW_YORK).date()
    friday = today + timedelta(days=(4 - today.weekday()) % 7)
    wanted = {friday + timedelta(weeks=w) for w in range(8)}
    for m in range(13):
        year, month = today.year + (today.month - 1 + m) // 12, (today.month - 1 + m) % 12 + 1
        third = _third_friday(year, month)
        if today <= third <= today + timedelta(days=366):
            wanted.add(third)
    days = np.array(sorted(wanted), dtype="datetime64[D]")
    idx = np.searchsorted(cal.sessions, days, side="right") - 1  # the Friday or the session before
    expiries = np.unique(cal.sessions[idx])
    return expiries[years_to_expiry(expiries, as_of) > 0]


_SMILE_BY_KIND = {  # ATM skew and curvature per standardized move, and SVI rho
    "index_etf": (-0.13, 0.045, -0.75),
    "sector_etf": (-0.10, 0.05, -0.6),
    "stock": (-0.07, 0.065, -0.45),
}
_SKEW_BY_REGIME = np.array([1.0, 1.1, 1.25])
_TERM_POWER_BY_REGIME = np.array([0.06, 0.0, -0.12])  # ATM vol ~ T**power: up in calm, inverted in stress
_T30 = 30.0 / 365.0


def smile_total_variance(k, atm_total_variance, skew, curvature, rho) -> np.ndarray:
    """Raw-SVI total variance w(k) (vol**2 * years) at log-moneyness k = ln(K/F).

    Parameters are per row (broadcast): `atm_total_variance` w(0); `skew` the ATM slope of
    implied vol per standardized move x = k / sqrt(w0) in units of ATM vol (negative: puts rich);
    `curvature` the quadratic coefficient in x (raised to 0.43 skew**2 when smaller); `rho` the SVI
    correlation (wing asymmetry), tightened where needed so that the smile's minimum stays positive.
    Wings are linear in k (Lee-compatible). The shape is the same in x for every w0, which makes
    total variance grow with w0 at every k (no calendar arbitrage along a rising ATM term).
    """
    w0 = np.asarray(atm_total_variance, dtype=float)
    skew = np.asarray(skew, dtype=float)
    curvature = np.asarray(curvature, dtype=float)
    if not (np.all(w0 > 0) and np.all(curvature > 0)):
        raise ValueError("smile needs a positive ATM total variance and a positive curvature")
    sd = np.sqrt(w0)
    # A steep skew needs some curvature, or no |rho| < 0.95 keeps the smile's minimum positive.
    curvature = np.maximum(curvature, 0.43 * skew**2)
    # Matching w'(0) = b rho and w''(0) = b / s to the requested skew and curvature:
    # w'(0) = 2 sd skew, w''(0) = 2 (skew^2 + 2 curvature).
    rho_needed = np.sqrt(2.0 * skew**2 / (1.2 * (skew**2 + 2.0 * curvature)))
    rho_abs = np.clip(np.maximum(np.abs(rho), rho_needed), 0.05, 0.95)
    rho_signed = np.sign(skew) * rho_abs
    b = 2.0 * sd * np.abs(skew) / rho_abs
    s = b / (2.0 * (skew**2 + 2.0 * curvature))
    a = w0 - b * s
    return a + b * (rho_signed * k + np.sqrt(k * k + s * s))


@dataclass(frozen=True)
class GeneratingSurface:
    """The implied-vol surface a chain was priced from (one entry per expiry).

    `t` years to each expiry (ACT/365 to 16:00 New York), `forward` the BSM forward,
    `atm_total_variance` w0 = ATM vol**2 * t (scheduled earnings included), and the smile shape
    shared by every expiry in standardized moneyness: `skew` < 0 makes puts rich.
    """

    expiries: np.ndarray
    t: np.ndarray
    forward: np.ndarray
    atm_total_variance: np.ndarray
    skew: float
    curvature: float
    rho: float

    def total_variance(self, strike, expiry_index) -> np.ndarray:
        e = np.asarray(expiry_index)
        k = np.log(np.asarray(strike, dtype=float) / self.forward[e])
        return smile_total_variance(k, self.atm_total_variance[e], self.skew, self.curvature, self.rho)

    def implied_vol(self, strike, expiry_index) -> np.ndarray:
        """Annualized implied vol (decimal) per strike for the expiries at `expiry_index`."""
        return np.sqrt(self.total_variance(strike, expiry_index) / self.t[np.asarray(expiry_index)])


# ----------------------------------------------------------------------------- social posts

_EVENT_HEADLINES = {
    (_EARNINGS, 1): "{t} beat earnings estimates and raised full-year guidance",
    (_EARNINGS, -1): "{t} missed earnings estimates and cut guidance",
    (_ANALYST, 1): "Analyst upgrade: {t} raised to buy, price target lifted",
    (_ANALYST, -1): "Analyst downgrade: {t} cut to sell on weakening demand",
    (_GUIDANCE, 1): "{t} reaffirms strong guidance, sees record demand",
    (_GUIDANCE, -1): "{t} warns of weaker guidance for the quarter",
    (_LITIGATION, -1): "{t} hit with litigation as regulators open a probe",
    (_PRODUCT, 1): "{t} announces buyback and a new product launch",
    (_PRODUCT, -1): "{t} delays product launch after a recall",
    (_MACRO, 1): "{t} rallies as inflation cools and yields fall",
    (_MACRO, -1): "{t} slides on recession fears and rising yields",
}
_CHATTER = {
    1: (
        "{t} breaking out, loading calls",
        "Bought more {t} on the dip, momentum looks strong",
        "{t} uptrend intact, bullish into next week",
        "{t} outperforming, strong buying volume today",
        "{t} should beat estimates this quarter, loading calls",
    ),
    -1: (
        "{t} looks weak, bought puts",
        "{t} broke support, selling my shares",
        "{t} downtrend, bearish until it reclaims the 50 day",
        "Heavy selling in {t}, this could get ugly",
        "Hearing a downgrade is coming for {t}, bought puts",
    ),
    0: (
        "Anyone watching {t} today?",
        "{t} flat, waiting for a catalyst",
        "Holding {t}, no change to my position",
        "{t} range bound ahead of the Fed",
        "{t} guidance update next week, staying on the sidelines",
    ),
}
_REACTION = {
    1: ("calls printing", "bullish", "to the moon"),
    -1: ("puts printing", "bearish", "ouch"),
    0: ("thoughts?", "watching", "meh"),
}


def _source_text(source: str, ticker: str, headline: str, sign: int, rng: np.random.Generator) -> str:
    reaction = _REACTION[sign][int(rng.integers(3))]
    if source == "news":
        return headline
    if source == "reddit":
        return f"{headline} - {reaction}"
    tag = {1: "#bullish", -1: "#bearish", 0: "#neutral"}[sign]
    return f"${ticker} {headline} {tag}"


def _day_posts(seed: int, path: _TickerPath, day: date) -> list[SocialPost]:
    """Every post of one calendar day (the caller keeps those before as_of).

    Sentiment of ordinary chatter follows the 5-session move up to the previous close; an event
    session brings its story (pre-market, as its gap shows at the open) on several sources.
    """
    cal = _calendar()
    ticker = path.profile.ticker
    rng = _rng(seed, ticker, "posts", day.isoformat())
    d64 = np.datetime64(day, "D")
    before = int(np.searchsorted(cal.sessions[: cal.n_path], d64, side="left"))  # sessions strictly before day
    close = path.bars.close
    z5 = 0.0
    if before >= 6:
        z5 = math.log(close[before - 1] / close[before - 6]) / (path.daily_vol[before - 1] * math.sqrt(5))
    p_bull = 0.75 / (1.0 + math.exp(-1.5 * z5))
    midnight = datetime.combine(day, time(0, 0), tzinfo=NEW_YORK)
    stories: list[tuple[int, str, float, tuple[str, ...]]] = []  # sign, headline, minute, sources
    is_session = before < cal.n_path and cal.sessions[before] == d64
    if is_session and path.event_kind[before] > 0:
        kind, sign = int(path.event_kind[before]), int(path.event_sign[before])
        headline = _EVENT_HEADLINES[(kind, sign)].format(t=ticker)
        stories.append((sign, headline, float(rng.uniform(360, 565)), ("news", "reddit", "stocktwits")))
    n_chatter = min(1 + int(rng.poisson(0.5 + math.log1p(path.profile.mention_baseline / 100.0))), 4)
    for _ in range(n_chatter):
        u = rng.random()
        sign = 1 if u < p_bull else (-1 if u < 0.75 else 0)
        bank = _CHATTER[sign]
        if rng.random() < 0.4:
            sources = ("reddit", "stocktwits")
        else:
            sources = ("reddit",) if rng.random() < 0.5 else ("stocktwits",)
        text = bank[int(rng.integers(len(bank)))].format(t=ticker)
        stories.append((sign, text, float(rng.uniform(420, 1320)), sources))
    posts = []
    for j, (sign, headline, minute, sources) in enumerate(stories):
        story_id = f"{ticker}-{day.isoformat()}-{j}"
        for source in sources:
            at = midnight + timedelta(minutes=minute + float(rng.uniform(0, 45)))
            posts.append(SocialPost(at, source, _source_text(source, ticker, headline, sign, rng), story_id))
    return posts


# ----------------------------------------------------------------------------- the provider


def _read_only(value):
    """`value` with every numpy array inside it (dataclass fields, tuples, dicts) made read-only:
    cached data is shared by every caller, so writing into it must fail loudly, not leak."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _read_only(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            _read_only(item)
    elif isinstance(value, dict):
        for item in value.values():
            _read_only(item)
    return value


class SimulatedMarket:
    """Deterministic embedded market-data provider (`MarketDataProvider`).

    The same (seed, tickers, as_of) always gives bit-identical snapshots; each ticker's data
    depends only on (seed, ticker) and as_of. Bars run `history_sessions` sessions up to the last
    complete session; on a live session `spot` sits inside today's (not yet shown) bar.
    """

    name = "simulated"

    def __init__(self, seed: int = 7, history_sessions: int = HISTORY_SESSIONS) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not 260 <= history_sessions <= 2000:
            raise ValueError(f"history_sessions must be in 260..2000, got {history_sessions}")
        self.seed = int(seed)
        self.history_sessions = int(history_sessions)
        # A ticker's data is a pure function of (seed, symbol, as_of); brokers, re-checks, marks and
        # previews ask for the same (symbol, time) many times a slot, each costing a chain and its IVs.
        self._ticker_cache: OrderedDict[tuple[str, datetime], TickerData] = OrderedDict()
        self._cache_lock = threading.Lock()  # snapshots are taken from several threads at once
        self._snapshot_cache: OrderedDict[tuple, MarketSnapshot] = OrderedDict()

    def __repr__(self) -> str:
        return f"SimulatedMarket(seed={self.seed})"

    def fingerprint(self) -> str:
        """What this market's data is a function of: a backtest on another seed or model is another backtest."""
        return f"simulated:{self.seed}:{MODEL_VERSION}"

    # -- public ----------------------------------------------------------------------------

    def snapshot(self, tickers: Sequence[str], as_of: datetime) -> MarketSnapshot:
        """The market as it looked at `as_of` (tz-aware) for `tickers` (any symbols; unknown ones get
        synthetic parameters; "VIX"/"VIX3M" come back as index data without a chain).

        Per ticker: `bars` (last `history_sessions` complete sessions), `spot`, `atm_iv_history`
        (30-day ATM IV at each bar's close, decimal), an `OptionChain` (source "simulated", per-share
        prices, cent ticks, `vendor_iv` = the generating smile's vol, rate 4 %, the name's dividend
        yield) and a `SocialFeed` (90 calendar days of mentions ending with today's partial count,
        0..100 search interest scaled to its window, posts from the last 3 days before `as_of`).
        `meta` carries the seed, the model version and VIX/VIX3M at `as_of`.

        Snapshots are cached and shared: the same (tickers, as_of) gives the same object, whose
        arrays are read-only; its dicts must not be written to either.
        """
        if isinstance(tickers, str):
            raise TypeError("tickers must be a sequence of symbols, not one string")
        symbols = list(dict.fromkeys(normalize_ticker(t) for t in tickers))
        if not isinstance(as_of, datetime):
            raise TypeError(f"as_of must be a datetime, got {type(as_of).__name__}")
        # Equal instants in other zones are other snapshots: the snapshot carries the as_of it was asked with.
        key = (tuple(symbols), as_of, as_of.tzinfo, as_of.fold)
        with self._cache_lock:
            snapshot = self._snapshot_cache.get(key)
            if snapshot is not None:
                self._snapshot_cache.move_to_end(key)
                return snapshot
        snapshot = self._snapshot(symbols, as_of)
        with self._cache_lock:
            snapshot = self._snapshot_cache.setdefault(key, snapshot)
            while len(self._snapshot_cache) > SNAPSHOT_CACHE_SIZE:
                self._snapshot_cache.popitem(last=False)
        return snapshot

    def _snapshot(self, symbols: list[str], as_of: datetime) -> MarketSnapshot:
        clock = _clock(as_of, self.history_sessions)
        market = _market_path(self.seed)
        window = slice(clock.complete - self.history_sessions, clock.complete)
        # Read-only, as the ticker data: the snapshot is cached and shared by every caller.
        vix = _read_only(_slice(market.vix, window))
        vix3m = _read_only(_slice(market.vix3m, window))
        vix_now = _intraday_price(market.vix, clock, (self.seed, "VIX"))
        vix3m_now = _intraday_price(market.vix3m, clock, (self.seed, "VIX3M"))
        data: dict[str, TickerData] = {}
        for symbol in symbols:
            if symbol in VOLATILITY_INDICES:
                bars, now = (vix, vix_now) if symbol == "VIX" else (vix3m, vix3m_now)
                data[symbol] = TickerData(symbol, "Volatility Index", 0.0, now, bars, None,
                                          data_quality=("no simulated option chain for a volatility index",))
            else:
                data[symbol] = self._cached_ticker_data(symbol, as_of, clock, window, vix_now)
        benchmark = _read_only(_slice(_ticker_path(self.seed, BENCHMARK).bars, window))
        return MarketSnapshot(
            as_of=as_of,
            provider=self.name,
            tickers=data,
            vix=vix,
            vix3m=vix3m,
            benchmark=benchmark,
            rate=RISK_FREE_RATE,
            meta={
                "seed": self.seed,
                "model": MODEL_VERSION,
                "vix_spot": vix_now,
                "vix3m_spot": vix3m_now,
                "last_session": str(_calendar().sessions[clock.complete - 1]),
                "synthetic_tickers": [
                    s for s in symbols if s not in VOLATILITY_INDICES and ticker_profile(s).synthetic
                ],
            },
        )

    def generating_surface(self, ticker: str, as_of: datetime) -> GeneratingSurface:
        """The surface `snapshot` prices `ticker`'s chain from at `as_of` (tests and diagnostics)."""
        symbol = normalize_ticker(ticker)
        if symbol in VOLATILITY_INDICES:
            raise ValueError(f"no simulated option surface for the volatility index {symbol}")
        clock = _clock(as_of, self.history_sessions)
        market = _market_path(self.seed)
        path = _ticker_path(self.seed, symbol)
        spot = _intraday_price(path.bars, clock, (self.seed, symbol))
        return self._surface(path, clock, spot, _intraday_price(market.vix, clock, (self.seed, "VIX")))

    def generating_regime(self, ticker: str, day: date | datetime | np.datetime64) -> GeneratingRegime:
        """The generator's state for `ticker` on the last session on or before `day`."""
        cal = _calendar()
        if isinstance(day, datetime):
            day = day.astimezone(NEW_YORK).date() if day.tzinfo else day.date()
        d64 = np.datetime64(day, "D")
        i = int(np.searchsorted(cal.sessions[: cal.n_path], d64, side="right")) - 1
        if i < 0 or d64 > np.datetime64(SPAN_END, "D"):
            raise ValueError(f"{day} is outside the simulated span {SPAN_START}..{SPAN_END}")
        symbol = normalize_ticker(ticker)
        if symbol in VOLATILITY_INDICES:
            raise ValueError(f"{symbol} is a volatility index; its state is the market regime of any ticker")
        path = _ticker_path(self.seed, symbol)
        market = _market_path(self.seed)
        z = path.drift[i] / path.daily_vol[i]
        trend = "up" if z > _TREND_LABEL_Z else ("down" if z < -_TREND_LABEL_Z else "flat")
        return GeneratingRegime(
            ticker=symbol, session=cal.sessions[i].astype(object), market=REGIMES[market.regime[i]],
            trend=trend, idiosyncratic_trend=TRENDS[path.trend[i]], drift=float(path.drift[i]),
            daily_vol=float(path.daily_vol[i]), implied_premium=float(path.vrp[i]),
            vix=float(market.vix.close[i]), vix3m=float(market.vix3m.close[i]),
        )

    # -- internals ---------------------------------------------------------------------------

    def _cached_ticker_data(self, symbol: str, as_of: datetime, clock: _Clock, window: slice,
                            vix_now: float) -> TickerData:
        key = (symbol, as_of)
        with self._cache_lock:
            data = self._ticker_cache.get(key)
            if data is not None:
                self._ticker_cache.move_to_end(key)
                return data
        # Generated outside the lock (two threads may both generate it: the result is the same).
        data = _read_only(self._ticker_data(symbol, clock, window, vix_now))
        with self._cache_lock:
            data = self._ticker_cache.setdefault(key, data)
            while len(self._ticker_cache) > TICKER_CACHE_SIZE:
                self._ticker_cache.popitem(last=False)
        return data

    def _ticker_data(self, symbol: str, clock: _Clock, window: slice, vix_now: float) -> TickerData:
        path = _ticker_path(self.seed, symbol)
        spot = _intraday_price(path.bars, clock, (self.seed, symbol))
        chain = self._chain(path, clock, spot, vix_now)
        return TickerData(
            ticker=symbol,
            sector=path.profile.sector,
            beta=path.profile.beta,
            spot=spot,
            bars=_slice(path.bars, window),
            chain=chain,
            atm_iv_history=path.iv30[window].copy(),
            social=self._social(path, clock, spot),
        )

    def _surface(self, path: _TickerPath, clock: _Clock, spot: float, vix_now: float) -> GeneratingSurface:
        cal = _calendar()
        profile = path.profile
        market = _market_path(self.seed)
        last = clock.complete - 1  # the state as of the last close; today's VIX move is applied on top
        regime = int(market.regime[last])
        rng = _rng(self.seed, profile.ticker, "surface", str(cal.sessions[last]))  # fixed through the day
        vix_beta = float(np.clip((profile.beta * _BASE_MARKET_VOL / profile.vol) ** 2, 0.2, 1.0))
        iv30 = float(path.iv30_base[last]) * (vix_now / float(market.vix.close[last])) ** vix_beta
        long_run = profile.vol * 1.1
        expiries = option_expiries(clock.as_of)
        t_exp = years_to_expiry(expiries, clock.as_of)
        # ATM vol ~ T**power: upward in calm markets, inverted in stress, and leaning back toward
        # the name's long-run level when today's vol is far from it.
        power = _TERM_POWER_BY_REGIME[regime] + 0.1 * float(np.clip(math.log(long_run / iv30), -1.0, 1.0))
        atm_vol = iv30 * (np.maximum(t_exp, 3.0 / 365.0) / _T30) ** power
        w_atm = atm_vol**2 * t_exp
        # Scheduled earnings not yet in the price add their gap variance to every expiry after them.
        opened = clock.live is not None and clock.elapsed > 0
        pending = path.earnings[path.earnings >= clock.complete + (1 if opened else 0)]
        w_atm = w_atm + path.earnings_var * np.searchsorted(cal.sessions[pending], expiries, side="right")
        skew0, curv0, rho0 = _SMILE_BY_KIND[profile.kind]
        return GeneratingSurface(
            expiries=expiries,
            t=t_exp,
            forward=spot * np.exp((RISK_FREE_RATE - profile.dividend_yield) * t_exp),
            atm_total_variance=w_atm,
            skew=skew0 * _SKEW_BY_REGIME[regime] * math.exp(0.08 * float(rng.standard_normal())),
            curvature=curv0 * math.exp(0.1 * float(rng.standard_normal())),
            rho=rho0,
        )

    def _chain(self, path: _TickerPath, clock: _Clock, spot: float, vix_now: float) -> OptionChain:
        profile = path.profile
        surface = self._surface(path, clock, spot, vix_now)
        expiries, t_exp = surface.expiries, surface.t
        # Strikes stay listed once listed, as on an exchange: the grid spans the range the underlying
        # traded over the last LISTING_SESSIONS (not today's price only) at every strike interval
        # that range's prices used. Listed from today's spot alone, a short leg's strike vanished
        # when spot moved away or crossed an interval boundary (595 is not on a $10 grid), and the
        # position could be neither marked, nor closed, nor margined (found by a 20-ticker backtest).
        traded = path.bars.close[max(clock.complete - LISTING_SESSIONS, 0):clock.complete]
        low, high = float(min(spot, traded.min(initial=spot))), float(max(spot, traded.max(initial=spot)))
        steps = sorted({_strike_step(low), _strike_step(high), _strike_step(spot)})
        rows_k, rows_e = [], []
        for e, (t, w0) in enumerate(zip(t_exp, surface.atm_total_variance)):
            half = float(np.clip(3.0 * math.sqrt(w0), 0.30, 0.60))  # wider strike range for longer/volatile
            grid = np.unique(np.concatenate([
                np.arange(max(math.floor(low * (1 - half) / step), 1), math.ceil(high * (1 + half) / step) + 1) * step
                for step in steps]))
            rows_k.append(grid)
            rows_e.append(np.full(len(grid), e))
        strike_1 = np.concatenate(rows_k)
        exp_1 = np.concatenate(rows_e)
        strike = np.concatenate((strike_1, strike_1))
        e_idx = np.concatenate((exp_1, exp_1))
        is_call = np.concatenate((np.ones(len(strike_1), bool), np.zeros(len(strike_1), bool)))
        t = t_exp[e_idx]
        q = profile.dividend_yield
        iv = surface.implied_vol(strike, e_idx)
        fair = bsm_price(spot, strike, t, RISK_FREE_RATE, q, iv, is_call)
        # American-style floor: a listed option never trades below its exercise value.
        fair = np.maximum(fair, np.where(is_call, spot - strike, strike - spot))

        w_atm = surface.atm_total_variance
        k = np.log(strike / surface.forward[e_idx])
        x = k / np.sqrt(w_atm[e_idx])  # standardized moneyness
        liquidity = float(np.clip((20000.0 / profile.option_oi_scale) ** 0.35, 0.4, 2.5))
        spread = liquidity * (0.02 + 0.012 * fair * (1 + 0.6 * np.minimum(np.abs(x), 6.0))
                              * (1 + 0.6 * np.sqrt(0.02 / np.maximum(t, 0.002))))
        penny = profile.kind == "index_etf"
        tick = np.where(penny | (fair < 3.0), 0.01, 0.05)
        bid = np.maximum(np.floor((fair - spread / 2) / tick + 1e-9), 0.0) * tick
        ask = np.ceil((fair + spread / 2) / tick - 1e-9) * tick
        ask = np.maximum(ask, bid + tick)
        bid, ask = np.round(bid, 2), np.round(ask, 2)

        # Open interest and the day's volume pattern are set against the previous close (spot, time
        # and vol level), so they stay put while the price moves intraday: OI is fixed through the
        # day and volume only accumulates.
        last = clock.complete - 1
        last_session = _calendar().sessions[last]
        prev_close = float(path.bars.close[last])
        last_close_time = datetime.combine(last_session.astype(object), time(16, 0), tzinfo=NEW_YORK)
        t_prev = years_to_expiry(expiries, last_close_time)[e_idx]
        sd_prev = float(path.iv30_base[last]) * np.sqrt(t_prev)
        x_prev = (np.log(strike / prev_close) - (RISK_FREE_RATE - q) * t_prev) / sd_prev
        monthly = np.array([_is_monthly(d) for d in expiries])[e_idx]
        step = _strike_step(spot)  # today's interval: strikes on twice and ten times it draw more open interest
        round_strike = (1.0 + (np.abs(np.remainder(strike, 2 * step)) < 1e-9)
                        + 2.0 * (np.abs(np.remainder(strike, 10 * step)) < 1e-9))
        otm_put_tilt = np.where(~is_call & (strike < prev_close), 1.4 if profile.kind != "stock" else 1.1, 1.0)
        contract = (expiries[e_idx], strike, is_call)
        last_session = str(last_session)
        today = clock.today.isoformat()
        # Open interest is as of the previous close; today's volume, blocks and prints are today's.
        oi_noise = ndtri(_contract_uniforms(_key64(self.seed, profile.ticker, "oi", last_session), *contract))
        volume_noise = ndtri(_contract_uniforms(_key64(self.seed, profile.ticker, "volume", today), *contract))
        block_pick = _contract_uniforms(_key64(self.seed, profile.ticker, "block", today), *contract)
        block_time = _contract_uniforms(_key64(self.seed, profile.ticker, "block-time", today), *contract)
        print_at = _contract_uniforms(_key64(self.seed, profile.ticker, "last", today), *contract)
        oi = (profile.option_oi_scale * np.exp(-0.5 * (x_prev / 1.3) ** 2) * round_strike * otm_put_tilt
              * np.where(monthly, 1.0, 0.35) * (0.6 + 0.4 * np.exp(-t_prev / 0.5)) * np.exp(0.5 * oi_noise))
        oi = np.floor(oi)
        turnover = (0.08 * (1 + 2 * np.exp(-t_prev / 0.03)) * np.exp(-0.5 * (x_prev / 1.2) ** 2)
                    * np.exp(0.6 * volume_noise))
        day_fraction = clock.elapsed**0.6 if clock.live is not None else 1.0  # volume is front-loaded
        trend = int(path.trend[last])
        # Customers chase: call volume swells in up trends and put volume in down trends, so the
        # day's put/call flow leans with the tape while the standing open interest does not.
        chase = np.ones_like(strike) if trend == FLAT else np.where(is_call == (trend == UP), 1.4, 0.75)
        volume = np.floor(oi * turnover * day_fraction * chase)
        # Occasional block trades: fresh positioning near the money on a strike with little open
        # interest yet, leaning with the trend.
        near = (np.abs(x_prev) < 1.5) & (t_prev < 0.25)
        if near.any():
            near &= oi <= np.percentile(oi[near], 30)
        if trend != FLAT:
            near &= is_call == (trend == UP)
        # About 0.8 blocks a day per chain, each printed at its own time of day; a block is 2-5x the
        # strike's open interest and at least 500 contracts (the pick/time uniforms, rescaled, size it).
        chance = 0.8 / max(int(near.sum()), 1)
        block = near & (block_pick < chance) & (block_time < day_fraction)
        size = np.maximum(oi * (2.0 + 3.0 * block_pick / chance), 500.0 + 1500.0 * block_time)
        volume = np.where(block, volume + np.floor(size), volume)
        last_trade = np.round(np.clip(fair + spread * (print_at - 0.5), bid, ask) / tick) * tick
        last_trade = np.where(volume > 0, np.round(last_trade, 2), np.nan)

        return OptionChain(
            underlying=profile.ticker, as_of=clock.as_of, spot=spot,
            expiry=expiries[e_idx], strike=strike, is_call=is_call,
            bid=bid, ask=ask, last=last_trade, volume=volume, open_interest=oi,
            rate=RISK_FREE_RATE, dividend_yield=q, vendor_iv=iv,
            source="simulated", meta={"seed": self.seed, "model": MODEL_VERSION},
        )

    def _social(self, path: _TickerPath, clock: _Clock, spot: float) -> SocialFeed:
        days = _span_days()
        today = np.datetime64(clock.today, "D")
        t_idx = int((today - days[0]).astype(int))
        start = max(t_idx - SOCIAL_DAYS + 1, 0)
        mentions = path.mentions[start:t_idx].copy()
        search = path.search[start:t_idx].copy()
        # Today so far: attention from yesterday's fading excitement, today's event and the
        # move since the previous close -- never today's close.
        excite = 0.5 * (path.excitation[t_idx - 1] if t_idx > 0 else 0.0)
        i = _session_index(clock.today)
        if i is not None:
            if clock.minute >= 360 and path.event_kind[i] > 0:  # event news comes out pre-market
                excite += 3.0 if path.event_kind[i] == _EARNINGS else 1.5
            opened = clock.live is None or clock.elapsed > 0
            if opened and i > 0:
                excite += float(_move_excitation(math.log(spot / path.bars.close[i - 1]) / path.daily_vol[i]))
        rate = path.profile.mention_baseline * float(_weekday_factor(today)) * (1.0 + excite)
        u = float(_rng(self.seed, path.profile.ticker, "mentions-today", clock.today.isoformat()).random())
        today_count = _poisson_quantile(u, rate * min(clock.minute / 1440.0, 1.0))
        today_search = 0.3 * rate + 0.7 * (path.search[t_idx - 1] if t_idx > 0 else rate)
        mentions = np.append(mentions, today_count)
        search = np.append(search, today_search)
        search_interest = np.round(100.0 * search / search.max())
        posts = []
        for back in range(POST_DAYS - 1, -1, -1):
            day = clock.today - timedelta(days=back)
            posts.extend(p for p in _day_posts(self.seed, path, day) if p.created_at < clock.as_of)
        posts.sort(key=lambda p: (p.created_at, p.source))
        return SocialFeed(days[start:t_idx + 1].copy(), mentions, search_interest, tuple(posts))


def _is_monthly(expiry: np.datetime64) -> bool:
    """A third-Friday expiry, or the session before a third Friday that is a holiday."""
    d = expiry.astype(object)
    third = _third_friday(d.year, d.month)
    return d == third or (d < third and (third - d).days <= 3 and not _is_session(third))


def _session_index(day: date) -> int | None:
    cal = _calendar()
    d64 = np.datetime64(day, "D")
    i = int(np.searchsorted(cal.sessions, d64))
    return i if i < len(cal.sessions) and cal.sessions[i] == d64 else None


def _is_session(day: date) -> bool:
    return _session_index(day) is not None


def _slice(bars: Bars, window: slice) -> Bars:
    return Bars(*(getattr(bars, f)[window].copy() for f in ("dates", "open", "high", "low", "close", "volume")))
