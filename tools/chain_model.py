"""A listed option chain modelled from one day's real Cboe volatility indices.

Used by the historical market on any date for which no recorded Cboe quote table exists. Every
chain it makes has ``source="modelled"`` and says what it was priced from in ``meta``.

The model
---------
* **Smile.** Total variance w(k) at log-moneyness k = ln(K/F) is the raw-SVI shape of
  `tools.providers.simulated.smile_total_variance`: the same shape in standardized moneyness
  x = k / sqrt(w0) at every expiry (w0 = ATM total variance), fixed by three numbers:
  ``skew`` (ATM slope of vol per unit x, in units of ATM vol), ``curvature`` and SVI ``rho``.
  With one shape for every maturity and ATM total variance non-decreasing in T, total variance
  rises with T at every strike: no calendar arbitrage by construction. (A skew steepening with
  maturity fitted the Cboe chains 0.1-0.3 vol points better but broke that in the call wing.)
* **Skew from SKEW.** Cboe's SKEW index is 100 - 10 S, S the risk-neutral skewness of 30-day
  S&P 500 log returns. The Gram-Charlier expansion of implied vol gives an ATM slope of S/6 per
  unit x; SKEW is driven by far tails that a one-parameter smile cannot carry, so the slope is
  ``skew = SKEW_TO_SLOPE * S / 6`` with ``SKEW_TO_SLOPE``, ``CURVATURE`` and ``RHO`` calibrated on
  the recorded Cboe chains (`calibrate` reports the fit, `fit_shape_constants` reproduces it).
* **ATM term structure from VIX9D / VIX / VIX3M.** Each index is the model-free variance-swap
  vol for 9, 30 and 93 calendar days, not an ATM vol: with the day's smile the ATM total
  variance w0 at each pillar is solved so that the smile's variance-swap value,
  2 * integral of OTM_Black(k) e^-k dk (the log-contract replication), equals index**2 * T.
  Between pillars total variance is linear in T (forced non-decreasing, so no calendar
  arbitrage); before 9 days and after 93 days the ATM vol is held flat. Days without VIX9D (before
  2011) use VIX and VIX3M; days without VIX3M use VIX alone (flat); the chain says which.
* **Other tickers.** The S&P 500 surface is scaled by the ratio of the ticker's own 60-session
  close-to-close realized vol to SPY's (clipped to [0.5, 4]), and the slope is multiplied by
  ``SINGLE_NAME_SKEW`` (single names and sector funds are less skewed than the index). The
  ticker's data_quality says so with the ratio used.
* **Carry.** The data has no rate or dividend series: a constant rate and dividend yield (the
  provider's settings) give the forward F = S exp((r - q) T). Prices are BSM (European) with a
  floor at intrinsic value (listed equity options are American), so put-call parity holds to the
  tick near the money and only approximately deep in the money.
* **Listed expiries** (assumed, from the exchanges' listing history, approximate): standard
  monthlies (third Friday; the session before when that Friday is a holiday) for 12 months, no
  LEAPS or quarterlies; SPY Friday weeklies (next 6) from 2010-06-04, Wednesday weeklies (next 4)
  from 2016-03-02, Monday (next 3) from 2018-08-20 and Tuesday/Thursday (next 2 each) from
  2022-11-14; other tickers get Friday weeklies (next 4) from 2010-06-04.
* **Strikes.** A grid from -4.5 to +3 ATM standard deviations of the expiry, or of a 3-month
  expiry when it is nearer, at least +-6%, around the underlying's range over the last 63
  sessions rather than today's price alone (exchanges add strikes as the underlying moves and do
  not delist them, so a leg sold at 35 DTE is still quoted at 21 DTE and at expiry):
  SPY $1 within 15% of spot and $5 beyond; other tickers 0.5 / 1 / 2.5 / 5 / 10 by price
  (< 15, < 60, < 150, < 600, above).
* **Bid/ask.** Fair value +- half a spread of ``0.01 + fair * (0.004 + 0.05 * max(T - 0.25, 0))``
  (the 2023-09-14 SPY chain: a cent or two near term, wider in long expiries), times a liquidity
  factor ``(SPY dollar volume / ticker dollar volume) ** 0.3`` clipped to [1, 5]; cent ticks below
  $3, SPY always; nickels above $3 for other tickers. Bid never below 0, ask at least one tick
  above bid.
* **Open interest and volume.** OI = scale * exp(-x**2 / 8) * (1.5 on strikes divisible by 5
  steps) * (1.3 for out-of-the-money puts) * (1 monthly, 0.3 weekly) * (0.6 + 0.4 e^(-T/0.5)),
  at least 1; scale 5,000 contracts for SPY (the 2023 chain's monthlies) and
  5,000 * (dollar volume / SPY's) ** 0.7 for others (at least 50). Volume = OI * 0.15 *
  (1 + 5 e^(-T/0.02)) * exp(-x**2 / 2.88), floored. Both are deterministic: they carry no flow
  information, and the chain says so.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta

import numpy as np
from scipy.special import ndtr, ndtri

from tools.chain import NEW_YORK, OptionChain, years_to_expiry
from tools.pricing import bsm_price
from tools.providers.simulated import smile_total_variance

# Least squares over the liquid strikes of the SPX 2022-02-04 and SPY 2023-09-14 Cboe chains
# (`tools.chain_model_calibration.fit_shape_constants`; NDX 2022-02-04 is out of sample).
SKEW_TO_SLOPE = 0.452
CURVATURE = 0.0766
RHO = -0.633
SINGLE_NAME_SKEW = 0.55
RATIO_BOUNDS = (0.5, 4.0)
REALIZED_WINDOW = 60

PILLAR_DAYS = {"VIX9D": 9.0, "VIX": 30.0, "VIX3M": 93.0}
SPY_OI_SCALE = 5000.0
MONTHLIES_LISTED = 12
# Bump when a change alters the chains this model prints: backtest and run ids hash it with the data.
CHAIN_MODEL_VERSION = 2  # 2: strikes stay listed (LISTING_HORIZON_YEARS, LISTING_SESSIONS)
LISTING_HORIZON_YEARS = 0.25  # the strike range of an expiry never narrows below a 3-month one's
LISTING_SESSIONS = 63  # strikes listed while the underlying traded anywhere in the last 3 months stay listed
WEEKLY_SCHEDULE = {  # ticker class -> (weekday, first listing date, how many listed ahead)
    "SPY": ((4, date(2010, 6, 4), 6), (2, date(2016, 3, 2), 4), (0, date(2018, 8, 20), 3),
            (1, date(2022, 11, 14), 2), (3, date(2022, 11, 14), 2)),
    "other": ((4, date(2010, 6, 4), 4),),
}
_X_GRID = np.linspace(-12.0, 12.0, 2401)  # standardized moneyness for the variance-swap integral


class ChainModelError(ValueError):
    """The day's indices cannot price a chain (missing VIX, non-positive level, ...)."""


@dataclass(frozen=True)
class ImpliedInputs:
    """One session's volatility indices (decimals: VIX 20 -> 0.20; NaN when not published)."""

    session: date
    vix9d: float
    vix: float
    vix3m: float
    skew_index: float

    def pillars(self) -> list[tuple[str, float, float]]:
        """(index name, years, variance-swap vol) for every published pillar."""
        out = []
        for name, value in (("VIX9D", self.vix9d), ("VIX", self.vix), ("VIX3M", self.vix3m)):
            if np.isfinite(value) and value > 0:
                out.append((name, PILLAR_DAYS[name] / 365.0, float(value)))
        return out

    def describe(self) -> str:
        used = "/".join(name for name, _, _ in self.pillars())
        return f"{used}/SKEW" if np.isfinite(self.skew_index) else used


@dataclass(frozen=True)
class SmileShape:
    skew: float
    curvature: float
    rho: float

    def total_variance(self, k, w0) -> np.ndarray:
        return smile_total_variance(k, w0, self.skew, self.curvature, self.rho)


def shape_from_skew_index(skew_index: float, skew_to_slope: float = SKEW_TO_SLOPE,
                          curvature: float = CURVATURE, rho: float = RHO) -> SmileShape:
    """The smile for a SKEW level (see the module docstring). SKEW 100 (no skew) gets a tiny
    negative slope so the shape stays defined."""
    skewness = (100.0 - float(skew_index)) / 10.0
    slope = min(skew_to_slope * skewness / 6.0, -1e-3)
    return SmileShape(skew=slope, curvature=curvature, rho=rho)


def _undiscounted_otm(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Black OTM option value per unit forward at log-moneyness k with total variance w."""
    sd = np.sqrt(w)
    d1 = -k / sd + 0.5 * sd
    d2 = d1 - sd
    call = ndtr(d1) - np.exp(k) * ndtr(d2)
    put = np.exp(k) * ndtr(-d2) - ndtr(-d1)
    return np.where(k >= 0, call, put)


def variance_swap_total_variance(shape: SmileShape, w0: np.ndarray) -> np.ndarray:
    """Fair variance-swap total variance (vol**2 * T) of the smile at each ATM total variance w0."""
    w0 = np.atleast_1d(np.asarray(w0, dtype=float))
    k = _X_GRID[None, :] * np.sqrt(w0)[:, None]
    w = shape.total_variance(k, np.broadcast_to(w0[:, None], k.shape))
    integrand = 2.0 * _undiscounted_otm(k, w) * np.exp(-k)
    return np.trapezoid(integrand, k, axis=1)


def atm_total_variance_for(shape: SmileShape, variance_swap: np.ndarray) -> np.ndarray:
    """The ATM total variance whose smile has the given variance-swap total variance."""
    target = np.atleast_1d(np.asarray(variance_swap, dtype=float))
    w0 = target.copy()
    for _ in range(6):  # VS/w0 depends only weakly on w0: a fixed point converges in a few steps
        w0 = target * w0 / variance_swap_total_variance(shape, w0)
    return w0


@dataclass(frozen=True)
class ModelSurface:
    """ATM total variance pillars and the smile shape of one day, for one underlying."""

    inputs: ImpliedInputs
    shape: SmileShape
    pillar_t: np.ndarray
    pillar_w: np.ndarray
    vol_ratio: float = 1.0  # the underlying's vol over the S&P 500's (1 for SPY)

    def atm_total_variance(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        vols = np.sqrt(self.pillar_w / self.pillar_t)
        if len(self.pillar_t) == 1:
            w = vols[0] ** 2 * t
        else:
            w = np.interp(t, self.pillar_t, self.pillar_w)
            w = np.where(t < self.pillar_t[0], vols[0] ** 2 * t, w)
            w = np.where(t > self.pillar_t[-1], vols[-1] ** 2 * t, w)
        return np.maximum(w, 1e-12) * self.vol_ratio**2

    def atm_vol(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        return np.sqrt(self.atm_total_variance(t) / t)

    def implied_vol(self, k, t) -> np.ndarray:
        """Vol at log-moneyness k = ln(K/F) and years t (broadcast)."""
        k, t = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(t, dtype=float))
        w0 = self.atm_total_variance(t)
        return np.sqrt(self.shape.total_variance(k, w0) / t)

    def risk_reversal_25d(self, t: float) -> float:
        """25-delta call vol minus 25-delta put vol (forward deltas, as `tools.surface` defines them)."""
        w0 = float(self.atm_total_variance(t))
        k = np.linspace(-6, 6, 4801) * math.sqrt(w0)
        w = self.shape.total_variance(k, np.full_like(k, w0))
        d1 = -k / np.sqrt(w) + 0.5 * np.sqrt(w)
        vols = np.sqrt(w / t)
        out = []
        for target in (ndtri(0.25), ndtri(0.75)):  # d1 decreases in k near the money
            i = int(np.argmin(np.abs(d1 - target)))
            out.append(vols[i])
        return float(out[0] - out[1])


def build_surface(inputs: ImpliedInputs, *, vol_ratio: float = 1.0, skew_factor: float = 1.0,
                  skew_to_slope: float = SKEW_TO_SLOPE, curvature: float = CURVATURE,
                  rho: float = RHO) -> ModelSurface:
    pillars = inputs.pillars()
    if not any(name == "VIX" for name, _, _ in pillars):
        raise ChainModelError(f"no VIX close on {inputs.session}: cannot model a chain")
    if not np.isfinite(inputs.skew_index):
        raise ChainModelError(f"no SKEW close on {inputs.session}: cannot model the smile")
    base = shape_from_skew_index(inputs.skew_index, skew_to_slope, curvature, rho)
    shape = replace(base, skew=base.skew * skew_factor)
    t = np.array([p[1] for p in pillars])
    vs = np.array([p[2] ** 2 * p[1] for p in pillars])
    # The index smile (unscaled skew) converts each variance swap to ATM; then calendar monotone.
    w = np.maximum.accumulate(atm_total_variance_for(base, vs))
    return ModelSurface(inputs=inputs, shape=shape, pillar_t=t, pillar_w=w, vol_ratio=vol_ratio)


# ----------------------------------------------------------------------------- listing


@functools.cache
def _sessions() -> np.ndarray:
    """NYSE sessions 1990..2035 (exchange_calendars; built once per process)."""
    import exchange_calendars

    cal = exchange_calendars.get_calendar("XNYS", start="1990-01-02", end="2035-12-31")
    return cal.sessions.values.astype("datetime64[D]")


def _on_or_before_session(days: list[date]) -> np.ndarray:
    sessions = _sessions()
    d = np.array(sorted(set(days)), dtype="datetime64[D]")
    idx = np.searchsorted(sessions, d, side="right") - 1
    return np.unique(sessions[idx])


def _third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def monthly_expiries(today: date) -> list[date]:
    out = []
    for m in range(MONTHLIES_LISTED + 1):
        year, month = today.year + (today.month - 1 + m) // 12, (today.month - 1 + m) % 12 + 1
        out.append(_third_friday(year, month))
    return [d for d in out if d > today][:MONTHLIES_LISTED]


def listed_expiries(ticker: str, today: date) -> tuple[np.ndarray, np.ndarray]:
    """(expiries after `today` as datetime64[D], is_monthly) under the listing assumptions above."""
    monthly = _on_or_before_session(monthly_expiries(today))
    wanted = []
    for weekday, since, ahead in WEEKLY_SCHEDULE["SPY" if ticker == "SPY" else "other"]:
        if today < since:
            continue
        first = today + timedelta(days=(weekday - today.weekday()) % 7 or 7)
        wanted += [first + timedelta(weeks=i) for i in range(ahead)]
    weekly = _on_or_before_session(wanted) if wanted else np.array([], dtype="datetime64[D]")
    expiries = np.union1d(monthly, weekly)
    expiries = expiries[expiries > np.datetime64(today, "D")]
    return expiries, np.isin(expiries, monthly)


def strike_grid(ticker: str, spot: float, t: float, atm_sd: float,
                traded_range: tuple[float, float] | None = None) -> np.ndarray:
    """Listed strikes of one expiry. `traded_range` (lowest, highest) underlying price over the
    recent past: strikes listed while the underlying traded there are still listed today."""
    low, high = traded_range if traded_range is not None else (spot, spot)
    low, high = min(low, spot), max(high, spot)
    lo = low * math.exp(-max(4.5 * atm_sd, 0.06))
    hi = high * math.exp(max(3.0 * atm_sd, 0.06))
    if ticker == "SPY":
        fine_lo, fine_hi = max(lo, low * 0.85), min(hi, high * 1.15)
        fine = np.arange(math.floor(fine_lo), math.ceil(fine_hi) + 1, 1.0)
        coarse = np.arange(5 * math.floor(lo / 5), 5 * math.ceil(hi / 5) + 1, 5.0)
        coarse = coarse[(coarse < fine[0]) | (coarse > fine[-1])]
        grid = np.union1d(fine, coarse)
    else:
        step = next((s for limit, s in ((15, 0.5), (60, 1.0), (150, 2.5), (600, 5.0)) if spot < limit), 10.0)
        grid = np.arange(max(math.floor(lo / step), 1), math.ceil(hi / step) + 1) * step
    return grid[grid > 0]


# ----------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class Liquidity:
    """How tradable the underlying's options are, relative to SPY (see the module docstring)."""

    spread_factor: float = 1.0
    oi_scale: float = SPY_OI_SCALE

    @classmethod
    def relative_to_spy(cls, dollar_volume: float, spy_dollar_volume: float) -> "Liquidity":
        if not (dollar_volume > 0 and spy_dollar_volume > 0):
            return cls(spread_factor=5.0, oi_scale=50.0)
        ratio = dollar_volume / spy_dollar_volume
        return cls(spread_factor=float(np.clip(ratio**-0.3, 1.0, 5.0)),
                   oi_scale=float(max(SPY_OI_SCALE * min(ratio, 1.0) ** 0.7, 50.0)))


def model_chain(ticker: str, surface: ModelSurface, spot: float, as_of: datetime, *, rate: float,
                dividend_yield: float, liquidity: Liquidity = Liquidity(),
                notes: tuple[str, ...] = (), traded_range: tuple[float, float] | None = None) -> OptionChain:
    """The listed chain of `ticker` priced from `surface` at `as_of` (the session's close).
    `traded_range`: see `strike_grid` (the historical market passes the last LISTING_SESSIONS' range)."""
    if not spot > 0:
        raise ChainModelError(f"{ticker}: spot must be positive, got {spot}")
    today = as_of.astimezone(NEW_YORK).date()
    expiries, is_monthly = listed_expiries(ticker, today)
    t_exp = years_to_expiry(expiries, as_of)
    keep = t_exp > 0
    expiries, is_monthly, t_exp = expiries[keep], is_monthly[keep], t_exp[keep]
    # Strikes listed for an expiry stay listed as it nears: the grid spans the ATM standard
    # deviation of at least LISTING_HORIZON_YEARS, so a leg sold at 35 DTE is still quoted at 21 DTE
    # and at expiry (a range shrinking with sqrt(t) dropped wings out of the chain, and with them
    # the book's marks and exits: found by the 2020-2025 backtest).
    w_atm = surface.atm_total_variance(t_exp)
    w_list = surface.atm_total_variance(np.maximum(t_exp, LISTING_HORIZON_YEARS))
    grids = [strike_grid(ticker, spot, t, math.sqrt(w), traded_range) for t, w in zip(t_exp, w_list)]
    sizes = np.array([len(g) for g in grids])
    e_idx = np.repeat(np.arange(len(expiries)), sizes)
    strike_1 = np.concatenate(grids)
    strike = np.concatenate((strike_1, strike_1))
    e_idx = np.concatenate((e_idx, e_idx))
    is_call = np.repeat([True, False], len(strike_1))
    t = t_exp[e_idx]
    forward = spot * np.exp((rate - dividend_yield) * t)
    k = np.log(strike / forward)
    iv = surface.implied_vol(k, t)
    fair = bsm_price(spot, strike, t, rate, dividend_yield, iv, is_call)
    fair = np.maximum(fair, np.where(is_call, spot - strike, strike - spot))  # American floor

    spread = liquidity.spread_factor * (0.01 + fair * (0.004 + 0.05 * np.maximum(t - 0.25, 0.0)))
    tick = np.where((ticker == "SPY") | (fair < 3.0), 0.01, 0.05)
    bid = np.maximum(np.floor((fair - spread / 2) / tick + 1e-9), 0.0) * tick
    ask = np.ceil((fair + spread / 2) / tick - 1e-9) * tick
    ask = np.maximum(ask, bid + tick)
    bid, ask = np.round(bid, 2), np.round(ask, 2)

    x = k / np.sqrt(w_atm[e_idx])
    step = np.median(np.diff(grids[0])) if len(grids[0]) > 1 else 1.0
    round_strike = np.where(np.abs(np.remainder(strike, 5 * step)) < 1e-9, 1.5, 1.0)
    otm_put = np.where(~is_call & (strike < spot), 1.3, 1.0)
    listing = np.where(is_monthly[e_idx], 1.0, 0.3)
    oi = liquidity.oi_scale * np.exp(-x**2 / 8.0) * round_strike * otm_put * listing * (0.6 + 0.4 * np.exp(-t / 0.5))
    oi = np.maximum(np.floor(oi), 1.0)
    volume = np.floor(oi * 0.15 * (1.0 + 5.0 * np.exp(-t / 0.02)) * np.exp(-x**2 / 2.88))

    inputs = surface.inputs
    meta = {
        "model": "vix-term/skew-svi/1",
        "priced_from": inputs.describe(),
        "session": inputs.session.isoformat(),
        "vix9d": _finite_or_none(inputs.vix9d), "vix": _finite_or_none(inputs.vix),
        "vix3m": _finite_or_none(inputs.vix3m), "skew_index": _finite_or_none(inputs.skew_index),
        "smile_skew": surface.shape.skew, "smile_curvature": surface.shape.curvature, "smile_rho": surface.shape.rho,
        "vol_ratio_to_spx": surface.vol_ratio,
        "flow_information": False,  # volume and open interest are a stated model, not observed positioning
        "notes": list(notes),
    }
    return OptionChain(
        underlying=ticker, as_of=as_of, spot=float(spot), expiry=expiries[e_idx], strike=strike, is_call=is_call,
        bid=bid, ask=ask, last=np.full(len(strike), np.nan), volume=volume, open_interest=oi,
        rate=rate, dividend_yield=dividend_yield, vendor_iv=iv, source="modelled", meta=meta,
    )


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def session_close(session: date) -> datetime:
    return datetime.combine(session, time(16, 0), tzinfo=NEW_YORK)
